"""The platform's supervisor: `python -m services.cli.supervise HOME`.

`driftline up` starts it as a detached process (its own session), so it outlives the command:
it reads HOME/platform.json, starts the services (one process per role, one serving process per
model, each with a DRIFTLINE_INSTANCE_ID of its own for Kafka static membership), restarts any that exits (exponential back-off, services.devstack.supervisor.restart_backoff),
writes their state to HOME/supervisor.json on every change and logs each start, exit and restart
to its output (HOME/supervisor.log). SIGHUP (`driftline streams add`) re-reads platform.json and
starts the processes it names that are not running, leaving every other one alone. SIGTERM or
SIGINT (`driftline down`) stops the services and then itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from services.devstack.supervisor import Program, Supervisor

from .state import SERVING, Platform, read_json, write_json


def programs(platform: Platform) -> dict[str, Program]:
    """What each process is started with: this process's environment, the platform's, its own."""
    doc = platform.doc
    if not doc.get("services"):
        raise ValueError(f"no platform description in {platform.state_file}")
    found = {}
    for name, service, model in platform.processes():
        entry = platform.serving.get(model) if service == SERVING else doc["services"].get(name)
        if entry is None:
            continue
        found[name] = Program(service, {**os.environ, **doc.get("env", {}), **entry.get("env", {}),
                                        "DRIFTLINE_INSTANCE_ID": instance_id(service, model)},
                              Path(entry["log"]))
    return found


def instance_id(service: str, model: str | None = None) -> str:
    """The process's Kafka static group membership id (DRIFTLINE_INSTANCE_ID): the same on every
    restart, so a process restarted after SIGKILL takes its partitions back at once instead of
    waiting out the session timeout of the member it replaces.

    >>> instance_id("feature"), instance_id("serving", "sea")
    ('feature', 'serving-sea')
    """
    return f"{service}-{model}" if model else service


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m services.cli.supervise HOME", file=sys.stderr)
        return 2
    home = Path(args[0])
    platform = Platform(home, read_json(home / "platform.json"))
    try:
        initial = programs(platform)
    except ValueError as exc:
        print(f"supervise: {exc}", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)

    supervisor = Supervisor(initial, platform.log_dir, say=say,
                            on_change=lambda snapshot: write_json(platform.supervisor_file, snapshot))

    def stop(signum, frame) -> None:
        say(f"supervisor: {signal.Signals(signum).name}, stopping the services")
        supervisor.stop_event.set()

    def reload(signum, frame) -> None:
        supervisor.reload_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    say(f"supervisor: pid {os.getpid()}, platform in {home}")
    supervisor.run(reload=lambda: programs(Platform(home, read_json(home / "platform.json"))))
    say("supervisor: every service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
