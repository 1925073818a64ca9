"""Drift detectors on streams with known drift points: Driftline's calibrated policy beside
river's ADWIN, Page-Hinkley, DDM and HDDM_A run raw, alibi-detect's online detectors,
a periodic batch KS test and two dummies — all calibrated to the same false-alarm rate.

    RIVER_DATA=.cache/river python bench/drift.py [--seeds 6] [--ert 2000] [--no-alibi] [--no-throughput]

Streams (bench/drift_streams.py): SEA, Agrawal, STAGGER and FriedmanDrift (concept drift:
the error stream of a deployed model; abrupt and gradual) and Gaussian mean and variance
shifts in one of 5 features (data drift). Each stream has `--events` events, the drift at
`--position`; the first `--reference` events are the reference every detector may learn
from (river's detectors are warmed up on it, Driftline bootstraps its thresholds from it,
the KS test and alibi take it as x_ref); alarms are counted from there on.

Calibration: every detector is tuned on drift-free streams (other seeds) to its most
sensitive setting with at most one false alarm per `--ert` events — river's by their own
parameter, the KS test by its critical value, Driftline by the run length its bootstrap
(on each stream's reference, as the monitor does) aims at, over a grid about as fine as
river's (steps of ×1.2); `driftline-nominal` is Driftline with its bootstrap at the target ERT
untuned, for reference; `oracle-cusum` (concept streams) is a bound, not a detector: one Bernoulli
CUSUM per variant told the true pre-drift error rate and the variant's post-drift one (estimated
on the drift streams of other seeds, `oracle_rates`), its threshold calibrated likewise on a grid
of ×1.02, its false alarms those of both CUSUMs on the drift-free streams (each counted once, the
mean) and each before its own drift; it does not set the verdict's bar. alibi-detect uses the
same ERT natively (its thresholds are its own bootstrap). False alarms are then *measured* on
drift-free evaluation streams and before each drift. They are small counts (~20 per detector
and stream kind at the target), so the defaults are 6 evaluation seeds per variant and 8
calibration streams for every detector alike (3 and 4 before); the whole run stays within a few minutes.

Per detector and stream kind: mean detection delay (events from the drift's start;
`delay_penalised` counts a miss as the horizon), missed-detection ratio (no alarm within
`--horizon` events), false alarms per 100k events, updates per second; delay* and false alarms
also per round (round r: the abrupt and gradual streams of seed r and the drift-free one of seed
50 + r) with their standard deviation over the rounds (`±sd`). One JSON line per
result, then a table and the acceptance lines; results also in bench/results/drift.jsonl. The verdict per
stream: Driftline's delay* no worse than the fastest baseline whose measured false alarms are
within the target (1e5 / ERT per 100k; a baseline over it does not set the bar), and Driftline's
own false alarms within the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RIVER_DATA", str(ROOT / ".cache" / "river"))

import drift_streams  # noqa: E402
from river import drift as river_drift  # noqa: E402

from services.monitor.calibration import calibrate_windows  # noqa: E402
from services.monitor.psi import reference_bins  # noqa: E402
from services.monitor.signals import WindowDrift  # noqa: E402
from services.monitor.tracker import TrackerConfig, error_cusum  # noqa: E402

ALIBI_PYTHON = ROOT / ".cache" / "bench-venvs" / "alibi" / "bin" / "python"
BATCH = 100  # Driftline works on batches, as the monitor gets them from Kafka

# river's detectors, with the parameter swept from most to least sensitive
RIVER = {
    "river-ADWIN": ("delta", [0.99, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.002, 1e-3, 1e-4, 1e-5, 1e-6],
                    lambda v, up: river_drift.ADWIN(delta=v)),
    "river-PageHinkley": ("threshold", [1, 2, 3, 4, 5, 6, 7.5, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100,
                                        125, 150, 200, 250],
                          lambda v, up: river_drift.PageHinkley(threshold=v, mode="up" if up else "both")),
    "river-DDM": ("drift_threshold", [1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.5, 4, 5, 6, 8],
                  lambda v, up: river_drift.binary.DDM(drift_threshold=v, warning_threshold=min(v, 2.0) * 0.99)),
    "river-HDDM_A": ("drift_confidence", [0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
                     lambda v, up: river_drift.binary.HDDMA(drift_confidence=v, warning_confidence=min(0.5, v * 5))),
}


def is_concept(kind: str) -> bool:
    return kind in drift_streams.CONCEPT_KINDS


# -- detectors: each returns alarm indices (absolute, >= reference) ----------------------------

def run_river(name: str, value: float, stream: np.ndarray, reference: int, up: bool) -> list[int]:
    make = RIVER[name][2]
    columns = [stream] if stream.ndim == 1 else [stream[:, f] for f in range(stream.shape[1])]
    alarms: set[int] = set()
    for column in columns:
        detector = make(value, up)
        values = column.tolist()
        for x in values[:reference]:  # warm-up on the reference; alarms there do not count
            detector.update(x)
        if detector.drift_detected:
            detector = make(value, up)
        for i in range(reference, len(values)):
            detector.update(values[i])
            if detector.drift_detected:
                alarms.add(i)
    return sorted(alarms)


def ks_statistics(stream: np.ndarray, reference: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS of each non-overlapping batch of `every` events against the reference
    (max over features); returns (statistic, index of the batch's last event)."""
    x = stream if stream.ndim == 2 else stream[:, None]
    ref = np.sort(x[:reference], axis=0)
    ends = np.arange(reference + every, len(x) + 1, every)
    stats = np.zeros(len(ends))
    for j, end in enumerate(ends):
        window = np.sort(x[end - every:end], axis=0)
        grid = np.concatenate([ref, window], axis=0)
        best = 0.0
        for f in range(x.shape[1]):
            g = grid[:, f]
            cdf_ref = np.searchsorted(ref[:, f], g, side="right") / len(ref)
            cdf_win = np.searchsorted(window[:, f], g, side="right") / every
            best = max(best, float(np.abs(cdf_ref - cdf_win).max()))
        stats[j] = best
    return stats, ends - 1


CUSUM_SHIFTS = TrackerConfig().cusum_shifts  # the monitor's default bank
# The monitor's default; figures measured before the settings had one source used 128.
CALIBRATION_STREAMS = TrackerConfig().calibration_streams
DRIFTLINE_GRID = [0.5, 0.6, 0.7, 0.85, 1, 1.2, 1.4, 1.7, 2, 2.4, 3, 4, 5, 6, 8, 12, 16, 24, 32]  # × the ERT aimed at


def calibrate_driftline(streams, reference: int, ert: float, window: int, step: int) -> float:
    """The same protocol as every detector: the most sensitive setting (here: the run length its
    bootstrap aims at, as a multiple of the target) with at most the target's false alarms on
    the drift-free calibration streams."""
    events = sum(len(s.values) - reference for s in streams)
    allowed = events / ert
    for m in DRIFTLINE_GRID:
        alarms = 0
        for s in streams:
            alarms += len(run_driftline(s.values, reference, ert * m, window, step))
            if alarms > allowed:
                break
        if alarms <= allowed:
            return m
    return DRIFTLINE_GRID[-1]


def run_driftline(stream: np.ndarray, reference: int, ert: float, window: int, step: int) -> list[int]:
    """What the monitor's default policy acts on: for a concept (error) stream the CUSUM bank
    the tracker builds (`tracker.error_cusum`, the monitor's defaults but the ERT and the bank):
    bootstrapped on the reference for the ERT, its reference then refined from the stream
    (all but the latest `error_guard_samples`, bootstrapped again as the count doubles) and
    learnt again from `error_reference_samples` after an alarm (river's ADWIN runs beside it in
    the monitor, but only alerts); for feature streams, sliding-window KS + PSI against the
    reference's decile bins, bootstrapped likewise (allowing for the reference's own sampling
    error)."""
    if stream.ndim == 1:
        config = TrackerConfig(expected_run_length=ert, cusum_shifts=CUSUM_SHIFTS,
                               calibration_streams=CALIBRATION_STREAMS)
        cusum = error_cusum(stream[:reference], config)
        alarms = []
        for start in range(reference, len(stream), BATCH):
            alarms += [reference + a.detected_sample - 1 for a in cusum.update(stream[start:start + BATCH])]
        return alarms
    ref = stream[:reference]
    bins = [reference_bins(ref[:, f]) for f in range(stream.shape[1])]
    k = max(len(b["proportions"]) for b in bins)
    proportions = np.zeros((len(bins), k))
    for f, b in enumerate(bins):
        proportions[f, :len(b["proportions"])] = b["proportions"]
    cal = calibrate_windows(proportions, window, step, ert, confirm=1, reference_rows=reference)
    detector = WindowDrift([f"f{f}" for f in range(len(bins))], [np.array(b["edges"]) for b in bins], proportions,
                           window=window, step=step, psi_threshold=cal.psi, ks_threshold=cal.ks, confirm=1)
    alarms = []
    for start in range(reference, len(stream), BATCH):
        chunk = stream[start:start + BATCH]
        for alarm in detector.add(chunk):
            alarms.append(reference + alarm.detected_row - 1)
    # A raised alarm stays up until it clears; each raise is one alarm.
    return sorted(set(alarms))


PRE_DRIFT_ERROR = 0.1  # exact by construction for every concept stream (bench/drift_streams.py)
ORACLE_WINDOW = 250  # events after the drift's start over which `oracle_rates` measures p1
ORACLE_GRID = [float(h) for h in 1.02 ** np.arange(-35, 130)]  # LLR thresholds, ~0.5 to 13


def oracle_rates(streams, window: int = ORACLE_WINDOW) -> float:
    """The post-drift error rate the oracle is told: the mean over the first `window` events
    after each drift's start, on drift streams of seeds not evaluated. FriedmanDrift's is
    constant there (abrupt: the new concept from `position` on; gradual: half its events from
    the new concept for `width` events), so its oracle is Moustakides-optimal; the others'
    rates rise over the window and their row is only indicative (never under p0 + 0.01)."""
    rate = float(np.mean([s.values[s.start:s.start + window].mean() for s in streams]))
    return max(rate, PRE_DRIFT_ERROR + 0.01)


def run_oracle(stream: np.ndarray, reference: int, p1: float, h: float, p0: float = PRE_DRIFT_ERROR,
               stop: float = np.inf) -> list[int]:
    """A Bernoulli CUSUM of log(p1/p0) per error and log((1-p1)/(1-p0)) per right answer, from 0
    at the reference's end; an alarm when it exceeds `h`, then again from 0. Stops after `stop` alarms."""
    a, b = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
    s, alarms = 0.0, []
    for i, x in enumerate(stream[reference:].tolist()):
        s = max(0.0, s + (a if x else b))
        if s > h:
            alarms.append(reference + i)
            s = 0.0
            if len(alarms) > stop:
                break
    return alarms


def calibrate_oracle(streams, reference: int, ert: float, p1: float) -> float:
    """The same protocol: the smallest threshold with at most the target's alarms on the
    drift-free calibration streams."""
    allowed = sum(len(s.values) - reference for s in streams) / ert
    for h in ORACLE_GRID:
        alarms = 0
        for s in streams:
            alarms += len(run_oracle(s.values, reference, p1, h, stop=allowed - alarms))
            if alarms > allowed:
                break
        if alarms <= allowed:
            return h
    return ORACLE_GRID[-1]


# -- scoring ---------------------------------------------------------------------------------

def score(alarms: list[int], s: drift_streams.Stream, reference: int, horizon: int) -> dict:
    before = [a for a in alarms if a < s.start]
    monitored_before = max(0, min(s.start, len(s.values)) - reference)
    out = {"false_alarms": len(before), "monitored": monitored_before}
    if s.variant != "none":
        hits = [a for a in alarms if s.start <= a < s.start + horizon]
        out["delay"] = (hits[0] - s.start) if hits else None
    return out


def calibrate_river(name: str, streams: list[drift_streams.Stream], reference: int, ert: float) -> float:
    _, grid, _ = RIVER[name]
    up = is_concept(streams[0].kind)
    events = sum(len(s.values) - reference for s in streams)
    allowed = events / ert
    for value in grid:
        alarms = 0
        for s in streams:
            alarms += len(run_river(name, value, s.values, reference, up))
            if alarms > allowed:
                break
        if alarms <= allowed:
            return value
    return grid[-1]


def calibrate_ks(streams: list[drift_streams.Stream], reference: int, ert: float, every: int) -> float:
    stats = np.concatenate([ks_statistics(s.values, reference, every)[0] for s in streams])
    events = sum(len(s.values) - reference for s in streams)
    allowed = int(events / ert)
    ordered = np.sort(stats)[::-1]
    return float(ordered[allowed]) if allowed < len(ordered) else 0.0  # at most `allowed` above it


def main() -> int:
    global CUSUM_SHIFTS, CALIBRATION_STREAMS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--calibration-seeds", type=int, default=8)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--position", type=int, default=4000)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=3000)
    parser.add_argument("--ert", type=float, default=2000.0)
    parser.add_argument("--ks-every", type=int, default=200)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--step", type=int, default=25)
    parser.add_argument("--kinds", default=",".join(drift_streams.CONCEPT_KINDS + drift_streams.FEATURE_KINDS))
    parser.add_argument("--no-alibi", action="store_true")
    parser.add_argument("--alibi-seeds", type=int, default=1)
    parser.add_argument("--alibi-bootstraps", type=int, default=12_000)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--cusum-shifts", default="", help="override the monitor's CUSUM bank (comma-separated)")
    parser.add_argument("--calibration-streams", type=int, default=CALIBRATION_STREAMS,
                        help="bootstrap streams per threshold (default: the monitor's)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if args.cusum_shifts:
        CUSUM_SHIFTS = tuple(float(v) for v in args.cusum_shifts.split(","))
    CALIBRATION_STREAMS = args.calibration_streams
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)
        lines.append(record)

    def make(kind, variant, seed):
        return drift_streams.make(kind, variant, seed, args.events, args.position, args.width)

    started = time.perf_counter()
    evaluation = {k: [make(k, v, seed) for v in ("abrupt", "gradual") for seed in range(1, args.seeds + 1)]
                  + [make(k, "none", 50 + seed) for seed in range(1, args.seeds + 1)] for k in kinds}
    calibration = {k: [make(k, "none", 100 + seed) for seed in range(args.calibration_seeds)] for k in kinds}
    print(f"# streams made in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)

    alibi = None
    if not args.no_alibi:
        alibi = start_alibi(evaluation, args)

    results: dict[tuple[str, str], list[tuple[drift_streams.Stream, list[int], float]]] = defaultdict(list)
    settings: dict[tuple[str, str], str] = {}
    for kind in kinds:
        up = is_concept(kind)
        for name in RIVER:
            if not up and name in ("river-DDM", "river-HDDM_A"):
                continue  # they take a 0/1 (or [0, 1]) error stream, not raw feature values
            t = time.perf_counter()
            value = calibrate_river(name, calibration[kind], args.reference, args.ert)
            settings[(name, kind)] = f"{RIVER[name][0]}={value:g} (calibrated in {time.perf_counter() - t:.1f}s)"
            for s in evaluation[kind]:
                t = time.perf_counter()
                alarms = run_river(name, value, s.values, args.reference, up)
                results[(name, kind)].append((s, alarms, time.perf_counter() - t))
        threshold = calibrate_ks(calibration[kind], args.reference, args.ert, args.ks_every)
        settings[("ks-every-N", kind)] = f"N={args.ks_every}, D>{threshold:.4f}"
        for s in evaluation[kind]:
            t = time.perf_counter()
            stats, ends = ks_statistics(s.values, args.reference, args.ks_every)
            results[("ks-every-N", kind)].append((s, [int(e) for e in ends[stats > threshold]], time.perf_counter() - t))
        shape = "" if up else f", window {args.window} step {args.step}"
        t = time.perf_counter()
        m = calibrate_driftline(calibration[kind], args.reference, args.ert, args.window, args.step)
        settings[("driftline", kind)] = (f"bootstrap on each reference for ERT {m:g}×{args.ert:g}{shape} "
                                         f"(calibrated in {time.perf_counter() - t:.1f}s)")
        settings[("driftline-nominal", kind)] = f"bootstrap on each reference for ERT {args.ert:g}{shape}; not tuned"
        for name, multiple in (("driftline", m), ("driftline-nominal", 1.0)):
            for s in evaluation[kind]:
                t = time.perf_counter()
                alarms = run_driftline(s.values, args.reference, args.ert * multiple, args.window, args.step)
                results[(name, kind)].append((s, alarms, time.perf_counter() - t))
        if up:  # the bound: a CUSUM per variant, knowing p0 and that variant's p1
            for variant in ("abrupt", "gradual"):
                t = time.perf_counter()
                p1 = oracle_rates([make(kind, variant, 200 + seed) for seed in range(args.calibration_seeds)])
                h = calibrate_oracle(calibration[kind], args.reference, args.ert, p1)
                label = settings.get(("oracle-cusum", kind), "BOUND, not a detector: ")
                settings[("oracle-cusum", kind)] = label + (f"{variant} p0={PRE_DRIFT_ERROR:g} p1={p1:.3f} h={h:.2f} "
                                                            f"(calibrated in {time.perf_counter() - t:.1f}s); ")
                for s in evaluation[kind]:
                    if s.variant in (variant, "none"):  # the drift-free streams once per CUSUM
                        t = time.perf_counter()
                        results[("oracle-cusum", kind)].append((s, run_oracle(s.values, args.reference, p1, h),
                                                                time.perf_counter() - t))
        for s in evaluation[kind]:
            results[("no-detector", kind)].append((s, [], 0.0))
            results[("always-fire", kind)].append((s, list(range(args.reference, len(s.values))), 0.0))
        print(f"# {kind} done at {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)

    if alibi is not None:
        collect_alibi(alibi, evaluation, results, settings, args)

    table = []
    for (name, kind), runs in results.items():
        delays = [sc["delay"] for s, a, _ in runs if s.variant != "none" for sc in [score(a, s, args.reference, args.horizon)]]
        found = [d for d in delays if d is not None]
        false_alarms = sum(score(a, s, args.reference, args.horizon)["false_alarms"] for s, a, _ in runs)
        monitored = sum(score(a, s, args.reference, args.horizon)["monitored"] for s, a, _ in runs)
        seconds = sum(t for *_, t in runs)
        updates = sum(len(s.values) - args.reference for s, *_ in runs)
        record = {
            "bench": "drift", "detector": name, "stream": kind, "setting": settings.get((name, kind), ""),
            "ert": args.ert, "drift_runs": len(delays), "detected": len(found),
            "mean_delay": round(float(np.mean(found)), 1) if found else None,
            **{f"delay_{variant}": _mean([score(a, s, args.reference, args.horizon)["delay"] for s, a, _ in runs
                                          if s.variant == variant]) for variant in ("abrupt", "gradual")},
            "delay_penalised": round(float(np.mean([d if d is not None else args.horizon for d in delays])), 1),
            "missed_ratio": round(1 - len(found) / len(delays), 3) if delays else None,
            "false_alarms_per_100k": round(false_alarms / max(monitored, 1) * 1e5, 1),
            "updates_per_s": round(updates / seconds) if seconds > 0 else None,
            **spread(runs, args),
        }
        emit(record)
        table.append(record)

    acceptance = print_table(table, kinds, args)
    for line in acceptance:
        emit(line)
    if not args.no_throughput:
        sys.stdout.flush()
        rc = subprocess.call([sys.executable, str(ROOT / "bench" / "monitor_throughput.py")], cwd=ROOT)
        if rc:
            print(f"# monitor_throughput.py exited {rc}", file=sys.stderr)
    with open(out_dir / "drift.jsonl", "w") as f:
        for record in lines:
            f.write(json.dumps(record) + "\n")
    return 0


def spread(runs, args) -> dict:
    """Delay* and false alarms per round (round r: the abrupt and gradual streams of seed r and the
    drift-free one of seed 50 + r): their standard deviation over the rounds, and each round's value.
    False alarms are small counts that cluster (a detector whose reference came out low fires
    again and again), so one seed set can sit far from another's."""
    rounds: dict[int, list] = defaultdict(list)
    for s, alarms, _ in runs:
        rounds[s.seed - 50 if s.variant == "none" else s.seed].append(score(alarms, s, args.reference, args.horizon))
    delays, rates = [], []
    for r in sorted(rounds):
        found = [sc["delay"] if sc["delay"] is not None else args.horizon for sc in rounds[r] if "delay" in sc]
        delays.append(float(np.mean(found)) if found else float("nan"))
        rates.append(sum(sc["false_alarms"] for sc in rounds[r]) / max(sum(sc["monitored"] for sc in rounds[r]), 1) * 1e5)

    def sd(values):
        return round(float(np.std(values, ddof=1)), 1) if len(values) > 1 else None
    return {"rounds": len(rounds), "delay_penalised_sd": sd(delays), "false_alarms_per_100k_sd": sd(rates),
            "delay_penalised_rounds": [round(v, 1) for v in delays],
            "false_alarms_per_100k_rounds": [round(v, 1) for v in rates]}


def _mean(delays: list) -> float | None:
    found = [d for d in delays if d is not None]
    return round(float(np.mean(found)), 1) if found else None


def print_table(table: list[dict], kinds: list[str], args) -> list[dict]:
    print()
    print(f"{'stream':<11} {'detector':<18} {'delay':>7} {'abrupt':>7} {'gradual':>7} {'delay*':>7} {'±sd':>6} "
          f"{'missed':>7} {'FA/100k':>8} {'±sd':>6} {'upd/s':>10}  setting")
    for kind in kinds:
        for r in sorted((r for r in table if r["stream"] == kind), key=lambda r: r["delay_penalised"]):
            print(f"{kind:<11} {r['detector']:<18} {str(r['mean_delay']):>7} {str(r['delay_abrupt']):>7} "
                  f"{str(r['delay_gradual']):>7} {r['delay_penalised']:>7} {str(r['delay_penalised_sd']):>6} "
                  f"{str(r['missed_ratio']):>7} {r['false_alarms_per_100k']:>8} {str(r['false_alarms_per_100k_sd']):>6} "
                  f"{str(r['updates_per_s']):>10}  {r['setting']}")
    print("(delay*: a miss counts as the horizon; FA/100k measured on drift-free evaluation streams and before each drift;"
          f" target {1e5 / args.ert:.0f}/100k; ±sd: over the rounds, one seed each)")
    out = []
    wins = 0
    concept = [k for k in kinds if is_concept(k)]
    for kind in kinds:
        rows = {r["detector"]: r for r in table if r["stream"] == kind}
        mine = rows["driftline"]
        baselines = [r for n, r in rows.items()
                     if n not in ("driftline", "driftline-nominal", "oracle-cusum", "no-detector", "always-fire")]
        # A baseline over the false-alarm target buys its delay with alarms every detector here is
        # calibrated not to raise: it does not set the bar (alibi-FET at 112/100k did, for Friedman).
        # Driftline itself must be within the target too, and no worse than the fastest baseline that is.
        target = 1e5 / args.ert
        within = [r for r in baselines if r["false_alarms_per_100k"] <= target] or baselines
        best = min(within, key=lambda r: r["delay_penalised"])
        ok = (mine["delay_penalised"] <= best["delay_penalised"]
              and mine["false_alarms_per_100k"] <= max(target, best["false_alarms_per_100k"]))
        if kind in concept and ok:
            wins += 1
        out.append({"bench": "drift", "acceptance": "delay_vs_best_baseline", "stream": kind,
                    "driftline_delay": mine["delay_penalised"], "driftline_fa_per_100k": mine["false_alarms_per_100k"],
                    "best_baseline": best["detector"], "best_delay": best["delay_penalised"],
                    "best_fa_per_100k": best["false_alarms_per_100k"], "fa_target_per_100k": round(target, 1),
                    "baselines_over_target": sorted(r["detector"] for r in baselines if r not in within),
                    "no_worse": ok})
        by_variant = {}
        for variant in ("abrupt", "gradual"):
            key = f"delay_{variant}"
            ranked = [r for r in baselines if r.get(key) is not None]
            if ranked and mine.get(key) is not None:
                b = min(ranked, key=lambda r: r[key])
                by_variant[variant] = (mine[key], b["detector"], b[key])
        out[-1]["by_variant"] = by_variant
        print(f"  {kind:<11} by variant: " + "; ".join(
            f"{v}: driftline {d} vs best {n} {bd}" for v, (d, n, bd) in by_variant.items()))
        print(f"acceptance {kind:<11}: driftline delay* {mine['delay_penalised']} FA {mine['false_alarms_per_100k']} | "
              f"best baseline {best['detector']} delay* {best['delay_penalised']} FA {best['false_alarms_per_100k']} "
              f"-> {'no worse' if ok else 'WORSE'}")
    out.append({"bench": "drift", "acceptance": "concept_streams_no_worse", "wins": wins, "of": len(concept),
                "met": wins >= 3})
    print(f"acceptance: driftline no worse than the best baseline on {wins} of {len(concept)} concept-drift streams "
          f"(target 3 of 4): {'met' if wins >= 3 else 'NOT met'}")
    return out


# -- alibi-detect, in its own venv -----------------------------------------------------------

def start_alibi(evaluation, args):
    if not ALIBI_PYTHON.exists():
        print(f"# alibi-detect baseline: not run — no venv at {ALIBI_PYTHON} (create it with "
              f"`python -m venv {ALIBI_PYTHON.parents[1]} && {ALIBI_PYTHON.parent}/pip install alibi-detect==0.13.0`)",
              file=sys.stderr)
        return None
    jobdir = Path(tempfile.mkdtemp(prefix="drift-alibi-"))
    jobs = []
    for kind, streams in evaluation.items():
        for s in streams:
            if s.seed > 50 + args.alibi_seeds or (s.variant != "none" and s.seed > args.alibi_seeds):
                continue
            name = f"{kind}-{s.variant}-{s.seed}"
            np.save(jobdir / f"{name}-ref.npy", s.values[:args.reference])
            np.save(jobdir / f"{name}.npy", s.values)
            jobs.append({"name": name, "ref": f"{name}-ref.npy", "stream": f"{name}.npy", "start": args.reference,
                         "kind": "fet" if is_concept(kind) else "cvm"})
    (jobdir / "jobs.json").write_text(json.dumps({"ert": args.ert, "window_sizes": [50],
                                                  "n_bootstraps": args.alibi_bootstraps, "jobs": jobs}))
    log = open(jobdir / "alibi.log", "w")
    process = subprocess.Popen([str(ALIBI_PYTHON), str(ROOT / "bench" / "drift_alibi.py"), str(jobdir)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return process, jobdir


def collect_alibi(alibi, evaluation, results, settings, args) -> None:
    process, jobdir = alibi
    rc = process.wait()
    path = jobdir / "results.json"
    if rc != 0 or not path.exists():
        tail = (jobdir / "alibi.log").read_text()[-1500:]
        print(f"# alibi-detect baseline FAILED (exit {rc}); log {jobdir / 'alibi.log'}:\n{tail}", file=sys.stderr)
        return
    found = json.loads(path.read_text())
    for kind, streams in evaluation.items():
        name = "alibi-FET" if is_concept(kind) else "alibi-CVM"
        for s in streams:
            r = found.get(f"{kind}-{s.variant}-{s.seed}")
            if r is not None:
                results[(name, kind)].append((s, r["alarms"], r["update_s"]))
                settings[(name, kind)] = (f"ert={args.ert:g}, window 50, {args.alibi_bootstraps} bootstraps "
                                          f"(configure {r['configure_s']:.0f}s); {args.alibi_seeds} seed(s)")


if __name__ == "__main__":
    sys.exit(main())
