"""`driftline.v1.Predictor`, the Open Inference Protocol v2 beside it, and the serving
process around them. Both APIs share one model, one dynamic batcher and one prediction log."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
import uuid
from collections.abc import Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from driftline.v1 import serving_pb2, serving_pb2_grpc
from inference import grpc_service_pb2, grpc_service_pb2_grpc
from services.common.grpc_server import Service, service_name
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.runtime import ConsumerWorker, ServiceProcess

from .batcher import Batcher, DeadlineExpired, QueueFull
from .metrics import MODEL_INFO, PREDICTED_ROWS, REQUEST_LATENCY, REQUESTS
from .models import (
    AliasEventHandler, AliasPoller, ArtifactFetcher, ModelManager, RegistryModelSource, position_at_end,
)
from .oip import InferenceService, Refusal, check_finite
from .onnx_model import LoadedModel, execution_providers
from .prediction_log import VARIANT, PredictionLogger, ServedRequest
from .settings import ServingSettings

log = logging.getLogger(__name__)

PREDICTOR = service_name(serving_pb2.DESCRIPTOR, "Predictor")
INFERENCE = service_name(grpc_service_pb2.DESCRIPTOR, "GRPCInferenceService")


class InvalidRows(ValueError):
    pass


def rows_to_matrix(rows: Sequence[serving_pb2.Row], feature_count: int | None,
                   max_rows: int | None = None) -> np.ndarray:
    """float32 [N, F]; raises InvalidRows saying what was expected and what came."""
    if not rows:
        raise InvalidRows("no rows: send at least one row of features")
    if max_rows is not None and len(rows) > max_rows:
        raise InvalidRows(f"{len(rows)} rows in one request; at most {max_rows} are accepted")
    expected = feature_count if feature_count is not None else len(rows[0].values)
    for i, row in enumerate(rows):
        if len(row.values) != expected:
            raise InvalidRows(f"row {i} has {len(row.values)} features; the model expects {expected}")
    return np.array([row.values for row in rows], dtype=np.float32)


class Predictor(serving_pb2_grpc.PredictorServicer):
    def __init__(self, model_name: str, models: ModelManager, prediction_log: PredictionLogger,
                 inline_max_rows: int = 64, batcher: Batcher | None = None,
                 max_request_rows: int = 65_536) -> None:
        self.model_name = model_name
        self.models = models
        self.prediction_log = prediction_log
        self.inline_max_rows = inline_max_rows  # kept for compatibility; the batcher runs every batch
        self.batcher = batcher or Batcher(model_name=model_name)
        self.max_request_rows = max_request_rows
        self._predicted_rows = PREDICTED_ROWS.labels(model_name)
        self._latency = {api: REQUEST_LATENCY.labels(model_name, api) for api in ("predict", "infer")}

    async def Predict(self, request: serving_pb2.PredictRequest, context) -> serving_pb2.PredictResponse:
        started = time.perf_counter()
        if request.model_name and request.model_name != self.model_name:
            await self._refuse(context, "predict", started, grpc.StatusCode.NOT_FOUND,
                               f"unknown model {request.model_name!r}; this server serves {self.model_name!r}")
        # One reference for the whole request: a swap meanwhile does not touch this call.
        model = self.models.current
        if model is None:
            await self._refuse(context, "predict", started, grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        try:
            rows = rows_to_matrix(request.rows, model.feature_count, self.max_request_rows)
            check_finite(rows)
        except InvalidRows as exc:
            await self._refuse(context, "predict", started, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Refusal as refusal:
            await self._refuse(context, "predict", started, refusal.code, refusal.message)
        probabilities = await self.run(model, rows, context, "predict", started)
        labels = probabilities.argmax(axis=1)
        request_id = uuid.uuid4().hex
        self.log(ServedRequest(
            request_id, self.model_name, model.version, request.rows, probabilities, labels, time.time_ns()))
        self.count("predict", grpc.StatusCode.OK, started)
        return serving_pb2.PredictResponse(
            model_name=self.model_name, model_version=model.version, variant=VARIANT,
            request_id=request_id,
            predictions=[serving_pb2.Prediction(scores=scores.tolist(), label=int(label))
                         for scores, label in zip(probabilities, labels)])

    # -- shared with the OIP service ------------------------------------------------------------

    async def run(self, model: LoadedModel, rows: np.ndarray, context, api: str, started: float) -> np.ndarray:
        """The model's probabilities through the batcher; aborts the call with the right code on failure."""
        remaining = context.time_remaining()
        try:
            return await self.batcher.predict(model, rows, remaining)
        except QueueFull as exc:
            await self._refuse(context, api, started, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except DeadlineExpired as exc:
            await self._refuse(context, api, started, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except asyncio.CancelledError:
            # The caller went away (its deadline passed, or it cancelled) while the request waited.
            # The caller's own deadline timer fires a moment before ours, so "expired" has some slack.
            left = context.time_remaining()
            self.count(api, "deadline_exceeded" if left is not None and left < 0.05 else "cancelled", started)
            raise
        except Exception as exc:
            log.exception("inference failed", extra={"model": model.name, "version": model.version})
            await self._refuse(context, api, started, grpc.StatusCode.INTERNAL,
                               f"the model failed on this input: {exc}", outcome="error")

    def log(self, served: ServedRequest) -> None:
        self._predicted_rows.inc(len(served.probabilities))
        self.prediction_log.submit(served)

    def count(self, api: str, code: grpc.StatusCode | str, started: float) -> None:
        outcome = code if isinstance(code, str) else code.name.lower()
        REQUESTS.labels(self.model_name, api, outcome).inc()
        self._latency[api].observe(time.perf_counter() - started)

    async def _refuse(self, context, api: str, started: float, code: grpc.StatusCode, message: str,
                      outcome: str | None = None) -> None:
        self.count(api, outcome or code, started)
        await context.abort(code, message)


def server_version() -> str:
    try:
        return importlib.metadata.version("driftline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class ServingProcess(ServiceProcess):
    """Reports Predictor NOT_SERVING to health checks until a model is loaded."""

    def __init__(self, *args, models: ModelManager, batcher: Batcher | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models = models
        self.batcher = batcher
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: tuple[str, str, str] | None = None
        models.on_change(self._model_changed)

    async def stop(self) -> None:
        await super().stop()  # in-flight calls finish (through the batcher) first
        if self.batcher is not None:
            await self.batcher.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()
        await self._report_readiness()

    def _model_changed(self, model: LoadedModel) -> None:  # on a lifecycle thread
        if self._info is not None:
            MODEL_INFO.labels(*self._info).set(0)
        self._info = (model.name, str(model.version), model.provider)
        MODEL_INFO.labels(*self._info).set(1)
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._report_readiness(), self._loop)

    async def _report_readiness(self) -> None:
        # Reads the state when it runs, so the last report scheduled is always right.
        status = (health_pb2.HealthCheckResponse.SERVING if self.models.current
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in (PREDICTOR, INFERENCE):
            await self.grpc.health.set(name, status)


async def build(settings: ServingSettings) -> ServingProcess:
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap, [topics.registry_events, topics.predictions],
                  partitions=settings.topic_partitions, replication=settings.topic_replication)
    source = RegistryModelSource(settings.registry_address, settings.registry_timeout_s)
    models = ModelManager(settings.model_name, settings.alias, source, ArtifactFetcher(settings).fetch,
                          execution_providers(settings.execution_provider))

    # Position on the events topic before the first GetAlias (the poller's), so no move is missed.
    events = Consumer(settings.kafka_bootstrap, f"serving-{uuid.uuid4().hex}", [topics.registry_events],
                      from_beginning=False)
    position_at_end(events, topics.registry_events)
    follower = ConsumerWorker("registry-events", events, AliasEventHandler(models), max_records=100)
    poller = AliasPoller(models, settings.alias_retry_s, settings.alias_resync_s)

    prediction_log = PredictionLogger(Producer(settings.kafka_bootstrap), topics.predictions,
                                      settings.prediction_log_queue)
    batcher = Batcher(max_batch_rows=settings.max_batch_rows,
                      max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                      max_queued=settings.max_queued_requests, workers=settings.batch_workers,
                      model_name=settings.model_name)
    predictor = Predictor(settings.model_name, models, prediction_log, settings.inline_max_rows,
                          batcher, settings.max_request_rows)
    inference = InferenceService(predictor, server_version())
    log.info("serving configured", extra={"model": settings.model_name, "alias": settings.alias,
                                           "registry": settings.registry_address,
                                           "providers": execution_providers(settings.execution_provider),
                                           "max_batch_rows": settings.max_batch_rows,
                                           "max_queue_delay_ms": settings.max_queue_delay_ms,
                                           "max_queued_requests": settings.max_queued_requests})
    return ServingProcess(
        "serving", settings,
        services=[Service(predictor, serving_pb2_grpc.add_PredictorServicer_to_server, PREDICTOR),
                  Service(inference, grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                          INFERENCE)],
        # Stopped in this order: no more swaps, then the last prediction logs are flushed.
        workers=[follower, poller, prediction_log],
        on_stop=[source.close],
        models=models, batcher=batcher)
