"""`driftline.v1.Predictor` and the serving process around it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from driftline.v1 import serving_pb2, serving_pb2_grpc
from services.common.grpc_server import Service, service_name
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.runtime import ConsumerWorker, ServiceProcess

from .metrics import PREDICTED_ROWS
from .models import (
    AliasEventHandler, AliasPoller, ArtifactFetcher, ModelManager, RegistryModelSource, position_at_end,
)
from .onnx_model import LoadedModel, execution_providers
from .prediction_log import VARIANT, PredictionLogger, ServedRequest
from .settings import ServingSettings

log = logging.getLogger(__name__)

PREDICTOR = service_name(serving_pb2.DESCRIPTOR, "Predictor")


class InvalidRows(ValueError):
    pass


def rows_to_matrix(rows: Sequence[serving_pb2.Row], feature_count: int | None) -> np.ndarray:
    """float32 [N, F]; raises InvalidRows saying what was expected and what came."""
    if not rows:
        raise InvalidRows("no rows: send at least one row of features")
    expected = feature_count if feature_count is not None else len(rows[0].values)
    for i, row in enumerate(rows):
        if len(row.values) != expected:
            raise InvalidRows(f"row {i} has {len(row.values)} features; the model expects {expected}")
    return np.array([row.values for row in rows], dtype=np.float32)


class Predictor(serving_pb2_grpc.PredictorServicer):
    def __init__(self, model_name: str, models: ModelManager, prediction_log: PredictionLogger,
                 inline_max_rows: int = 64) -> None:
        self.model_name = model_name
        self.models = models
        self.prediction_log = prediction_log
        self.inline_max_rows = inline_max_rows
        self._predicted_rows = PREDICTED_ROWS.labels(model_name)

    async def Predict(self, request: serving_pb2.PredictRequest, context) -> serving_pb2.PredictResponse:
        if request.model_name and request.model_name != self.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {request.model_name!r}; this server serves {self.model_name!r}")
        # One reference for the whole request: a swap meanwhile does not touch this call.
        model = self.models.current
        if model is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        try:
            rows = rows_to_matrix(request.rows, model.feature_count)
        except InvalidRows as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Small batches take microseconds: a thread hop would cost more than it frees.
        if len(rows) <= self.inline_max_rows:
            probabilities = model.predict(rows)
        else:
            probabilities = await asyncio.to_thread(model.predict, rows)
        labels = probabilities.argmax(axis=1)
        request_id = uuid.uuid4().hex
        self._predicted_rows.inc(len(rows))
        self.prediction_log.submit(ServedRequest(
            request_id, self.model_name, model.version, request.rows, probabilities, labels, time.time_ns()))
        return serving_pb2.PredictResponse(
            model_name=self.model_name, model_version=model.version, variant=VARIANT,
            request_id=request_id,
            predictions=[serving_pb2.Prediction(scores=scores.tolist(), label=int(label))
                         for scores, label in zip(probabilities, labels)])


class ServingProcess(ServiceProcess):
    """Reports Predictor NOT_SERVING to health checks until a model is loaded."""

    def __init__(self, *args, models: ModelManager, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models = models
        self._loop: asyncio.AbstractEventLoop | None = None
        models.on_change(self._model_changed)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()
        await self._report_readiness()

    def _model_changed(self, model: LoadedModel) -> None:  # on a lifecycle thread
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._report_readiness(), self._loop)

    async def _report_readiness(self) -> None:
        # Reads the state when it runs, so the last report scheduled is always right.
        status = (health_pb2.HealthCheckResponse.SERVING if self.models.current
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.health.set(PREDICTOR, status)


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
    predictor = Predictor(settings.model_name, models, prediction_log, settings.inline_max_rows)
    log.info("serving configured", extra={"model": settings.model_name, "alias": settings.alias,
                                           "registry": settings.registry_address,
                                           "providers": execution_providers(settings.execution_provider)})
    return ServingProcess(
        "serving", settings,
        services=[Service(predictor, serving_pb2_grpc.add_PredictorServicer_to_server, PREDICTOR)],
        # Stopped in this order: no more swaps, then the last prediction logs are flushed.
        workers=[follower, poller, prediction_log],
        on_stop=[source.close],
        models=models)
