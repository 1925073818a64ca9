"""Nothing lost, nothing doubled: the fault-injection suite's long form (issue 11).

    python bench/faults.py [--rounds 3] [--events 20000] [--rate 100] [--faults kill:feature ...]
    python bench/faults.py --quick        # every fault once, in one short run
    python bench/faults.py --faults kill:feature --rounds 3 --events 20000   # the acceptance run

Each fault gets a private platform of its own (`driftline up` on its own broker and S3 server,
tests/faults/harness.py), a steady labelled stream with a concept drift, late labels and a
Predict client, and strikes `--rounds` times during that stream; then the stream drains and every
invariant is judged — so a violated invariant is that fault's. `--together` strikes the whole plan
in one run instead (what `make test` does, and `--quick`). Prints one JSON line per strike and per
invariant, then a table of fault × invariant and the time to recover (from the fault until every
consumer group's lag is back to its steady level: median of rounds, max; and the same counted from
the struck part being healthy again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))
from harness import ALL_FAULTS, Config, FaultRun, recovery_table  # noqa: E402

from services.demo.runner import stop_on_sigterm  # noqa: E402

# Short names for the table's columns, in the order the harness judges them.
COLUMNS = {
    "every valid raw event exactly once in driftline.events": "events",
    "every valid raw event exactly once in driftline.features": "features",
    "no dataset holds an event twice": "datasets",
    "every valid event exactly once in the dataset covering it": "dataset",
    "a label sent": "late label",
    "every training request gets exactly one result": "1 result",
    "at most one registered version per training request": "≤1 version",
    "no restart causes an extra training request": "no extra train",
    "every registry event reaches every consumer": "registry ev",
    "the monitor's labelled samples equal": "monitor n",
    "a Predict client retrying UNAVAILABLE": "predict",
    "every fault recovers": "recovers",
}


def column(invariant: str) -> str:
    return next((short for long, short in COLUMNS.items() if invariant.startswith(long)), invariant[:12])


def cell(verdict: dict) -> str:
    """ok, or FAIL with the figure that says why (lost/duplicated, or the first figure)."""
    if verdict["ok"]:
        return "ok"
    f = verdict["figures"]
    if "lost" in f:
        return f"FAIL -{f['lost']}/+{f['duplicates']}"
    if "error" in f:
        return "FAIL err"
    return "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="strikes of each fault (one run per fault)")
    parser.add_argument("--events", type=int, default=20000, help="the stream's length at least")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--faults", nargs="+", default=list(ALL_FAULTS), choices=list(ALL_FAULTS))
    parser.add_argument("--together", action="store_true", help="the whole plan in one run")
    parser.add_argument("--quick", action="store_true", help="every fault once in one run of 3,000 events")
    parser.add_argument("--root", type=Path, default=None, help="where runs keep their homes and stacks")
    parser.add_argument("--verbose", action="store_true", help="print each run's timeline")
    args = parser.parse_args()
    stop_on_sigterm()  # a timeout's SIGTERM unwinds like Ctrl-C: each run's platform goes down
    if args.quick:
        args.rounds, args.events, args.rate, args.together = 1, 3000, 40.0, True
    root = args.root or Path(tempfile.mkdtemp(prefix="driftline-faults-"))
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else (lambda line: None)

    plans = [[f for f in args.faults for _ in range(args.rounds)]] if args.together else \
        [[f] * args.rounds for f in args.faults]
    rows, strikes = [], []
    for index, plan in enumerate(plans):
        label = "+".join(dict.fromkeys(plan)) if not args.together else "together"
        config = Config(events=args.events, rate=args.rate)
        started = time.monotonic()
        with FaultRun(root / f"run{index}", config, plan, say=say) as run:
            report = run.run()
        for strike in report.strikes:
            strikes.append(strike)
            print(json.dumps({"bench": "faults", "run": label, **strike}), flush=True)
        for v in report.verdicts:
            print(json.dumps({"bench": "faults", "run": label, "invariant": v.invariant, "ok": v.ok,
                              "figures": v.figures}, default=str), flush=True)
        print(json.dumps({"bench": "faults", "run": label, "events_sent": report.events_sent,
                          "predict": {k: v for k, v in report.predict.items() if k != "failures"},
                          "failures": report.failures, "took_s": round(time.monotonic() - started, 1)}), flush=True)
        rows.append((label, {column(v.invariant): cell({"ok": v.ok, "figures": v.figures}) for v in report.verdicts},
                     report.failures))

    names = list(COLUMNS.values())
    print("\n" + f"{'run':<26}" + " ".join(f"{n:>15}" for n in names))
    for label, cells, _ in rows:
        print(f"{label:<26}" + " ".join(f"{cells.get(n, '-'):>15}" for n in names))
    recovery = recovery_table(strikes)
    header = ("fault", "rounds", "recovered", "median s", "max s", "after healthy med", "after healthy max")
    print("\n" + f"{header[0]:<26}" + " ".join(f"{h:>17}" for h in header[1:]))
    for fault, r in recovery.items():
        values = (r["rounds"], r["recovered"], r["recover_median_s"], r["recover_max_s"],
                  r["after_healthy_median_s"], r["after_healthy_max_s"])
        print(f"{fault:<26}" + " ".join(f"{'-' if v is None else v:>17}" for v in values))
    failed = any(failures or any(c.startswith("FAIL") for c in cells.values()) for _, cells, failures in rows)
    print(f"\nruns under {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
