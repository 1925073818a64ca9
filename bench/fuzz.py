"""The long form of tests/fuzz: every gRPC method of the contracts fuzzed for `--minutes` in all
(shared equally, in rounds), against every service as a real process on the local stack, with the
same generated and broken inputs as the test suite (tests/fuzz/fuzzkit.py) but randomized, so each
run tries inputs the last did not.

Prints one JSON line per API (inputs tried by kind, the status codes they met, crashes, hangs, the
server's RSS growth and peak growth) and a table. Exits 1 if any input crashed a server, hung a
call or was answered UNKNOWN or INTERNAL, and writes each such input's first bytes in its line.

    .venv/bin/python bench/fuzz.py --minutes 10
    .venv/bin/python bench/fuzz.py --minutes 2 --only Predictor.Predict,GRPCInferenceService.ModelInfer
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "fuzz")]

from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz_platform import Infrastructure, running  # noqa: E402
from fuzzkit import FINE, MODEL, Prober, Tally, bodies, methods, report_table, targeted  # noqa: E402
from services import devstack  # noqa: E402

# Small rounds, so the time share of an API is overrun by little.
ROUND_EXAMPLES = 25


def fuzz_for(prober: Prober, method, inputs, seconds: float) -> None:
    """Rounds of ROUND_EXAMPLES random inputs (targeted cases first) until `seconds` have passed."""
    for kind, body in targeted(method, MODEL):
        prober.send(kind, body)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        @settings(max_examples=ROUND_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(bodies(method, inputs))
        def one_round(case):
            prober.send(*case)

        one_round()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="fuzzing time in all, shared by the APIs")
    parser.add_argument("--only", default="", help="comma-separated APIs (e.g. Predictor.Predict); default all")
    args = parser.parse_args()
    chosen = [m for m in methods() if not args.only or m.api in args.only.split(",")]
    if not chosen:
        parser.error(f"no API among {[m.api for m in methods()]} matches --only {args.only}")
    inputs = [m.input for m in methods()]
    stack = devstack.up(quiet=True)
    infra = Infrastructure(stack.kafka_bootstrap, stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    share = args.minutes * 60 / len(chosen)
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="driftline-fuzz-") as tmp, running(infra, Path(tmp)) as platform:
        for method in chosen:
            server = method.server
            prober = Prober(method, platform.address(server), platform.pid(server),
                            lambda server=server: platform.alive(server))
            started = time.monotonic()
            fuzz_for(prober, method, inputs, share)
            tally = prober.finish()
            tallies.append(tally)
            print(json.dumps({"bench": "fuzz", **tally.to_json(), "seconds": round(time.monotonic() - started, 1)}),
                  flush=True)
            if not platform.alive(server):
                print(f"{server} died; the remaining APIs are not fuzzed", file=sys.stderr)
                break
    print(report_table(tallies))
    failed = [t for t in tallies if t.crashes or t.hangs or not set(t.codes) <= FINE]
    print(f"{sum(sum(t.inputs.values()) for t in tallies)} inputs, {sum(t.crashes for t in tallies)} crashes, "
          f"{sum(t.hangs for t in tallies)} hangs, largest peak RSS growth "
          f"{max((t.peak_growth for t in tallies), default=0) / 2**20:.1f} MiB; "
          f"{len(failed)} APIs with failures")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
