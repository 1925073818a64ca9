"""One closed-loop run on the local stack: infrastructure, the six services,
the observed scenario, and a clean stop of everything that was started."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services import devstack
from services.common.settings import Topics
from services.devstack import kafka as devstack_kafka
from services.devstack.secure import SecureLoop, secure_env, settings_of
from services.devstack.supervisor import LoopProcesses

from .scenario import LoopObserver, Options, Result


def stop_on_sigterm() -> None:
    """SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so whatever was started is stopped."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


SECURE_STACK_ENV = {"DRIFTLINE_DEVSTACK_SECURE": "true"}


def use_secure_stack() -> None:
    """Every later devstack call of this process is about the secure local stack (SASL_SSL, https),
    which has its own state folder and ports beside the plaintext one."""
    os.environ.update(SECURE_STACK_ENV)


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
                     "DRIFTLINE_RELAY_INTERVAL_S": "0.05"},
        # Segments every quarter second: a retrain after the drift waits for its rows to be in one
        # (every tenth, the feature service fell behind on this machine: rows came 0.85-1.2 s late).
        "feature": {"DRIFTLINE_FEATURE_SEGMENT_SECONDS": "0.25"},
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
    secure: bool = False


def run_closed_loop(options: Options, say: Callable[[str], None] = print,
                    state_root: Path | None = None, secure: bool = False) -> tuple[Result, LoopRun]:
    """Runs the scenario; returns its result and where its logs and data are. `secure`: on the
    secure local stack, every process with its own certificate (mTLS), token and Kafka principal,
    as `driftline up --secure` starts them (services/devstack/secure.py)."""
    run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    if secure:
        use_secure_stack()
    root = state_root or Path(os.environ.get("DRIFTLINE_STATE_DIR", Path.cwd() / ".devstack"))
    state = Path(root) / "runs" / run_id
    state.mkdir(parents=True, exist_ok=True)

    to_stop = stopped_components()
    endpoints = devstack.up(quiet=False)
    env = loop_env(run_id, endpoints, state, options)
    extra_env = service_env(state, options)
    operator = settings_of(env)
    if secure:
        devstack_kafka.broker().provision(env["DRIFTLINE_TOPIC_PREFIX"])
        shared, own, operator_env = secure_env(SecureLoop.prepare(state / "secure"), endpoints)
        env.update(shared)
        extra_env = {name: {**own[name], **extra_env.get(name, {})} for name in own}
        operator = settings_of({**env, **operator_env})
    run = LoopRun(run_id, env["DRIFTLINE_BUCKET"], state / "logs", endpoints, secure)
    processes = LoopProcesses(env, run.log_dir, extra_env=extra_env, probe=operator)
    try:
        say(f"starting the six services{' (secure: TLS, tokens, SASL_SSL)' if secure else ''}…")
        processes.start()
        for name, status in processes.health().items():
            say(f"  {name:<9} {status:<8} {processes.handles[name].address if status == 'SERVING' else ''}")
        observer = LoopObserver(options, endpoints.kafka_bootstrap, Topics(f"run{run_id}."),
                                processes.handles["serving"].address, say,
                                kafka_config=operator.kafka_client_config(), channel_settings=operator)
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
