"""The platform's supervisor: `python -m services.cli.supervise HOME`.

`driftline up` starts it as a detached process (its own session), so it outlives the command:
it reads HOME/platform.json, starts the six services, restarts any that exits (exponential
back-off, services.devstack.supervisor.Backoff), writes their state to HOME/supervisor.json on
every change and logs each start, exit and restart to its output (HOME/supervisor.log). SIGTERM
or SIGINT (`driftline down`) stops the services and then itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from services.devstack.supervisor import Supervisor

from .state import SERVICES, Platform, read_json, write_json


def service_env(doc: dict, name: str) -> dict[str, str]:
    """What a service is started with: this process's environment, the platform's, its own."""
    return {**os.environ, **doc.get("env", {}), **doc["services"][name].get("env", {})}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m services.cli.supervise HOME", file=sys.stderr)
        return 2
    home = Path(args[0])
    doc = read_json(home / "platform.json")
    if not doc.get("services"):
        print(f"supervise: no platform description in {home / 'platform.json'}", file=sys.stderr)
        return 2
    platform = Platform(home, doc)

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)

    supervisor = Supervisor({name: service_env(doc, name) for name in SERVICES if name in doc["services"]},
                            platform.log_dir, say=say,
                            on_change=lambda snapshot: write_json(platform.supervisor_file, snapshot))

    def stop(signum, frame) -> None:
        say(f"supervisor: {signal.Signals(signum).name}, stopping the services")
        supervisor.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    say(f"supervisor: pid {os.getpid()}, platform in {home}")
    supervisor.run()
    say("supervisor: every service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
