"""`make demo`: the whole Driftline loop on this machine, narrated.

    python -m services.demo [--rate 400] [--drift-at 8000] [--seed 42] [--secure] [--stack-only]

`--secure` runs the same scenario on a secure loop: the secure local stack (Kafka over SASL_SSL
with a principal and ACLs per service, S3 over https) and every service with its own certificate
(mTLS between them), token and Kafka login, as `driftline up --secure` starts them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from services import devstack

from .runner import run_closed_loop, stop_on_sigterm, stopped_components, use_secure_stack
from .scenario import Options


def parse_options(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second")
    parser.add_argument("--drift-at", type=int, default=defaults.drift_at, help="stream position of the drift")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--bootstrap-rows", type=int, default=defaults.bootstrap_rows,
                        help="labelled rows after which the platform asks for its first model")
    parser.add_argument("--retrain-rows", type=int, default=defaults.retrain_rows)
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="give up after this many seconds")
    parser.add_argument("--secure", action="store_true",
                        help="TLS (mTLS), tokens and Kafka SASL_SSL between every process, as `driftline up --secure`")
    parser.add_argument("--stack-only", action="store_true",
                        help="only bring up Kafka and the S3 server, print their health, wait for Ctrl-C")
    args = parser.parse_args(argv)
    return args, Options(rate=args.rate, drift_at=args.drift_at, seed=args.seed,
                         bootstrap_rows=args.bootstrap_rows, retrain_rows=args.retrain_rows,
                         timeout_s=args.timeout)


def stack_only() -> int:
    started = stopped_components()
    devstack.up()
    print("Ctrl-C stops the stack." if started else "The stack was already running; Ctrl-C leaves it up.")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    if started:
        devstack.down(only=started)
    return 0


def report(result, options: Options, log_dir, secure: bool = False) -> int:
    summary = result.summary(options.drift_at)
    print("\n── Driftline closed loop (secure: TLS, tokens, SASL_SSL) ─────────" if secure else
          "\n── Driftline closed loop ─────────────────────────────────────────")
    print(f"  first model asked for        by the platform at t+{summary['first_model_requested_s']} s "
          f"({options.bootstrap_rows:,} labelled rows)")
    print(f"  drift injected at event      {options.drift_at:,}")
    delay_events = summary["detection_delay_events"]
    print(f"  drift detected at event      {summary['detected_at_event']}"
          f"  (delay {delay_events} events, {summary['detection_delay_s']} s)")
    print(f"  new model                    v{summary['new_version']} on dataset {summary['new_dataset']}")
    if result.gate:
        g = result.gate
        print(f"  gate                         v{g['candidate_version']} {g['candidate_accuracy']:.3f} vs "
              f"v{g['baseline_version']} {g['baseline_accuracy']:.3f} on {g['eval_rows']} rows: {g['reason']}")
    for label, key in (("accuracy before drift", "accuracy_before_drift"),
                       ("accuracy just after drift", "accuracy_after_drift"),
                       ("accuracy after recovery", "accuracy_after_recovery")):
        print(f"  {label:<28} {summary[key]}")
    print(f"  Predict calls / failures     {summary['predict_calls']:,} / {summary['predict_failures']}")
    print(f"  TIME TO RECOVER              {summary['time_to_recover_s']} s "
          f"(drift onset → first Predict answered by v{summary['new_version']})")
    print(json.dumps({"demo": "closed_loop", "secure": secure, **summary}))
    if result.failures:
        print(f"\nFAILED: {'; '.join(result.failures[:5])}\nservice logs: {log_dir}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args, options = parse_options(argv)
    stop_on_sigterm()
    if args.secure:
        use_secure_stack()
    if args.stack_only:
        return stack_only()
    try:
        result, run = run_closed_loop(options, secure=args.secure)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    ok = result.time_to_recover_s is not None and not result.failures
    if not ok and not result.failures:
        result.failures.append("the loop did not recover")
    return report(result, options, run.log_dir, run.secure)


if __name__ == "__main__":
    sys.exit(main())
