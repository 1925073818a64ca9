"""The demo scenario, headless: how fast the loop recovers from a concept drift.

    python bench/closed_loop.py [--rate 400] [--drift-at 8000] [--seeds 42]

For each seed: time to recover (drift onset → first Predict answered by the
retrained model), detection delay in events and seconds, and accuracy before
the drift, just after it and after recovery. Prints JSON lines, then a table.
The baseline beside it is the model that is never replaced: its accuracy just
after the drift is what serving would give without the loop.
"""

from __future__ import annotations

import argparse
import json
import sys

from services.demo.runner import run_closed_loop, stop_on_sigterm
from services.demo.scenario import Options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=Options.rate)
    parser.add_argument("--drift-at", type=int, default=Options.drift_at)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--verbose", action="store_true", help="print the timeline of each run")
    args = parser.parse_args()
    stop_on_sigterm()

    rows, failed = [], False
    for seed in args.seeds:
        options = Options(rate=args.rate, drift_at=args.drift_at, seed=seed)
        result, _ = run_closed_loop(options, say=print if args.verbose else (lambda _: None))
        row = {"bench": "closed_loop", "seed": seed, "rate": args.rate, **result.summary(args.drift_at),
               "failures": result.failures}
        failed |= bool(result.failures) or result.time_to_recover_s is None
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = ("seed", "recover s", "detect s", "detect ev", "acc before", "acc drifted", "acc recovered")
    print("\n" + " ".join(f"{h:>13}" for h in header))
    for r in rows:
        values = (r["seed"], r["time_to_recover_s"], r["detection_delay_s"], r["detection_delay_events"],
                  r["accuracy_before_drift"], r["accuracy_after_drift"], r["accuracy_after_recovery"])
        print(" ".join(f"{'-' if v is None else v:>13}" for v in values))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
