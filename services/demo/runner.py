"""One closed-loop run on the local stack: infrastructure, the six services,
the observed scenario, and a clean stop of everything that was started."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services import devstack
from services.common.settings import Topics
from services.devstack.supervisor import LoopProcesses

from .scenario import LoopObserver, Options, Result


def stop_on_sigterm() -> None:
    """SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so whatever was started is stopped."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def stopped_components() -> list[str]:
    """The parts of the local stack that are down now: what a run starts, it stops."""
    return [name for name, state in devstack.status().items() if state["state"] == "down"]


def loop_env(run_id: str, endpoints: "devstack.Endpoints", state: Path, options: Options) -> dict[str, str]:
    """The environment every service of this run shares: its own topics and bucket."""
    return {
        "DRIFTLINE_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "DRIFTLINE_S3_ENDPOINT": endpoints.s3_endpoint,
        "DRIFTLINE_S3_ACCESS_KEY": endpoints.s3_access_key,
        "DRIFTLINE_S3_SECRET_KEY": endpoints.s3_secret_key,
        "DRIFTLINE_TOPIC_PREFIX": f"run{run_id}.",
        "DRIFTLINE_BUCKET": f"driftline-run{run_id}",
        "DRIFTLINE_MODEL_NAME": options.model_name,
        "DRIFTLINE_STREAM": options.stream,
        "DRIFTLINE_STATE_DIR": str(state),
        "DRIFTLINE_LOG_JSON": "true",
        "PYTHONUNBUFFERED": "1",
    }


def service_env(state: Path, options: Options) -> dict[str, dict[str, str]]:
    """Per-service settings of the scenario (small windows so a laptop sees the loop in a minute)."""
    return {
        "registry": {"DRIFTLINE_REGISTRY_DB": str(state / "registry.db"),
                     # Alias moves reach serving through the outbox relay: poll it often.
                     "DRIFTLINE_RELAY_INTERVAL_S": "0.2"},
        # The monitor asks for the first model itself, once the stream has this many labelled rows.
        "monitor": {"DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS": str(options.retrain_rows),
                    "DRIFTLINE_FIRST_MODEL_MIN_ROWS": str(options.bootstrap_rows)},
    }


@dataclass(frozen=True)
class LoopRun:
    """Where one run left its traces."""

    run_id: str
    bucket: str
    log_dir: Path
    endpoints: "devstack.Endpoints"


def run_closed_loop(options: Options, say: Callable[[str], None] = print,
                    state_root: Path | None = None) -> tuple[Result, LoopRun]:
    """Runs the scenario; returns its result and where its logs and data are."""
    run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    root = state_root or Path(os.environ.get("DRIFTLINE_STATE_DIR", Path.cwd() / ".devstack"))
    state = Path(root) / "runs" / run_id
    state.mkdir(parents=True, exist_ok=True)

    to_stop = stopped_components()
    endpoints = devstack.up(quiet=False)
    env = loop_env(run_id, endpoints, state, options)
    run = LoopRun(run_id, env["DRIFTLINE_BUCKET"], state / "logs", endpoints)
    processes = LoopProcesses(env, run.log_dir, extra_env=service_env(state, options))
    try:
        say("starting the six services…")
        processes.start()
        for name, status in processes.health().items():
            say(f"  {name:<9} {status:<8} {processes.handles[name].address if status == 'SERVING' else ''}")
        observer = LoopObserver(options, endpoints.kafka_bootstrap, Topics(f"run{run_id}."),
                                processes.handles["serving"].address, say)
        result = observer.run()
        unhealthy = {n: s for n, s in processes.health().items() if s.startswith("exited")}
        if unhealthy:
            result.failures.append(f"services died during the run: {unhealthy}")
        return result, run
    finally:
        codes = processes.stop()
        say("services stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
        if to_stop:
            devstack.down(quiet=True, only=to_stop)
            say(f"local stack stopped ({', '.join(to_stop)})")
