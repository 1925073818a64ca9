"""The platform's processes as the verbs see them: one per role, and one serving process per model.

Ingest, feature, registry, monitor and the trainer each run once and serve every stream of the
streams folder; serving runs once per model (DRIFTLINE_MODEL_NAME), as in KServe, each on its
own gRPC and metrics port. `plan_serving` says which serving processes the streams folder asks
for, keeping the ones already planned as they are; `serve_new_models` has a running supervisor
start the new ones (platform.json rewritten, then SIGHUP), and nothing else is restarted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from services.common.streams import StreamCatalog
from services.devstack.supervisor import command_line, free_port, port_or_free

from .clients import health
from .errors import CliError
from .state import DEFAULT_PORTS, SERVING, WITH_GRPC, Platform, log_name, process_name

SUPERVISOR = "services.cli.supervise"  # the module `up` runs the supervisor as
CRASH_LOOP_RESTARTS = 3  # while waiting: a process restarted this often will not come up by waiting


# -- health -------------------------------------------------------------------------------------


def health_row(platform: Platform, name: str, service: str, model: str | None, supervision: dict) -> dict:
    sup = supervision.get(name, {})
    if service in WITH_GRPC:
        address = platform.address(service, model)
        state = health(address, timeout=1.0, settings=platform.settings)
    else:  # the trainer has no gRPC server: its process is its health
        address = ""
        state = "RUNNING" if sup.get("state") == "running" else (sup.get("state") or "stopped").upper()
    return {"service": service, "model": model, "address": address, "health": state, "pid": sup.get("pid"),
            "restarts": sup.get("restarts", 0)}


def healthy(row: dict) -> bool:
    return row["health"] in ("SERVING", "RUNNING")


def label(row: dict) -> str:
    """'serving (sea)' for a serving process, else the service."""
    return f"{row['service']} ({row['model']})" if row.get("model") else row["service"]


def wait_healthy(platform: Platform, names: list[str] | None, timeout: float,
                 supervisor_alive: Callable[[], bool]) -> list[dict]:
    """The health rows of the processes `names` (all of them: None) once every one is healthy;
    CliError when the supervisor is gone, one keeps exiting, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if not supervisor_alive():
            raise CliError(f"the supervisor exited: see {platform.supervisor_log}")
        supervision = platform.supervision()
        rows = [health_row(platform, name, service, model, supervision)
                for name, service, model in platform.processes() if names is None or name in names]
        crashing = [r for r in rows if r["restarts"] >= CRASH_LOOP_RESTARTS]
        if crashing:
            row = crashing[0]
            log = platform.log_path(row["service"], row["model"])
            raise CliError(f"{label(row)} keeps exiting (restarted {row['restarts']} times): see {log}"
                           f"{last_line(log)}")
        started = bool(supervision) if names is None else all(name in supervision for name in names)
        if started and all(healthy(r) for r in rows):
            return rows
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{label(r)} ({r['health']})" for r in rows if not healthy(r))
            raise CliError(f"not healthy after {timeout:g}s: {waiting}; logs in {platform.log_dir}")
        time.sleep(0.5)


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][:300]})" if lines else ""


# -- one serving process per model ----------------------------------------------------------------


def plan_serving(platform: Platform, addresses: dict[str, str], pick: Callable[[int], int] = port_or_free) -> dict:
    """platform.json's "serving": one entry per model of the streams folder, the ones already
    there unchanged. The default stream's model gets `pick(50054)` (the default port when it is
    free, for `port_or_free`), every other model a free port."""
    default_stream = platform.doc.get("stream") or platform.settings.stream
    catalog = StreamCatalog(platform.streams_dir, default=default_stream)
    planned = dict(platform.serving)
    for schema in sorted(catalog, key=lambda s: s.stream != default_stream):
        model = schema.model_name
        if model in planned:
            continue
        grpc_port = pick(DEFAULT_PORTS[SERVING]) if schema.stream == default_stream else free_port()
        metrics_port = free_port()
        address = f"127.0.0.1:{grpc_port}"
        planned[model] = {
            "stream": schema.stream, "process": process_name(SERVING, model), "address": address,
            "log": str(platform.log_dir / log_name(SERVING, model)),
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "env": {"DRIFTLINE_GRPC_PORT": str(grpc_port), "DRIFTLINE_METRICS_PORT": str(metrics_port),
                    "DRIFTLINE_REGISTRY_ADDRESS": addresses["registry"],
                    "DRIFTLINE_FEATURE_ADDRESS": addresses["feature"],
                    "DRIFTLINE_SERVING_ADDRESS": address,
                    "DRIFTLINE_MODEL_NAME": model, "DRIFTLINE_STREAM": schema.stream,
                    **platform.secure_env(SERVING)},
        }
    return planned


def serve_new_models(platform: Platform, timeout: float = 60.0) -> list[dict]:
    """On a running platform: a serving process for each model of the streams folder that has
    none, started by the supervisor while every other process keeps running; their health rows."""
    addresses = {name: platform.address(name) for name in ("registry", "feature")}
    planned = plan_serving(platform, addresses)
    new = [model for model in planned if model not in platform.serving]
    if not new:
        return []
    pid = platform.supervisor_pid
    deadline = time.monotonic() + timeout
    while not platform.supervision():  # written once the supervisor's signal handlers are in place
        if SUPERVISOR not in command_line(pid) or time.monotonic() > deadline:
            raise CliError(f"the supervisor of {platform.home} is not running (driftline up starts it)")
        time.sleep(0.2)
    if SUPERVISOR not in command_line(pid):
        raise CliError(f"the supervisor of {platform.home} is gone (driftline up starts the platform again)")
    platform.doc["serving"] = planned
    platform.save()
    os.kill(pid, signal.SIGHUP)  # the supervisor re-reads platform.json and starts what is new
    return wait_healthy(platform, [process_name(SERVING, model) for model in new], timeout, platform.running)
