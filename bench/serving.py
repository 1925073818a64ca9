"""Serving benchmark: Driftline serving against raw ONNX Runtime, MLServer and KServe (issue 4).

    .venv/bin/python bench/serving.py [--quick] [--duration 5] [--servers ...] [--models ...]

One run, one machine, one client for every server (an async Open Inference Protocol v2
ModelInfer load generator, bench/serving_client.py), the same ONNX models (bench/models.py):

* servers: `ort` (raw ONNX Runtime in-process: the limit, no network), `driftline`
  (services.serving over OIP v2, dynamic batching at its defaults), `driftline-nobatch`
  (DRIFTLINE_MAX_BATCH_ROWS=1), `mlserver` (1.7.1, custom onnxruntime runtime, adaptive
  batching on with the same 64 rows / 2 ms as Driftline), `mlserver-nobatch`, `kserve`
  (0.21.0 Python model server, custom onnxruntime model; it has no batching outside
  Kubernetes); optional: `driftline-predict` (Driftline's own Predictor API, same load),
  `floor-echo` / `floor-ort` / `floor-ort-icpt` / `floor-ort-metrics` (bench/peers/floor_server.py:
  what a bare grpc.aio server costs per call with no model / with the session run inline and
  nothing else / the same behind a pass-through server interceptor / with Driftline's CallMetrics);
* models: `small` (MLP 16→64→64→2) and `heavy` (16→2048→2048→2048→2);
* load: single-row requests at concurrency 1, 16, 64, and requests of 64, 512, 4096 rows at
  concurrency 1 (the -nobatch variants run only the single-row points);
* every server of a model is started up front; each point then runs on each server in turn,
  `--rounds` times round-robin (default 3 × 2 s after 0.5 s warm-up), so background load on a
  shared machine hits every server alike; throughput is the median round, latency percentiles
  pool all rounds;
* per point: requests/s, rows/s, p50/p99 latency, server RSS and CPU, and the ratios to the
  best peer and to raw ORT; JSON lines on stdout (also written to --out), then a table and the
  acceptance figures of issue 4.

Every process binds 127.0.0.1 only. Driftline uses the shared local stack (Kafka
127.0.0.1:9092, MinIO 127.0.0.1:9000; start it with `python -m services.devstack up`) under a
topic prefix and bucket of its own. The peers' venvs are created under .cache/bench-venvs/ on
first use (needs PyPI once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models as bench_models  # noqa: E402
import serving_client as client  # noqa: E402
import serving_servers as servers  # noqa: E402
from serving_servers import say  # noqa: E402

PEERS = ("mlserver", "mlserver-nobatch", "kserve")
# bench/peers/floor_server.py: (mode, flags, what it is)
FLOORS = {
    "floor-echo": ("echo", (), "canned answer, no model"),
    "floor-ort": ("ort", (), "session inline, nothing else"),
    "floor-ort-icpt": ("ort", ("--interceptor",), "session inline + a pass-through server interceptor"),
    "floor-ort-metrics": ("ort", ("--metrics",), "session inline + Driftline's CallMetrics"),
}
ALL_SERVERS = ("ort", "driftline", "driftline-nobatch", "mlserver", "mlserver-nobatch", "kserve",
               "driftline-predict", *FLOORS)
DEFAULT_SERVERS = ALL_SERVERS[:6]
SINGLE_ROW_ONLY = {"driftline-nobatch", "mlserver-nobatch", "floor-echo"}
DRIFTLINE_BATCHING = {"DRIFTLINE_MAX_BATCH_ROWS": "64", "DRIFTLINE_MAX_QUEUE_DELAY_MS": "2"}
DRIFTLINE_NO_BATCHING = {"DRIFTLINE_MAX_BATCH_ROWS": "1", "DRIFTLINE_MAX_QUEUE_DELAY_MS": "0"}
MLSERVER_BATCHING = {"max_batch_size": 64, "max_batch_time": 0.002}


@dataclass(frozen=True)
class Point:
    rows: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.rows}r x c{self.concurrency}"


def points(quick: bool) -> list[Point]:
    if quick:
        return [Point(1, 1), Point(1, 64), Point(4096, 1)]
    return [Point(1, 1), Point(1, 16), Point(1, 64), Point(64, 1), Point(512, 1), Point(4096, 1)]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def row(server: str, model: str, point: Point, samples: list[tuple[client.PointResult, float | None, float | None]],
        settings: str) -> dict:
    """One point of one server over its rounds: throughput is the median round's, latency
    percentiles pool every round's calls, RSS is the largest seen, CPU is over all windows."""
    results = [r for r, _, _ in samples]
    seconds = sum(r.seconds for r in results)
    latencies = [x for r in results for x in r.latencies_s]
    pooled = client.PointResult(latencies_s=latencies)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    rps = [r.requests_per_s for r in results]
    cpus = [c for _, c, _ in samples if c is not None]
    rss = [m for _, _, m in samples if m is not None]
    p50, p99 = pooled.percentile_ms(50), pooled.percentile_ms(99)
    median_rps = float(statistics.median(rps)) if rps else 0.0
    return {
        "bench": "serving", "server": server, "model": model, "rows": point.rows,
        "concurrency": point.concurrency, "requests": sum(r.requests for r in results),
        "seconds": round(seconds, 3), "rounds_requests_per_s": [round(x, 1) for x in rps],
        "requests_per_s": round(median_rps, 1), "rows_per_s": round(median_rps * point.rows, 1),
        "p50_ms": None if p50 is None else round(p50, 3), "p99_ms": None if p99 is None else round(p99, 3),
        "rss_mb": round(max(rss), 1) if rss else None,
        "server_cpu_cores": round(sum(cpus) / seconds, 2) if cpus and seconds > 0 else None,
        "client_cpu_cores": round(sum(r.client_cpu_s for r in results) / seconds, 2) if seconds > 0 else None,
        "errors": errors, "settings": settings, "load_avg": load_average(),
    }


def start_server(name: str, model: str, path: Path, stack, workdir: Path,
                 overrides: dict[str, str], variants: dict[str, dict[str, str]]) -> tuple[servers.Running, str]:
    if name in variants:
        settings = {**DRIFTLINE_BATCHING, **variants[name]}
        return stack.serve(name, model, settings), "OIP v2; " + ", ".join(
            f"{k.removeprefix('DRIFTLINE_').lower()} {v}" for k, v in settings.items())
    if name == "driftline":
        settings = {**DRIFTLINE_BATCHING, **overrides}
        return stack.serve(name, model, settings), "OIP v2; " + ", ".join(
            f"{k.removeprefix('DRIFTLINE_').lower()} {v}" for k, v in settings.items())
    if name == "driftline-nobatch":
        return stack.serve(name, model, DRIFTLINE_NO_BATCHING), \
            "OIP v2; max_batch_rows 1 (batching off)"
    if name == "driftline-predict":
        return stack.serve(name, model, DRIFTLINE_BATCHING), \
            "driftline.v1.Predictor; max_batch_rows 64, max_queue_delay_ms 2"
    if name == "mlserver":
        return servers.start_mlserver(name, model, path, workdir, MLSERVER_BATCHING), \
            "parallel_workers 0, debug off; max_batch_size 64, max_batch_time 0.002"
    if name == "mlserver-nobatch":
        return servers.start_mlserver(name, model, path, workdir, None), \
            "parallel_workers 0, debug off; no adaptive batching"
    if name in FLOORS:
        mode, extra, what = FLOORS[name]
        return servers.start_floor(name, model, path, workdir, mode, extra), f"grpc.aio floor: {what}"
    if name == "kserve":
        return servers.start_kserve(name, model, path, workdir), \
            "KSERVE_LOGLEVEL=WARNING, latency logging off; no batching (none outside Kubernetes)"
    raise ValueError(name)


ORT_SETTINGS = "in-process session, default options, sequential calls (no network); c>1 rows repeat c1"


async def run_model(model: str, path: Path, plan: list[Point], names: list[str], stack, workdir: Path,
                    args, failures: list[str]) -> list[dict]:
    """Starts every server for `model`, then runs each point on each server in turn, `rounds`
    times round-robin, so a change in the machine's background load hits every server alike.
    Idle servers wait meanwhile (their idle CPU is negligible)."""
    running: dict[str, tuple[servers.Running, str]] = {}
    session = None
    ort_by_rows: dict[int, list] = {}  # raw ORT has no concurrency: one run per request size
    try:
        for name in names:
            if name == "ort":
                import onnxruntime as ort
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                continue
            try:
                running[name] = start_server(name, model, path, stack, workdir, args.driftline_setting,
                                             args.variants)
            except Exception as exc:
                failures.append(f"{name}/{model}: {exc}")
                say(f"[bench] {name}/{model} did not start: {exc}")
        started = time.monotonic()

        async def ready(name: str) -> None:
            server, _ = running[name]
            try:
                await client.wait_ready(server.address, model, args.start_timeout, server.alive)
                say(f"  [{name} {model} ready at {server.address} after {time.monotonic() - started:.1f}s, "
                    f"pid {server.pid}, {servers.rss_mb(server.pid):.0f} MB]")
            except Exception as exc:
                failures.append(f"{name}/{model}: {exc}")
                say(f"[bench] {name}/{model} FAILED to become ready: {exc}")
                server.stop()
                del running[name]

        await asyncio.gather(*(ready(n) for n in list(running)))
        out = []
        for point in plan:
            samples: dict[str, list] = {}
            for _ in range(args.rounds):
                for name in names:
                    if name in SINGLE_ROW_ONLY and point.rows != 1 and not args.full:
                        continue
                    if name == "ort":
                        # One caller, no network: at concurrency c > 1 the reference is still one call
                        # after another of the same single-row shape (measured once, at c1), i.e. what a
                        # server without batching would run, minus gRPC. RSS: not a server (None).
                        cached = ort_by_rows.get(point.rows)
                        if cached is not None and point.concurrency > 1:
                            samples[name] = cached
                            continue
                        result = client.run_raw_ort(session, point.rows, args.duration, args.warmup,
                                                    args.min_requests)
                        samples.setdefault(name, []).append((result, None, None))
                        ort_by_rows[point.rows] = samples[name]
                        continue
                    if name not in running:
                        continue
                    server, _ = running[name]
                    try:
                        cpu_before = servers.cpu_s(server.pid)
                        if args.ghz and name != "driftline-predict":
                            result = await client.run_point_ghz(args.ghz, ROOT, server.address, model, point.rows,
                                                                point.concurrency, args.duration, args.warmup)
                        else:
                            result = await client.run_point(
                                server.address, model, point.rows, point.concurrency, args.duration,
                                args.warmup, args.min_requests,
                                api="predict" if name == "driftline-predict" else "oip")
                        # CPU over warm-up + window, scaled to the window (the load is the same in both).
                        cpu = (servers.cpu_s(server.pid) - cpu_before) * result.seconds \
                            / (result.seconds + args.warmup) if result.seconds > 0 else None
                        server.alive()
                    except Exception as exc:
                        failures.append(f"{name}/{model} at {point.label}: {exc}")
                        say(f"[bench] {name}/{model} FAILED at {point.label}: {exc}")
                        server.stop()
                        del running[name]
                        continue
                    samples.setdefault(name, []).append((result, cpu, servers.rss_mb(server.pid)))
            for name, got in samples.items():
                settings = ORT_SETTINGS if name == "ort" else running[name][1] if name in running else "?"
                r = row(name, model, point, got, settings)
                out.append(r)
                say(f"  {name:17} {model:5} {point.label:>12}: {r['requests_per_s']:>9.1f} req/s "
                    f"{r['rows_per_s']:>11.1f} rows/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms "
                    f"rss {r['rss_mb']} MB cpu {r['server_cpu_cores']}/{r['client_cpu_cores']} cores "
                    f"rounds {r['rounds_requests_per_s']}" + (f" errors {r['errors']}" if r["errors"] else ""))
        return out
    finally:
        for server, _ in running.values():
            server.stop()
        del session


def add_ratios(rows: list[dict]) -> None:
    """vs_best_peer: this server's throughput / the best peer's at the same point;
    vs_ort: / raw ORT's (rows/s, so the same for every shape)."""
    by_point: dict[tuple, list[dict]] = {}
    for r in rows:
        by_point.setdefault((r["model"], r["rows"], r["concurrency"]), []).append(r)
    for group in by_point.values():
        peers = [r for r in group if r["server"] in PEERS and r["requests"] > 0]
        best = max(peers, key=lambda r: r["rows_per_s"], default=None)
        ort = next((r for r in group if r["server"] == "ort"), None)
        for r in group:
            r["best_peer"] = best["server"] if best else None
            r["vs_best_peer"] = round(r["rows_per_s"] / best["rows_per_s"], 2) if best else None
            r["vs_ort"] = round(r["rows_per_s"] / ort["rows_per_s"], 3) if ort and ort["rows_per_s"] else None


def table(rows: list[dict]) -> str:
    header = ("model", "server", "rows", "conc", "req/s", "rows/s", "p50 ms", "p99 ms", "RSS MB",
              "srv cpu", "vs peer", "vs ORT", "errors")
    widths = (5, 17, 5, 4, 9, 11, 8, 8, 7, 7, 7, 7, 6)
    lines = [" ".join(f"{h:>{w}}" for h, w in zip(header, widths))]
    order = {name: i for i, name in enumerate(ALL_SERVERS)}
    for r in sorted(rows, key=lambda r: (r["model"] != "small", r["rows"], r["concurrency"],
                                         order.get(r["server"], 99))):
        values = (r["model"], r["server"], r["rows"], r["concurrency"], f"{r['requests_per_s']:.1f}",
                  f"{r['rows_per_s']:.0f}", _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r["rss_mb"], 0),
                  _f(r["server_cpu_cores"]), _f(r.get("vs_best_peer")), _f(r.get("vs_ort"), 3),
                  sum(r["errors"].values()))
        lines.append(" ".join(f"{str(v):>{w}}" for v, w in zip(values, widths)))
    return "\n".join(lines)


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def acceptance(rows: list[dict]) -> list[dict]:
    """Issue 4's three benchmark lines, with the figures behind them."""
    def find(server, model, n, c):
        return next((r for r in rows if (r["server"], r["model"], r["rows"], r["concurrency"]) ==
                     (server, model, n, c) and r["requests"] > 0), None)

    checks = []
    d = find("driftline", "small", 1, 64)
    peers = [r for r in (find(p, "small", 1, 64) for p in PEERS) if r]
    if d and peers:
        best = max(peers, key=lambda r: r["rows_per_s"])
        ratio = d["requests_per_s"] / best["requests_per_s"]
        ok = ratio >= 1.5 and d["p99_ms"] <= best["p99_ms"]
        checks.append({"check": "small, 1 row, c64: driftline >= 1.5x best peer, p99 no higher",
                       "passed": ok, "driftline_rps": d["requests_per_s"], "best_peer": best["server"],
                       "best_peer_rps": best["requests_per_s"], "ratio": round(ratio, 2),
                       "driftline_p99_ms": d["p99_ms"], "best_peer_p99_ms": best["p99_ms"]})
    on, off = find("driftline", "heavy", 1, 64), find("driftline-nobatch", "heavy", 1, 64)
    if on and off:
        ratio = on["requests_per_s"] / off["requests_per_s"] if off["requests_per_s"] else float("inf")
        checks.append({"check": "heavy, 1 row, c64: batching on >= 3x off", "passed": ratio >= 3.0,
                       "on_rps": on["requests_per_s"], "off_rps": off["requests_per_s"], "ratio": round(ratio, 2),
                       "on_p99_ms": on["p99_ms"], "off_p99_ms": off["p99_ms"]})
    for model in ("small", "heavy"):
        d, o = find("driftline", model, 4096, 1), find("ort", model, 4096, 1)
        if d and o:
            ratio = d["rows_per_s"] / o["rows_per_s"]
            checks.append({"check": f"{model}, 4096 rows: driftline rows/s >= 50% of raw ORT",
                           "passed": ratio >= 0.5, "driftline_rows_per_s": d["rows_per_s"],
                           "ort_rows_per_s": o["rows_per_s"], "ratio": round(ratio, 3)})
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 s windows, points 1r×c1, 1r×c64, 4096r×c1")
    parser.add_argument("--duration", type=float, help="measured seconds per point and round (default 2, quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point and round (default 0.5, quick 0.3)")
    parser.add_argument("--rounds", type=int,
                        help="round-robin rounds per point; the median counts (default 3, quick 1)")
    parser.add_argument("--min-requests", type=int, default=None,
                        help="measure at least this many requests per point and round (default 2, quick 1)")
    parser.add_argument("--points", nargs="+", metavar="ROWSxCONCURRENCY",
                        help="only these points, e.g. 1x1 1x64 4096x1 (default: the full sweep)")
    parser.add_argument("--servers", nargs="+", default=list(DEFAULT_SERVERS),
                        help=f"any of {' '.join(ALL_SERVERS)}, and the names of --driftline-variant rows")
    parser.add_argument("--models", nargs="+", choices=list(bench_models.MODELS), default=list(bench_models.MODELS))
    parser.add_argument("--full", action="store_true", help="run the -nobatch variants at every point too")
    parser.add_argument("--driftline-setting", action="append", default=[], metavar="DRIFTLINE_X=VALUE",
                        help="serving setting for the `driftline` row (e.g. DRIFTLINE_MAX_QUEUE_DELAY_MS=0)")
    parser.add_argument("--driftline-variant", action="append", default=[],
                        metavar="NAME:DRIFTLINE_X=V[,DRIFTLINE_Y=W]",
                        help="an extra Driftline row `driftline-NAME` with these settings over the defaults "
                             "(e.g. delay0:DRIFTLINE_MAX_QUEUE_DELAY_MS=0); it runs every point")
    parser.add_argument("--client", choices=("python", "ghz"), default="python",
                        help="the load generator: the async Python client (bench/serving_client.py) or ghz "
                             f"({client.GHZ_VERSION}, Go, built once into .cache/bin); the same for every server")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=Path(".cache/bench-serving/latest.jsonl"),
                        help="also write the JSON lines here")
    args = parser.parse_args()
    args.driftline_setting = dict(s.split("=", 1) for s in args.driftline_setting)
    args.variants = {}
    for spec in args.driftline_variant:
        label, _, pairs = spec.partition(":")
        args.variants[f"driftline-{label}"] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    unknown = [s for s in args.servers if s not in ALL_SERVERS and s not in args.variants]
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {ALL_SERVERS} or define --driftline-variant")
    args.servers += [v for v in args.variants if v not in args.servers]
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.min_requests = args.min_requests or (1 if args.quick else 2)
    args.ghz = client.ensure_ghz(ROOT) if args.client == "ghz" else None
    plan = points(args.quick)
    if args.points:
        plan = [Point(*(int(v) for v in spec.lower().split("x"))) for spec in args.points]

    began = time.monotonic()
    say(f"[bench] {platform.node()}: {os.cpu_count()} CPUs, load average {load_average()}; "
        f"{args.rounds} x {args.duration}s per point after {args.warmup}s warm-up each; "
        f"servers {' '.join(args.servers)}")
    paths = {m: bench_models.ensure(m) for m in args.models}
    for name in ("mlserver", "kserve"):
        if any(s.startswith(name) for s in args.servers):
            servers.ensure_venv(name)
    workdir = servers.workdir()
    say(f"[bench] logs in {workdir}")
    stack = None
    if any(s.startswith("driftline") for s in args.servers):
        stack = servers.DriftlineStack(workdir, paths)
        stack.start()

    results: list[dict] = []
    failures: list[str] = []
    try:
        for model in args.models:
            say(f"[bench] model {model}: {' '.join(args.servers)}, {args.rounds} round(s) per point")
            results += asyncio.run(run_model(model, paths[model], plan, args.servers, stack, workdir, args,
                                             failures))
    finally:
        if stack is not None:
            stack.stop()

    add_ratios(results)
    checks = acceptance(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as out:
        for r in results:
            line = json.dumps(r)
            print(line)
            out.write(line + "\n")
        for c in checks:
            line = json.dumps({"bench": "serving", "acceptance": c})
            print(line)
            out.write(line + "\n")
    print(f"\nserving bench on {platform.node()} ({os.cpu_count()} CPUs, client and servers on the same "
          f"cores), {args.rounds} rounds x {args.duration}s per point (median), "
          f"load average at the end {load_average()}, "
          f"took {time.monotonic() - began:.0f}s")
    print(table(results))
    if checks:
        print("\nacceptance (issue 4):")
        for c in checks:
            figures = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("check", "passed"))
            print(f"  [{'PASS' if c['passed'] else 'MISS'}] {c['check']}: {figures}")
    for f in failures:
        print(f"FAILED {f}")
    return 1 if failures or any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
