"""`driftline up | down | status | logs`: the platform's processes (one per role, one serving
process per model: services/cli/processes.py)."""

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
from services.devstack import kafka as devstack_kafka
from services.devstack.secure import OPERATOR, SUMMARY as SECURE_SUMMARY, SecureLoop, secure_env
from services.common.schema import StreamSchema
from services.devstack.supervisor import alive, command_line, free_port, port_or_free

from . import output, streams
from .clients import ALIASES, DEADLINE_S, KAFKA_TIMEOUT_S, REPORT_DEADLINE_S, Rpc, group_lag, kafka_admin
from .errors import CliError
from .processes import SUPERVISOR, health_row, healthy, label, plan_serving, serve_new_models, wait_healthy
from .state import (
    DEFAULT_DASHBOARD_PORT, DEFAULT_PORTS, SERVICES, SERVING, WITH_GRPC, Platform, log_name, read_json,
    split_process,
)

JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
SECURE_STACK_ENV = {"DRIFTLINE_DEVSTACK_SECURE": "true"}


# -- up ---------------------------------------------------------------------------------------


def _stack(say, secure: bool = False) -> tuple[dict[str, str], list[str], "devstack.Endpoints | None"]:
    """Kafka and S3 settings, starting the local stack when no address is configured (`secure`:
    the secure local stack, always, with the ACLs of this platform's topic prefix)."""
    kafka, s3 = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP"), os.environ.get("DRIFTLINE_S3_ENDPOINT")
    if secure:
        if kafka or s3:
            raise CliError("driftline up --secure runs on the secure local stack, which it starts: unset "
                           "DRIFTLINE_KAFKA_BOOTSTRAP and DRIFTLINE_S3_ENDPOINT (a broker of your own takes the "
                           "DRIFTLINE_KAFKA_SECURITY_PROTOCOL/SASL settings and `driftline kafka acls`)")
        os.environ.update(SECURE_STACK_ENV)  # the devstack module reads its mode from the environment
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka or "", "DRIFTLINE_S3_ENDPOINT": s3 or ""}
    started: list[str] = []
    endpoints = None
    if not kafka or not s3:
        started = [name for name, st in devstack.status().items() if st["state"] == "down"]
        if started:
            say(f"starting the {'secure ' if secure else ''}local stack ({', '.join(started)}; the first run "
                "downloads and builds it)…")
        with contextlib.redirect_stdout(sys.stderr):
            try:
                endpoints = devstack.up(quiet=not started)
                if secure:
                    devstack_kafka.broker().provision(Platform.load().settings.topic_prefix)
            except devstack.DevstackError as exc:
                raise CliError(f"local stack: {exc}") from None
        env["DRIFTLINE_KAFKA_BOOTSTRAP"] = kafka or endpoints.kafka_bootstrap
        if not s3:
            env.update({"DRIFTLINE_S3_ENDPOINT": endpoints.s3_endpoint, "DRIFTLINE_S3_ACCESS_KEY": endpoints.s3_access_key,
                        "DRIFTLINE_S3_SECRET_KEY": endpoints.s3_secret_key,
                        "DRIFTLINE_S3_SECURE": "true" if endpoints.secure else "false",
                        **({"DRIFTLINE_S3_CA_FILE": endpoints.s3_ca_file} if endpoints.s3_ca_file else {})})
    return env, started, endpoints


def _secure(platform: Platform, endpoints: "devstack.Endpoints") -> dict:
    """platform.json's "secure": certificates, keys and tokens under the home (made or reused), and
    every process's variables: the shared ones, each service's own, the operator's (the CLI's)."""
    from .tokens import Issuer

    issuer = Issuer.of(platform)
    loop = SecureLoop.prepare(platform.home, mint=lambda subject, roles: issuer.create(subject, list(roles), None)[0])
    shared, own, operator = secure_env(loop, endpoints)
    return {"summary": SECURE_SUMMARY, "ca_file": str(loop.ca_file), "certs": str(loop.certs),
            "operator_token_file": str(loop.token_file(OPERATOR)), "stack_env": SECURE_STACK_ENV,
            "env": shared, "services": own, "client_env": operator}


def _describe(platform: Platform, stream_path: Path, schema: StreamSchema, stack_env: dict[str, str],
              stack_started: list[str], any_ports: bool, secure: dict | None = None) -> dict:
    """platform.json for a new run: where every process will listen and what it is started with.
    `schema` is the default stream's, and its model is the platform's (DRIFTLINE_MODEL_NAME);
    `secure` is `_secure`'s description, whose variables every process gets."""
    settings = platform.settings
    data = platform.home / "data"
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("DRIFTLINE_S3_") or k in (
            "DRIFTLINE_TOPIC_PREFIX", "DRIFTLINE_BUCKET")},
        **stack_env,
        **(secure or {}).get("env", {}),
        "DRIFTLINE_TOPIC_PREFIX": settings.topic_prefix, "DRIFTLINE_BUCKET": settings.bucket,
        "DRIFTLINE_MODEL_NAME": schema.model_name, "DRIFTLINE_STREAM": schema.stream,
        "DRIFTLINE_SCHEMA_PATH": str(stream_path), "DRIFTLINE_STREAMS_DIR": str(platform.streams_dir),
        "PYTHONUNBUFFERED": "1",
    }
    pick = (lambda default: free_port()) if any_ports else port_or_free
    roles = [name for name in SERVICES if name != SERVING]
    ports = {name: pick(DEFAULT_PORTS[name]) for name in roles if name in WITH_GRPC}
    dashboard = pick(DEFAULT_DASHBOARD_PORT)
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    # what plan_serving reads
    platform.doc = {"stream": schema.stream, "model_name": schema.model_name, **({"secure": secure} if secure else {})}
    serving = plan_serving(platform, addresses, pick)
    own = {"registry": {"DRIFTLINE_REGISTRY_DB": str(data / "registry.db"), "DRIFTLINE_RELAY_INTERVAL_S": "0.5"},
           "feature": {"DRIFTLINE_FEATURE_DATADIR": str(data / "feature")},
           "monitor": {"DRIFTLINE_DASHBOARD_PORT": str(dashboard)}}
    services = {}
    for name in roles:
        service_env = {"DRIFTLINE_GRPC_PORT": str(ports.get(name, 0)), "DRIFTLINE_METRICS_PORT": str(free_port()),
                       "DRIFTLINE_REGISTRY_ADDRESS": addresses["registry"],
                       "DRIFTLINE_FEATURE_ADDRESS": addresses["feature"],
                       "DRIFTLINE_SERVING_ADDRESS": serving.get(schema.model_name, {}).get("address", ""),
                       **own.get(name, {}), **platform.secure_env(name)}
        services[name] = {"address": addresses.get(name, ""), "log": str(platform.log_dir / log_name(name)),
                          "metrics": f"http://127.0.0.1:{service_env['DRIFTLINE_METRICS_PORT']}/metrics",
                          "env": service_env}
    return {"state": "starting", "home": str(platform.home), "started_at": output.iso(time.time() * 1000),
            "stream": schema.stream, "schema_path": str(stream_path), "model_name": schema.model_name,
            "env": env, "services": services, "serving": serving, "stack_started": stack_started,
            "dashboard_url": f"http://127.0.0.1:{dashboard}/", **({"secure": secure} if secure else {})}


def _process_table(rows: list[dict], restarts: bool = False) -> None:
    output.table(["service", "model", "address", "health", "pid", *(["restarts"] if restarts else [])],
                 [(r["service"], r["model"] or "", r["address"] or "(no gRPC)", r["health"], r["pid"] or "-",
                   *([r["restarts"]] if restarts else [])) for r in rows])


def up(stream: Annotated[list[str], typer.Option(
           "--stream", help="A stream schema file (added to the platform) or a stream's name; repeatable. "
                            "The first is the default stream (events that name none); every stream of the "
                            "platform gets a serving process for its model.")] = [],
       foreground: Annotated[bool, typer.Option(
           "--foreground", help="Stay attached and follow the logs; Ctrl-C stops everything.")] = False,
       timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be healthy.")] = 180.0,
       any_ports: Annotated[bool, typer.Option(
           "--any-ports", help="Free ports instead of the defaults (gRPC 50051-50055, dashboard 8055).")] = False,
       secure: Annotated[bool, typer.Option(
           "--secure", help="TLS with client certificates between every process, a token per service and an "
                            "admin token for this command, Kafka over SASL_SSL with a principal per service "
                            "and ACLs, S3 over https: all made (or reused) under DRIFTLINE_HOME.")] = False,
       json_out: JsonOut = False) -> None:
    """Start the platform: the local stack (unless DRIFTLINE_KAFKA_BOOTSTRAP and DRIFTLINE_S3_ENDPOINT are
    set), then ingest, feature, registry, monitor, the trainer and one serving process per model of the
    streams folder, under a supervisor that restarts any that dies. On a running platform: serves the
    streams added to the folder since."""
    platform = Platform.load()
    if platform.running():
        output.note(f"the platform in {platform.home} is already up (driftline down stops it)")
        for row in serve_new_models(platform, timeout):
            output.note(f"{label(row)} started at {row['address']} for a stream added to {platform.streams_dir}")
        return status(json_out=json_out)
    streams.seed(platform)
    chosen = [streams.resolve(platform, spec) for spec in stream] or [
        streams.find_stream(platform, os.environ.get("DRIFTLINE_STREAM") or "default")]
    stream_path, schema = chosen[0]
    stack_env, stack_started, endpoints = _stack(output.note, secure)
    described = _secure(platform, endpoints) if secure else None
    platform.doc = _describe(platform, stream_path, schema, stack_env, stack_started, any_ports, described)
    platform.log_dir.mkdir(parents=True, exist_ok=True)
    platform.supervisor_file.unlink(missing_ok=True)
    platform.save()
    with platform.supervisor_log.open("ab") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", SUPERVISOR, str(platform.home)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    platform.doc["supervisor"] = {"pid": supervisor.pid, "log": str(platform.supervisor_log)}
    platform.save()
    models = ", ".join(platform.serving_models())
    output.note(f"starting the services (default stream {schema.stream}; serving {models}; "
                f"{'secure: ' + SECURE_SUMMARY + '; ' if secure else ''}state in {platform.state_file})…")
    try:
        rows = wait_healthy(platform, None, timeout, lambda: supervisor.poll() is None)
    except BaseException:
        _down(platform, quiet=True)
        raise
    platform.doc = Platform.load().doc  # a `streams add` meanwhile may have planned another serving process
    platform.doc["state"] = "up"
    platform.save()
    if json_out:
        output.emit_json({"home": str(platform.home), "dashboard_url": platform.dashboard_url, "services": rows,
                          "secure": platform.secure_summary})
    else:
        _process_table(rows)
        output.say(f"dashboard: {platform.dashboard_url}")
        if secure:
            output.say(f"secure: {SECURE_SUMMARY}; the operator's admin token: "
                       f"{platform.doc['secure']['operator_token_file']} (every driftline verb uses it; the dashboard: "
                       "open it once with ?token=<that token>)")
        output.say("stop it with: driftline down" if not foreground else "following the logs; Ctrl-C stops everything")
    if foreground:
        _follow_until_interrupted(platform, supervisor)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _follow_until_interrupted(platform: Platform, supervisor: subprocess.Popen) -> None:
    # Ctrl-C even where SIGINT came in ignored (a shell's background job), and SIGTERM alike.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    positions: dict[str, int] = {}
    try:
        while supervisor.poll() is None:
            # Each round anew: a serving process that `streams add` started has a log too (read from its start).
            platform.doc = read_json(platform.state_file) or platform.doc
            paths = {name: platform.log_path(service, model) for name, service, model in platform.processes()}
            paths["supervisor"] = platform.supervisor_log
            first = not positions
            for name, path in paths.items():
                if name not in positions:
                    positions[name] = path.stat().st_size if first and path.exists() else 0
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
    for name, sup in platform.supervision().items():  # a process the supervisor left behind
        service = sup.get("service") or split_process(name)[0]
        how = sup.get("pid") and _stop_pid(sup["pid"], f"services.{service}", timeout=10.0)
        done.append((name, how or "stopped"))
    started = platform.doc.get("stack_started") or []
    if started:
        os.environ.update(platform.doc.get("secure", {}).get("stack_env", {}))
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
    return group_lag(kafka_admin(platform), f"{platform.settings.topic_prefix}driftline")


def _aliases(platform: Platform, models: list[str]) -> dict[str, dict[str, int | None]]:
    from .models import aliases_of

    with Rpc.of(platform, "registry") as registry:
        return {model: aliases_of(registry, model) for model in models}


def _last_alert(platform: Platform, models: list[str]) -> dict | None:
    from driftline.v1 import monitor_pb2

    alerts = []
    with Rpc.of(platform, "monitor") as monitor:
        for model in models:
            reply = monitor.call("GetDriftReport", monitor_pb2.GetDriftReportRequest(model_name=model),
                                 timeout=REPORT_DEADLINE_S)
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
    """Health and restarts per process (serving: one per model), consumer lag per group, model aliases,
    the last alert."""
    platform = Platform.load()
    models = streams.platform_models(platform)
    supervision = platform.supervision() if platform.running() else {}
    processes = platform.processes()
    # Everything at once: an unreachable platform answers within one deadline.
    with ThreadPoolExecutor(len(processes) + 3) as pool:
        rows = {name: pool.submit(health_row, platform, name, service, model, supervision)
                for name, service, model in processes}
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
                           "supervisor_pid": platform.supervisor_pid if platform.running() else None,
                           "secure": platform.secure_summary},
              "services": rows, "consumer_lag": lag_rows, "consumer_lag_error": lag_error,
              "models": alias_map or {}, "models_error": alias_error,
              "last_alert": last_alert, "last_alert_error": alert_error}
    if json_out:
        output.emit_json(report)
    else:
        output.pairs([("platform", f"{state} ({platform.home})"), ("dashboard", platform.dashboard_url),
                      ("secure", platform.secure_summary or "no (plaintext on loopback)")])
        _process_table(rows, restarts=True)
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
    down_rows = [r for r in rows if not healthy(r)]
    if down_rows:
        first = down_rows[0]
        where = f" at {first['address']}" if first["address"] else ""
        what = "is unreachable" if first["address"] else "is not running"
        others = [label(r) for r in down_rows[1:]]
        raise CliError(f"{label(first)}{where} {what} ({first['health']})"
                       + (f"; also {', '.join(others)}" if others else ""), code=3)


# -- logs -------------------------------------------------------------------------------------


def logs(service: Annotated[str, typer.Argument(help=f"One of {', '.join(SERVICES)}, or supervisor; "
                                                   "serving:MODEL for one model's serving process.")],
         model: Annotated[str | None, typer.Option(
             help="With serving: the model whose serving process (default: the default stream's).")] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what is appended.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end (0: all).")] = 50
         ) -> None:
    """A process's log (its stdout and stderr)."""
    platform = Platform.load()
    service, named = split_process(service)
    model = model or named
    if service not in (*SERVICES, "supervisor"):
        raise CliError(f"unknown service {service!r}: one of {', '.join(SERVICES)}, supervisor")
    if model and service != SERVING:
        raise CliError(f"--model is for serving (one process per model), not {service}")
    if model:
        platform.serving_address(model)  # an unknown model: the one-line error that names it
    path = platform.supervisor_log if service == "supervisor" else platform.log_path(service, model)
    what = f"serving:{model}" if model else service
    if not path.exists():
        raise CliError(f"no log for {what} at {path} (driftline up writes it)")
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
