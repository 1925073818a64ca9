"""`driftline train | drift | predict`: ask for a model, see how it drifts, ask it a question.

>>> parse_since("1700000000000")
1700000000000
>>> parse_since("2023-11-14T22:13:20Z")
1700000000000
>>> parse_since("90s", now_ms=100_000)
10000
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated

import typer

from driftline.v1 import monitor_pb2, registry_pb2, serving_pb2, serving_pb2_grpc, training_pb2

from . import output, streams
from .clients import REPORT_DEADLINE_S, Rpc, producer, read_topic, require_trainer
from .errors import CliError
from .state import Platform

JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now_ms: int | None = None) -> int:
    """Epoch milliseconds from epoch ms, an ISO-8601 time (UTC unless it says) or a span ago (90s, 10m, 2h, 1d)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if match := _RELATIVE.match(text):
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - int(float(match[1]) * _UNITS[match[2]] * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r}: not epoch milliseconds, an ISO-8601 time or a span like 10m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}: expected KEY=VALUE (e.g. epochs=5)")
        params[key] = value
    return params


def _wait_result(platform: Platform, request_id: str, timeout: float) -> training_pb2.TrainingResult:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in read_topic(platform, platform.topics.training_results, timeout_s=5.0):
            result = training_pb2.TrainingResult()
            result.ParseFromString(msg.value() or b"")
            if result.request_id == request_id:
                return result
        time.sleep(1.0)
    raise CliError(f"no training result for request {request_id} after {timeout:g}s (driftline logs trainer)")


def train(stream: Annotated[str, typer.Option(help="The stream to train on.")],
          since: Annotated[str | None, typer.Option(
              help="Window start: epoch ms, ISO-8601, or a span ago (10m, 2h). Default: all of it.")] = None,
          rows: Annotated[int, typer.Option(help="The fewest labelled rows to wait for (0: the trainer's default).")] = 0,
          model: Annotated[str | None, typer.Option(help="The model's name (default: the stream's).")] = None,
          param: Annotated[list[str], typer.Option(help="A training parameter, KEY=VALUE (epochs, seed, …); repeatable.")] = [],
          wait: Annotated[bool, typer.Option(help="Wait for the trainer's result and print it.")] = False,
          timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait.")] = 300.0,
          json_out: JsonOut = False) -> None:
    """Ask the trainer for a model: publish a TrainingRequest on the training requests topic."""
    platform = Platform.load()
    _, schema = streams.find_stream(platform, stream)
    require_trainer(platform)
    name = model or schema.model_name
    request = training_pb2.TrainingRequest(request_id=f"cli-{uuid.uuid4().hex}", model_name=name, stream=schema.stream,
                                           min_rows=rows, reason="driftline train", params=_params(param))
    if since is not None:
        request.window_start.FromMilliseconds(parse_since(since))
    request.requested_at.GetCurrentTime()
    kafka = producer(platform)
    kafka.produce(platform.topics.training_requests, request, key=name)
    kafka.flush(10)
    if not wait:
        return output.emit_json({"request_id": request.request_id}) if json_out else output.say(request.request_id)
    output.note(f"training requested ({request.request_id}); waiting for the result…")
    result = _wait_result(platform, request.request_id, timeout)
    info = output.plain(result)
    if json_out:
        output.emit_json(info)
    else:
        output.pairs([("request", result.request_id), ("status", info["status"]), ("model", result.model_name),
                      ("version", result.version or "-"), ("dataset", result.dataset_id or "-"),
                      ("promoted", result.promoted), ("error", result.error or "-"),
                      *((k, f"{v:.4g}") for k, v in sorted(result.metrics.items()))])
    if result.status != training_pb2.TrainingResult.SUCCEEDED:
        raise CliError(f"training {result.request_id} failed: {result.error}")


def drift(model: Annotated[str | None, typer.Argument(help="The model (default: the platform's).")] = None,
          version: Annotated[int, typer.Option(help="Only this version (0: every version the monitor tracks).")] = 0,
          json_out: JsonOut = False) -> None:
    """The monitor's drift report: accuracy, concept drift and per-feature statistics."""
    platform = Platform.load()
    name = model or streams.platform_models(platform)[0]
    with Rpc.of(platform, "monitor") as monitor:
        reply = monitor.call("GetDriftReport", monitor_pb2.GetDriftReportRequest(model_name=name, model_version=version),
                             timeout=REPORT_DEADLINE_S)
    reports = [output.plain(r) for r in reply.reports]
    if json_out:
        return output.emit_json(reports)
    if not reports:
        return output.say(f"no drift report for {name} yet (the monitor reports once labelled predictions arrive)")
    for r in reply.reports:
        output.pairs([("model", f"{r.model_name} v{r.model_version}{' (production)' if r.production else ''}"),
                      ("samples", r.samples), ("rolling accuracy", f"{r.rolling_accuracy:.4f}"),
                      ("concept drift", r.concept_drift), ("prediction drift", r.prediction_drift),
                      ("error CUSUM", f"{r.error_cusum:.3g} / {r.error_cusum_threshold:.3g}"),
                      ("computed at", output.iso(r.computed_at))])
        output.table(["feature", "psi", "ks", "js", "window", "drifted"],
                     [(f.feature, f"{f.psi:.4f}", f"{f.ks:.4f}", f"{f.js:.4f}" if f.categorical else "-",
                       f.window, "yes" if f.drifted else "") for f in r.features])
        for alert in r.alerts:
            output.say(f"alert: {alert.signal} {alert.statistic} {alert.value:.4g} > {alert.threshold:.4g} at "
                       f"{output.iso(alert.detected_at)} {alert.description}")


def predict(model: Annotated[str, typer.Argument(help="The model to ask.")],
            row: Annotated[str, typer.Option(help='The features as a JSON object: \'{"salary": 1.2, …}\'.')],
            json_out: JsonOut = False) -> None:
    """Ask the model's serving process for one prediction; the row's names are put in the model's
    feature order."""
    platform = Platform.load()
    address = platform.serving_address(model)  # an unknown model is refused here, naming it
    try:
        values = json.loads(row)
    except json.JSONDecodeError as exc:
        raise CliError(f"--row: not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(values, dict):
        raise CliError("--row: expected a JSON object of feature names to numbers")
    with Rpc.of(platform, "registry") as registry:
        version = registry.call("GetAlias", registry_pb2.GetAliasRequest(name=model, alias="production"))
    names = list(version.feature_names)
    missing = [n for n in names if n not in values]
    unknown = sorted(set(values) - set(names))
    if missing or unknown:
        raise CliError(f"--row does not fit {model} v{version.version}: "
                       + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                 unknown and f"not features: {', '.join(unknown)}"])))
    try:
        vector = [float(values[n]) for n in names]
    except (TypeError, ValueError):
        bad = next(n for n in names if not isinstance(values[n], (int, float)))
        raise CliError(f"--row: {bad} is {values[bad]!r}, not a number") from None
    with Rpc(f"serving ({model})", address, serving_pb2_grpc.PredictorStub) as serving:
        reply = serving.call("Predict", serving_pb2.PredictRequest(
            model_name=model, rows=[serving_pb2.Row(values=vector)]))
    prediction = reply.predictions[0]
    info = {"model_name": reply.model_name, "model_version": reply.model_version, "variant": reply.variant,
            "label": prediction.label, "scores": [round(s, 6) for s in prediction.scores],
            "request_id": reply.request_id}
    if json_out:
        return output.emit_json(info)
    output.pairs([("model", f"{reply.model_name} v{reply.model_version} ({reply.variant or 'production'})"),
                  ("label", prediction.label), ("scores", ", ".join(f"{s:.4f}" for s in prediction.scores))])
