"""`driftline up | down | status | logs`: the platform's processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from services import devstack
from services.devstack.supervisor import alive, command_line, free_port, port_or_free

from . import output, streams
from .clients import ALIASES, DEADLINE_S, KAFKA_TIMEOUT_S, Rpc, health, kafka_admin
from .errors import CliError
from .state import DEFAULT_DASHBOARD_PORT, DEFAULT_PORTS, SERVICES, WITH_GRPC, Platform

JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
SUPERVISOR = "services.cli.supervise"
CRASH_LOOP_RESTARTS = 3  # during `up`: a service restarted this often will not come up by waiting


# -- up ---------------------------------------------------------------------------------------


def _stack(say) -> tuple[dict[str, str], list[str]]:
    """Kafka and S3 settings, starting the local stack when no address is configured."""
    kafka, s3 = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP"), os.environ.get("DRIFTLINE_S3_ENDPOINT")
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka or "", "DRIFTLINE_S3_ENDPOINT": s3 or ""}
    started: list[str] = []
    if not kafka or not s3:
        started = [name for name, st in devstack.status().items() if st["state"] == "down"]
        if started:
            say(f"starting the local stack ({', '.join(started)}; the first run downloads and builds it)…")
        with contextlib.redirect_stdout(sys.stderr):
            try:
                endpoints = devstack.up(quiet=not started)
            except devstack.DevstackError as exc:
                raise CliError(f"local stack: {exc}") from None
        env["DRIFTLINE_KAFKA_BOOTSTRAP"] = kafka or endpoints.kafka_bootstrap
        if not s3:
            env.update({"DRIFTLINE_S3_ENDPOINT": endpoints.s3_endpoint, "DRIFTLINE_S3_ACCESS_KEY": endpoints.s3_access_key,
                        "DRIFTLINE_S3_SECRET_KEY": endpoints.s3_secret_key, "DRIFTLINE_S3_SECURE": "false"})
    return env, started


def _describe(platform: Platform, stream_path: Path, stream_name: str, stack_env: dict[str, str],
              stack_started: list[str], any_ports: bool) -> dict:
    """platform.json for a new run: where every service will listen and what it is started with."""
    settings = platform.settings
    data = platform.home / "data"
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("DRIFTLINE_S3_") or k in (
            "DRIFTLINE_TOPIC_PREFIX", "DRIFTLINE_BUCKET", "DRIFTLINE_MODEL_NAME")},
        **stack_env,
        "DRIFTLINE_TOPIC_PREFIX": settings.topic_prefix, "DRIFTLINE_BUCKET": settings.bucket,
        "DRIFTLINE_MODEL_NAME": settings.model_name, "DRIFTLINE_STREAM": stream_name,
        "DRIFTLINE_SCHEMA_PATH": str(stream_path), "DRIFTLINE_STREAMS_DIR": str(platform.streams_dir),
        "PYTHONUNBUFFERED": "1",
    }
    pick = (lambda default: free_port()) if any_ports else port_or_free
    ports = {name: pick(DEFAULT_PORTS[name]) for name in WITH_GRPC}
    dashboard = pick(DEFAULT_DASHBOARD_PORT)
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    own = {"registry": {"DRIFTLINE_REGISTRY_DB": str(data / "registry.db"), "DRIFTLINE_RELAY_INTERVAL_S": "0.5"},
           "feature": {"DRIFTLINE_FEATURE_DATADIR": str(data / "feature")},
           "monitor": {"DRIFTLINE_DASHBOARD_PORT": str(dashboard)}}
    services = {}
    for name in SERVICES:
        service_env = {"DRIFTLINE_GRPC_PORT": str(ports.get(name, 0)), "DRIFTLINE_METRICS_PORT": str(free_port()),
                       "DRIFTLINE_REGISTRY_ADDRESS": addresses["registry"],
                       "DRIFTLINE_FEATURE_ADDRESS": addresses["feature"],
                       "DRIFTLINE_SERVING_ADDRESS": addresses["serving"], **own.get(name, {})}
        services[name] = {"address": addresses.get(name, ""), "log": str(platform.log_dir / f"{name}.log"),
                          "metrics": f"http://127.0.0.1:{service_env['DRIFTLINE_METRICS_PORT']}/metrics",
                          "env": service_env}
    return {"state": "starting", "home": str(platform.home), "started_at": output.iso(time.time() * 1000),
            "stream": stream_name, "schema_path": str(stream_path), "model_name": settings.model_name,
            "env": env, "services": services, "stack_started": stack_started,
            "dashboard_url": f"http://127.0.0.1:{dashboard}/"}


def _health_row(platform: Platform, name: str, supervision: dict) -> dict:
    sup = supervision.get(name, {})
    if name in WITH_GRPC:
        state = health(platform.address(name), timeout=1.0)
    else:  # the trainer has no gRPC server: its process is its health
        state = "RUNNING" if sup.get("state") == "running" else (sup.get("state") or "stopped").upper()
    return {"service": name, "address": platform.address(name) if name in WITH_GRPC else "",
            "health": state, "pid": sup.get("pid"), "restarts": sup.get("restarts", 0)}


def _healthy(row: dict) -> bool:
    return row["health"] in ("SERVING", "RUNNING")


def _wait_up(platform: Platform, supervisor: subprocess.Popen, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        if supervisor.poll() is not None:
            raise CliError(f"the supervisor exited with {supervisor.returncode}: see {platform.home / 'supervisor.log'}")
        supervision = platform.supervision()
        rows = [_health_row(platform, name, supervision) for name in SERVICES]
        crashing = [r for r in rows if r["restarts"] >= CRASH_LOOP_RESTARTS]
        if crashing:
            name = crashing[0]["service"]
            raise CliError(f"{name} keeps exiting (restarted {crashing[0]['restarts']} times): see "
                           f"{platform.log_path(name)}{_last_line(platform.log_path(name))}")
        if supervision and all(_healthy(r) for r in rows):
            return rows
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{r['service']} ({r['health']})" for r in rows if not _healthy(r))
            raise CliError(f"not healthy after {timeout:g}s: {waiting}; logs in {platform.log_dir}")
        time.sleep(0.5)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][:300]})" if lines else ""


def up(stream: Annotated[list[str], typer.Option(
           "--stream", help="A stream schema file (added to the platform) or a stream's name; repeatable. "
                            "The services run the first; the others are added for later.")] = [],
       foreground: Annotated[bool, typer.Option(
           "--foreground", help="Stay attached and follow the logs; Ctrl-C stops everything.")] = False,
       timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be healthy.")] = 180.0,
       any_ports: Annotated[bool, typer.Option(
           "--any-ports", help="Free ports instead of the defaults (gRPC 50051-50055, dashboard 8055).")] = False,
       json_out: JsonOut = False) -> None:
    """Start the platform: the local stack (unless DRIFTLINE_KAFKA_BOOTSTRAP and DRIFTLINE_S3_ENDPOINT are
    set), then the six services under a supervisor that restarts any that dies."""
    platform = Platform.load()
    if platform.running():
        output.note(f"the platform in {platform.home} is already up (driftline down stops it)")
        return status(json_out=json_out)
    streams.seed(platform)
    chosen = [streams.resolve(platform, spec) for spec in stream] or [
        streams.find_stream(platform, os.environ.get("DRIFTLINE_STREAM") or "default")]
    stream_path, schema = chosen[0]
    stack_env, stack_started = _stack(output.note)
    platform.doc = _describe(platform, stream_path, schema.stream, stack_env, stack_started, any_ports)
    platform.log_dir.mkdir(parents=True, exist_ok=True)
    platform.supervisor_file.unlink(missing_ok=True)
    platform.save()
    with (platform.home / "supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", SUPERVISOR, str(platform.home)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    platform.doc["supervisor"] = {"pid": supervisor.pid, "log": str(platform.home / "supervisor.log")}
    platform.save()
    output.note(f"starting the six services (stream {schema.stream}, state in {platform.state_file})…")
    try:
        rows = _wait_up(platform, supervisor, timeout)
    except BaseException:
        _down(platform, quiet=True)
        raise
    platform.doc["state"] = "up"
    platform.save()
    if json_out:
        output.emit_json({"home": str(platform.home), "dashboard_url": platform.dashboard_url, "services": rows})
    else:
        output.table(["service", "address", "health", "pid"],
                     [(r["service"], r["address"] or "(no gRPC)", r["health"], r["pid"]) for r in rows])
        output.say(f"dashboard: {platform.dashboard_url}")
        output.say("stop it with: driftline down" if not foreground else "following the logs; Ctrl-C stops everything")
    if foreground:
        _follow_until_interrupted(platform, supervisor)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _follow_until_interrupted(platform: Platform, supervisor: subprocess.Popen) -> None:
    # Ctrl-C even where SIGINT came in ignored (a shell's background job), and SIGTERM alike.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    paths = {name: platform.log_path(name) for name in SERVICES} | {"supervisor": platform.home / "supervisor.log"}
    positions = {name: path.stat().st_size if path.exists() else 0 for name, path in paths.items()}
    try:
        while supervisor.poll() is None:
            for name, path in paths.items():
                positions[name], lines = _read_new(path, positions[name])
                for line in lines:
                    output.say(f"{name:<10} | {line}")
            time.sleep(0.3)
        output.note(f"the supervisor exited with {supervisor.returncode}")
    except KeyboardInterrupt:
        output.note("stopping…")
    finally:
        output.table(["stopped", "how"], _down(platform, quiet=False))


def _read_new(path: Path, position: int) -> tuple[int, list[str]]:
    """Lines appended to `path` since `position` (from the start again if the file was truncated)."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0, []
    if size < position:
        position = 0
    if size == position:
        return position, []
    with path.open("rb") as f:
        f.seek(position)
        chunk = f.read()
    complete = chunk.rfind(b"\n") + 1
    return position + complete, chunk[:complete].decode(errors="replace").splitlines()


# -- down -------------------------------------------------------------------------------------


def _stop_pid(pid: int, must_contain: str, timeout: float) -> str | None:
    """SIGTERM to `pid` (if it is the process we think), SIGKILL after `timeout`; how it went."""
    if not alive(pid) or must_contain not in command_line(pid):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.1)
        return "killed"
    return "stopped"


def _down(platform: Platform, quiet: bool) -> list[tuple[str, str]]:
    done = []
    pid = platform.supervisor_pid
    if pid:
        how = _stop_pid(pid, SUPERVISOR, timeout=45.0)
        if how:
            done.append(("supervisor", how))
    for name, sup in platform.supervision().items():  # a service the supervisor left behind
        how = sup.get("pid") and _stop_pid(sup["pid"], f"services.{name}", timeout=10.0)
        done.append((name, how or "stopped"))
    started = platform.doc.get("stack_started") or []
    if started:
        if not quiet:
            output.note(f"stopping the local stack ({', '.join(started)}), which driftline up started…")
        with contextlib.redirect_stdout(sys.stderr):
            devstack.down(quiet=True, only=started)
        done += [(name, "stopped") for name in started]
    if platform.doc:
        platform.doc.update(state="down", stopped_at=output.iso(time.time() * 1000), stack_started=[])
        platform.save()
    return done


def down(json_out: JsonOut = False) -> None:
    """Stop the services, then the local stack if `driftline up` started it."""
    platform = Platform.load()
    if not platform.doc:
        output.note(f"no platform in {platform.home}: nothing to stop")
        done = []
    else:
        done = _down(platform, quiet=json_out)
    if json_out:
        return output.emit_json({"stopped": dict(done)})
    if done:
        output.table(["stopped", "how"], done)
    else:
        output.say("nothing was running")


# -- status -----------------------------------------------------------------------------------


def _lag(platform: Platform) -> list[dict]:
    """Per consumer group of this platform: committed offsets against the partitions' ends."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = kafka_admin(platform)
    prefix = f"{platform.settings.topic_prefix}driftline"
    listed = admin.list_consumer_groups(request_timeout=KAFKA_TIMEOUT_S).result(timeout=KAFKA_TIMEOUT_S)
    groups = sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))
    rows = []
    for group in groups:
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=KAFKA_TIMEOUT_S)
        committed = [tp for tp in futures[group].result(timeout=KAFKA_TIMEOUT_S).topic_partitions
                     if tp.error is None]
        if not committed:
            rows.append({"group": group, "topic": "", "partition": None, "committed": None, "end": None, "lag": None})
            continue
        ends = admin.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed},
                                  request_timeout=KAFKA_TIMEOUT_S)
        end_of = {(tp.topic, tp.partition): f.result(timeout=KAFKA_TIMEOUT_S).offset for tp, f in ends.items()}
        for tp in committed:
            end = end_of[(tp.topic, tp.partition)]
            rows.append({"group": group, "topic": tp.topic, "partition": tp.partition,
                         "committed": tp.offset, "end": end, "lag": max(0, end - max(tp.offset, 0))})
    return rows


def _aliases(platform: Platform, models: list[str]) -> dict[str, dict[str, int | None]]:
    from .models import aliases_of

    with Rpc.of(platform, "registry") as registry:
        return {model: aliases_of(registry, model) for model in models}


def _last_alert(platform: Platform, models: list[str]) -> dict | None:
    from driftline.v1 import monitor_pb2

    alerts = []
    with Rpc.of(platform, "monitor") as monitor:
        for model in models:
            reply = monitor.call("GetDriftReport", monitor_pb2.GetDriftReportRequest(model_name=model))
            alerts += [(report, alert) for report in reply.reports for alert in report.alerts]
    if not alerts:
        return None
    report, alert = max(alerts, key=lambda item: item[1].detected_at.ToMilliseconds())
    return {"model_name": report.model_name, "model_version": report.model_version, **output.plain(alert)}


def _try(fn, *args) -> tuple[object, str | None]:
    try:
        return fn(*args), None
    except CliError as exc:
        return None, str(exc)
    except Exception as exc:  # a Kafka admin call that timed out, …
        return None, f"{type(exc).__name__}: {exc}"


def status(json_out: JsonOut = False) -> None:
    """Health and restarts per service, consumer lag per group, model aliases, the last alert."""
    platform = Platform.load()
    models = streams.platform_models(platform)
    supervision = platform.supervision() if platform.running() else {}
    with ThreadPoolExecutor(8) as pool:  # everything at once: an unreachable platform answers in one deadline
        rows = {name: pool.submit(_health_row, platform, name, supervision) for name in SERVICES}
        lag = pool.submit(_try, _lag, platform)
        aliases = pool.submit(_try, _aliases, platform, models)
        alert = pool.submit(_try, _last_alert, platform, models)
        rows = [f.result(timeout=DEADLINE_S + 2) for f in rows.values()]
        (lag_rows, lag_error), (alias_map, alias_error), (last_alert, alert_error) = (
            lag.result(), aliases.result(), alert.result())
    state = platform.doc.get("state", "unknown") if platform.doc else "never started here"
    if platform.doc and state == "up" and not platform.running():
        state = "supervisor gone"
    report = {"platform": {"state": state, "home": str(platform.home), "dashboard_url": platform.dashboard_url,
                           "supervisor_pid": platform.supervisor_pid if platform.running() else None},
              "services": rows, "consumer_lag": lag_rows, "consumer_lag_error": lag_error,
              "models": alias_map or {}, "models_error": alias_error,
              "last_alert": last_alert, "last_alert_error": alert_error}
    if json_out:
        output.emit_json(report)
    else:
        output.pairs([("platform", f"{state} ({platform.home})"), ("dashboard", platform.dashboard_url)])
        output.table(["service", "address", "health", "pid", "restarts"],
                     [(r["service"], r["address"] or "(no gRPC)", r["health"], r["pid"] or "-", r["restarts"])
                      for r in rows])
        if lag_rows:
            output.table(["consumer group", "topic", "partition", "committed", "end", "lag"],
                         [(r["group"], r["topic"], r["partition"], r["committed"], r["end"], r["lag"]) for r in lag_rows])
        if alias_map:
            output.table(["model", *ALIASES], [(model, *(f"v{v}" if v else "-" for v in aliases.values()))
                                               for model, aliases in alias_map.items()])
        if last_alert:
            output.say(f"last alert: {last_alert['model_name']} v{last_alert['model_version']} {last_alert['signal']} {last_alert['statistic']} "
                       f"{last_alert['value']:.4g} > {last_alert['threshold']:.4g} at {last_alert['detected_at']}"
                       f"{' (retraining requested)' if last_alert['training_request_id'] else ''}")
        elif alert_error is None:
            output.say("last alert: none")
    down_rows = [r for r in rows if not _healthy(r)]
    if down_rows:
        first = down_rows[0]
        where = f" at {first['address']}" if first["address"] else ""
        what = "is unreachable" if first["address"] else "is not running"
        others = [r["service"] for r in down_rows[1:]]
        raise CliError(f"{first['service']}{where} {what} ({first['health']})"
                       + (f"; also {', '.join(others)}" if others else ""), code=3)


# -- logs -------------------------------------------------------------------------------------


def logs(service: Annotated[str, typer.Argument(help=f"One of {', '.join(SERVICES)}, or supervisor.")],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what is appended.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end (0: all).")] = 50
         ) -> None:
    """A service's log (its stdout and stderr)."""
    platform = Platform.load()
    if service not in (*SERVICES, "supervisor"):
        raise CliError(f"unknown service {service!r}: one of {', '.join(SERVICES)}, supervisor")
    path = platform.home / "supervisor.log" if service == "supervisor" else platform.log_path(service)
    if not path.exists():
        raise CliError(f"no log for {service} at {path} (driftline up writes it)")
    position, text = _read_new(path, 0)
    for line in text[-lines:] if lines else text:
        output.say(line)
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            position, new = _read_new(path, position)
            for line in new:
                output.say(line)
            time.sleep(0.25)
