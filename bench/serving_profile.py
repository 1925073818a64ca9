"""Where Driftline serving spends its CPU under one load point of the serving benchmark.

    .venv/bin/python bench/serving_profile.py [--model small] [--rows 1] [--concurrency 64]
        [--duration 8] [--setting DRIFTLINE_MAX_BATCH_ROWS=64 ...]

Starts the same registry + `python -m services.serving` as bench/serving.py, drives the load
with the same client, and samples the serving process with py-spy (installed on first use into
.cache/bench-venvs/tools) over every thread. Prints the throughput and the functions that hold
the most samples, by own time and by inclusive time (GIL-holding samples only with --gil).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models as bench_models  # noqa: E402
import serving_client as client  # noqa: E402
import serving_servers as servers  # noqa: E402
from serving_servers import VENVS, say  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found:
        return found
    venv = VENVS / "tools"
    binary = venv / "bin" / "py-spy"
    if not binary.exists():
        say("[profile] installing py-spy into .cache/bench-venvs/tools (once)")
        subprocess.run([shutil.which("python3.11") or sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(binary)


def summarize(raw: Path, top: int) -> str:
    """Collapsed stacks ("frame;frame;frame count") → own and inclusive sample shares."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples"]
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        lines.append(f"-- top {top} by {title}")
        lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


async def drive(running, args) -> client.PointResult:
    await client.wait_ready(running.address, args.model, 120, running.alive)
    return await client.run_point(running.address, args.model, args.rows, args.concurrency,
                                  args.duration, 1.0, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=list(bench_models.MODELS))
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--setting", action="append", default=[], help="extra DRIFTLINE_X=value for serving")
    parser.add_argument("--gil", action="store_true", help="only samples that hold the GIL")
    parser.add_argument("--idle", action="store_true", help="include idle samples")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    spy = py_spy()
    path = bench_models.ensure(args.model)
    workdir = servers.workdir()
    stack = servers.DriftlineStack(workdir, {args.model: path})
    stack.start()
    settings = dict(s.split("=", 1) for s in args.setting)
    running = stack.serve("driftline", args.model, settings)
    raw = workdir / "profile.txt"
    try:
        asyncio.run(client.wait_ready(running.address, args.model, 120, running.alive))
        flags = ["--threads", "--nonblocking", "-r", "200"] + (["--gil"] if args.gil else []) \
            + (["--idle"] if args.idle else [])
        spy_process = subprocess.Popen([spy, "record", "-p", str(running.pid), "-f", "raw", "-o", str(raw),
                                        "-d", str(int(args.duration + 1)), *flags],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result = asyncio.run(drive(running, args))
        _, err = spy_process.communicate(timeout=60)
        if spy_process.returncode != 0 or not raw.exists():
            print(err)
            return 1
    finally:
        running.stop()
        stack.stop()
    print(f"{args.model}, {args.rows} rows x concurrency {args.concurrency}, settings {settings or 'defaults'}: "
          f"{result.requests_per_s:.1f} req/s, {result.rows_per_s:.0f} rows/s, "
          f"p50 {result.percentile_ms(50):.2f} ms, p99 {result.percentile_ms(99):.2f} ms (while sampled)")
    print(summarize(raw, args.top))
    print(f"(raw stacks: {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
