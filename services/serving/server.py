"""`driftline.v1.Predictor`, the Open Inference Protocol v2 beside it, and the serving
process around them. Both APIs share one model, one dynamic batcher and one prediction log."""

from __future__ import annotations

import asyncio
import functools
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
from services.common.deadletter import DeadLetterQueue
from services.common.errors import (
    DeadlineExceeded, Internal, InvalidArgument, NotFound, ResourceExhausted, ServiceError, Unavailable,
)
from services.common.grpc_server import Service, service_name
from services.common.kafka import Consumer, Producer, ensure_topics, position_at_end
from services.common.objectstore import ObjectStores
from services.common.registry_client import RegistryClient
from services.common.runtime import ConsumerWorker, ServiceProcess

from .batcher import Batcher, DeadlineExpired, QueueFull
from .guard import guarded
from .metrics import (
    MODEL_INFO, PREDICTED_ROWS, REQUEST_LATENCY, REQUESTS, SHADOW_REQUESTS, VARIANT_INFO, VARIANT_REQUESTS,
)
from .models import AliasEventHandler, AliasPoller, ModelCache, ModelManager, fetch_artifact
from .oip import InferenceService, check_finite, check_size
from .onnx_model import TENSORRT, LoadedModel, SessionConfig, execution_providers
from .prediction_log import PredictionLogger, ServedRequest, new_request_id
from .settings import ServingSettings
from .spool import Spool
from .traffic import CANARY, PRODUCTION, SHADOW, Route, Router

log = logging.getLogger(__name__)

PREDICTOR = service_name(serving_pb2.DESCRIPTOR, "Predictor")
INFERENCE = service_name(grpc_service_pb2.DESCRIPTOR, "GRPCInferenceService")


class InvalidRows(InvalidArgument):
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
    def __init__(self, model_name: str, models: ModelManager | Router, prediction_log: PredictionLogger,
                 batcher: Batcher | None = None,
                 max_request_rows: int = 65_536, *, shadow_batcher: Batcher | None = None,
                 max_message_bytes: int = 0) -> None:
        self.model_name = model_name
        self.router = models if isinstance(models, Router) else Router(models)
        self.models = self.router.production
        self.prediction_log = prediction_log
        self.batcher = batcher or Batcher(model_name=model_name)
        # Mirrored requests queue apart, so the shadow can never fill the callers' queue.
        self.shadow_batcher = shadow_batcher
        self.max_request_rows = max_request_rows
        self.max_message_bytes = max_message_bytes
        self._predicted_rows = PREDICTED_ROWS.labels(model_name)
        self._latency = {api: REQUEST_LATENCY.labels(model_name, api) for api in ("predict", "infer")}
        # (api, outcome) → its counter, looked up once: `.labels()` per call costs more than the count.
        self._requests: dict[tuple[str, str], object] = {}
        self._ok = {api: self._request_counter(api, "ok") for api in ("predict", "infer")}
        self._variant_requests = {v: VARIANT_REQUESTS.labels(model_name, v) for v in (PRODUCTION, CANARY)}
        self._shadow_outcomes = {o: SHADOW_REQUESTS.labels(model_name, o) for o in ("ok", "skipped", "error")}
        self._mirrors: set[asyncio.Task] = set()

    async def Predict(self, request: serving_pb2.PredictRequest, context) -> serving_pb2.PredictResponse:
        started = time.perf_counter()
        try:
            check_size(request, self.max_message_bytes)
            if request.model_name and request.model_name != self.model_name:
                raise NotFound(f"unknown model {request.model_name!r}; this server serves {self.model_name!r}")
            request_id = new_request_id()
            # One reference for the whole request: a swap meanwhile does not touch this call.
            route = self.router.route(request.request_key or request_id)
            if route is None:
                raise Unavailable("no model loaded yet")
            model = route.model
            rows = rows_to_matrix(request.rows, model.feature_count, self.max_request_rows)
            check_finite(rows)
        except ServiceError as refusal:
            self.count("predict", refusal.code, started)
            raise
        probabilities = await self.run(model, rows, context, "predict", started)
        labels = probabilities.argmax(axis=1)
        self.log(ServedRequest(request_id, self.model_name, model.version, request.rows, probabilities, labels,
                               time.time_ns(), route.variant, features=rows))
        self.mirror(route, rows, request.rows, request_id)
        self.count_ok("predict", started)
        return serving_pb2.PredictResponse(
            model_name=self.model_name, model_version=model.version, variant=route.variant,
            request_id=request_id,
            predictions=[serving_pb2.Prediction(scores=scores.tolist(), label=int(label))
                         for scores, label in zip(probabilities, labels)])

    # -- shared with the OIP service ------------------------------------------------------------

    async def run(self, model: LoadedModel, rows: np.ndarray, context, api: str, started: float) -> np.ndarray:
        """The model's probabilities through the batcher; raises the `ServiceError` that answers a failure."""
        remaining = context.time_remaining()
        try:
            return await self.batcher.predict(model, rows, remaining)
        except QueueFull as exc:
            raise self.refused(api, started, ResourceExhausted(str(exc))) from exc
        except DeadlineExpired as exc:
            raise self.refused(api, started, DeadlineExceeded(str(exc))) from exc
        except asyncio.CancelledError:
            # The caller went away (its deadline passed, or it cancelled) while the request waited.
            # The caller's own deadline timer fires a moment before ours, so "expired" has some slack.
            left = context.time_remaining()
            self.count(api, "deadline_exceeded" if left is not None and left < 0.05 else "cancelled", started)
            raise
        except Exception as exc:
            log.exception("inference failed", extra={"model": model.name, "version": model.version})
            raise self.refused(api, started, Internal(f"the model failed on this input: {exc}"),
                               outcome="error") from exc

    def log(self, served: ServedRequest) -> None:
        self._predicted_rows.inc(len(served.probabilities))
        counter = self._variant_requests.get(served.variant)
        if counter is not None:
            counter.inc()
        self.prediction_log.submit(served)

    def mirror(self, route: Route, rows: np.ndarray, logged_rows, request_id: str) -> None:
        """Sends an answered request to the shadow variant, if there is one, without waiting for it.

        The shadow's answer goes only to the prediction log (variant "shadow", same request id)."""
        if self.shadow_batcher is None:
            return
        shadow = self.router.shadow_for(route.model)
        if shadow is None:
            return
        if self.shadow_batcher.queued >= self.shadow_batcher.max_queued:
            self._shadow_outcomes["skipped"].inc()
            return
        task = asyncio.get_running_loop().create_task(self._shadow(shadow, rows, logged_rows, request_id))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow(self, model: LoadedModel, rows: np.ndarray, logged_rows, request_id: str) -> None:
        try:
            probabilities = await self.shadow_batcher.predict(model, rows)
        except QueueFull:
            self._shadow_outcomes["skipped"].inc()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            self._shadow_outcomes["error"].inc()
            log.warning("the shadow model failed on a mirrored request", exc_info=True,
                        extra={"model": model.name, "version": model.version, "request_id": request_id})
            return
        self._shadow_outcomes["ok"].inc()
        self.prediction_log.submit(ServedRequest(
            request_id, self.model_name, model.version, logged_rows, probabilities, probabilities.argmax(axis=1),
            time.time_ns(), SHADOW, features=rows))

    async def close(self, timeout: float = 5.0) -> None:
        """Lets mirrored requests finish (bounded), then stops the shadow queue."""
        if self._mirrors:
            await asyncio.wait(list(self._mirrors), timeout=timeout)
        for task in list(self._mirrors):
            task.cancel()
        if self.shadow_batcher is not None:
            await self.shadow_batcher.close()

    def count(self, api: str, code: grpc.StatusCode | str, started: float) -> None:
        outcome = code if isinstance(code, str) else code.name.lower()
        counter = self._requests.get((api, outcome)) or self._request_counter(api, outcome)
        counter.inc()
        self._latency[api].observe(time.perf_counter() - started)

    def count_ok(self, api: str, started: float) -> None:
        self._ok[api].inc()
        self._latency[api].observe(time.perf_counter() - started)

    def _request_counter(self, api: str, outcome: str):
        counter = self._requests[(api, outcome)] = REQUESTS.labels(self.model_name, api, outcome)
        return counter

    def refused(self, api: str, started: float, error: ServiceError, outcome: str | None = None) -> ServiceError:
        """Counts a refused call (by its code, or `outcome`); returns the error, for the caller to raise."""
        self.count(api, outcome or error.code, started)
        return error


def server_version() -> str:
    try:
        return importlib.metadata.version("driftline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class ServingProcess(ServiceProcess):
    """Reports Predictor NOT_SERVING to health checks until a model is loaded."""

    def __init__(self, *args, models: ModelManager, batcher: Batcher | None = None,
                 variants: list[ModelManager] = (), predictor: Predictor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models = models
        self.batcher = batcher
        self.predictor = predictor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: dict[str, tuple[str, ...]] = {}
        for manager in {id(m): m for m in (models, *variants)}.values():
            manager.on_change(self._model_changed)

    async def finish_calls(self) -> None:
        # In-flight calls finish (through the batcher) first, then mirrored shadow requests,
        # and only then the workers stop: the prediction log flushes what all of them logged.
        if self.predictor is not None:
            await self.predictor.close()
        if self.batcher is not None:
            await self.batcher.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()
        await self._report_readiness()

    def _model_changed(self, manager: ModelManager, model: LoadedModel | None) -> None:  # on a lifecycle thread
        variant = manager.variant
        previous = self._info.pop(variant, None)
        if previous is not None:
            VARIANT_INFO.labels(*previous).set(0)
            if variant == PRODUCTION:
                MODEL_INFO.labels(previous[0], *previous[2:]).set(0)
        if model is not None:
            self._info[variant] = (model.name, variant, str(model.version), model.provider)
            VARIANT_INFO.labels(*self._info[variant]).set(1)
            if variant == PRODUCTION:
                MODEL_INFO.labels(model.name, str(model.version), model.provider).set(1)
        if variant == PRODUCTION and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._report_readiness(), self._loop)

    async def _report_readiness(self) -> None:
        # Reads the state when it runs, so the last report scheduled is always right.
        status = (health_pb2.HealthCheckResponse.SERVING if self.models.current
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in (PREDICTOR, INFERENCE):
            await self.grpc.health.set(name, status)


def session_config(settings: ServingSettings) -> SessionConfig:
    providers = tuple(execution_providers(settings.execution_provider))
    options = []
    if TENSORRT in providers:
        trt = {"trt_fp16_enable": "True" if settings.trt_fp16 else "False"}
        if settings.trt_engine_cache_dir:
            trt.update(trt_engine_cache_enable="True", trt_engine_cache_path=settings.trt_engine_cache_dir)
        options.append((TENSORRT, tuple(trt.items())))
    return SessionConfig(providers=providers, intra_op_threads=settings.intra_op_threads,
                         inter_op_threads=settings.inter_op_threads, spin_threads=settings.ort_spin_threads,
                         provider_options=tuple(options))


def warmup_rows(settings: ServingSettings) -> tuple[int, ...]:
    return tuple(sorted({*settings.warmup_rows, settings.max_batch_rows} - {0}))


async def build(settings: ServingSettings) -> ServingProcess:
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap, [topics.registry_events, topics.predictions,
                                             topics.dead_letters("serving")],
                  partitions=settings.topic_partitions, replication=settings.topic_replication,
                  client_config=settings.kafka_client_config())
    source = RegistryClient(settings.registry_address, settings.registry_timeout_s, settings)
    config = session_config(settings)
    cache = ModelCache(settings.keep_previous_models)
    fetch = functools.partial(fetch_artifact, ObjectStores.from_settings(settings))

    def manager(alias: str, variant: str) -> ModelManager:
        return ModelManager(settings.model_name, alias, source, fetch, config=config, variant=variant,
                            optional=variant != PRODUCTION, warmup_rows=warmup_rows(settings), cache=cache)

    models = manager(settings.alias, PRODUCTION)
    canary = manager(settings.canary_alias, CANARY) if settings.canary_alias else None
    shadow = manager(settings.shadow_alias, SHADOW) if settings.shadow_alias else None
    managers = [m for m in (models, canary, shadow) if m is not None]
    if len({m.alias for m in managers}) != len(managers):
        raise ValueError(f"the serving, canary and shadow aliases must differ: {[m.alias for m in managers]}")
    router = Router(models, canary, shadow, settings.canary_weight)

    # Position on the events topic before the first GetAlias (the poller's), so no move is missed.
    # A group of its own (every instance reads every event), named in serving's Kafka ACLs by prefix.
    events = Consumer(settings.kafka_bootstrap, f"{settings.topic_prefix}driftline-serving-{uuid.uuid4().hex}",
                      [topics.registry_events], from_beginning=False, instance_id=settings.instance_id,
                      session_timeout_ms=settings.kafka_session_timeout_ms, config=settings.kafka_client_config())
    position_at_end(events, topics.registry_events)
    dead_letters = DeadLetterQueue(Producer(settings.kafka_bootstrap, config=settings.kafka_client_config()),
                                   topics.dead_letters("serving"), "serving")
    follower = ConsumerWorker("registry-events", events, AliasEventHandler(managers, dead_letters),
                              max_records=100, dead_letters=dead_letters, max_attempts=settings.max_attempts)
    poller = AliasPoller(managers, settings.alias_retry_s, settings.alias_resync_s)

    spool = Spool(settings.spool_directory(), settings.prediction_spool_max_bytes,
                  fsync_interval_s=settings.prediction_spool_fsync_s)
    prediction_log = PredictionLogger(settings.kafka_bootstrap, topics.predictions, spool,
                                      max_queued=settings.prediction_log_queue,
                                      delivery_timeout_ms=settings.prediction_log_delivery_timeout_ms,
                                      client_config=settings.kafka_client_config())
    batcher = Batcher(max_batch_rows=settings.max_batch_rows,
                      max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                      max_queued=settings.max_queued_requests, workers=settings.batch_workers,
                      model_name=settings.model_name, inline_max_s=settings.inline_max_us / 1e6)
    shadow_batcher = None
    if shadow is not None:
        shadow_batcher = Batcher(max_batch_rows=settings.max_batch_rows,
                                 max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                                 max_queued=max(1, settings.shadow_max_queued), workers=1,
                                 model_name=settings.model_name, inline_max_s=settings.inline_max_us / 1e6)
    predictor = Predictor(settings.model_name, router, prediction_log,
                          batcher, settings.max_request_rows, shadow_batcher=shadow_batcher,
                          max_message_bytes=settings.max_message_bytes)
    inference = InferenceService(predictor, server_version())
    receive_limit = max(settings.receive_limit, settings.max_message_bytes)
    log.info("serving configured", extra={"model": settings.model_name, "alias": settings.alias,
                                           "canary_alias": settings.canary_alias,
                                           "canary_weight": settings.canary_weight,
                                           "shadow_alias": settings.shadow_alias,
                                           "registry": settings.registry_address,
                                           "providers": list(config.providers),
                                           "intra_op_threads": settings.intra_op_threads,
                                           "inter_op_threads": settings.inter_op_threads,
                                           "max_batch_rows": settings.max_batch_rows,
                                           "max_queue_delay_ms": settings.max_queue_delay_ms,
                                           "max_queued_requests": settings.max_queued_requests,
                                           "max_message_bytes": settings.max_message_bytes})
    return ServingProcess(
        "serving", settings,
        # Predict and ModelInfer count themselves (driftline_serving_requests_total, by outcome), so the
        # common interceptor leaves them alone: no double count, no second timing per call.
        services=[Service(predictor, guarded(serving_pb2_grpc.add_PredictorServicer_to_server), PREDICTOR,
                          own_metrics=("Predict",)),
                  Service(inference, guarded(grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server),
                          INFERENCE, own_metrics=("ModelInfer",))],
        # Stopped in this order: no more swaps, then the last prediction logs are flushed.
        workers=[follower, poller, prediction_log],
        on_stop=[source.close],
        # gRPC reads messages up to this size, so a message over max_message_bytes is refused by the
        # servicer with a reason (INVALID_ARGUMENT), not by gRPC with a bare RESOURCE_EXHAUSTED.
        grpc_options=[("grpc.max_receive_message_length", receive_limit),
                      ("grpc.max_send_message_length", receive_limit)],
        models=models, batcher=batcher, variants=managers, predictor=predictor)
