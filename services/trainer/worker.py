"""The request loop: each TrainingRequest is trained once and answered with a TrainingResult.

A request's result is stored at `training/results/<request_id>.json` before
it is published, so a redelivered or repeated request id is answered from
the store (re-published) instead of trained again. Failures become FAILED
results; only a stop in the middle of a request leaves it uncommitted, for
the next trainer to pick up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from confluent_kafka import Message
from google.protobuf import json_format
from prometheus_client import Counter

from driftline.v1 import training_pb2
from services.common.kafka import Consumer, DecodeFailure, Producer, decode
from services.common.objectstore import ObjectStore
from services.common.runtime import ConsumerWorker

from .dataset import Cancelled, WindowNotFilled
from .pipeline import RegistryCallFailed, TrainingPipeline
from .train import InvalidParams

log = logging.getLogger(__name__)

Status = training_pb2.TrainingResult.Status
# Failures the request or its surroundings explain; anything else is logged with its traceback.
EXPLAINED_FAILURES = (WindowNotFilled, InvalidParams, RegistryCallFailed)
REQUESTS = Counter("driftline_trainer_requests_total", "Training requests handled, by outcome.", ["outcome"])


def result_key(request_id: str) -> str:
    return f"training/results/{request_id}.json"


class TrainingRequestHandler:
    def __init__(self, store: ObjectStore, pipeline: TrainingPipeline, producer: Producer, results_topic: str,
                 default_model_name: str) -> None:
        self.store = store
        self.pipeline = pipeline
        self.producer = producer
        self.results_topic = results_topic
        self.default_model_name = default_model_name

    def handle_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self.handle(message)

    def handle(self, message: Message) -> None:
        try:
            request = decode(message.value(), training_pb2.TrainingRequest)
        except DecodeFailure as exc:
            # No request id to answer to; skipping is the only option, loudly.
            REQUESTS.labels("undecodable").inc()
            log.error("undecodable training request skipped", extra={
                "partition": message.partition(), "offset": message.offset(), "error": str(exc)})
            return
        result = self._answer(request)
        self.producer.produce(self.results_topic, result, key=result.model_name)
        self.producer.flush()  # before the worker commits the request

    def _answer(self, request: training_pb2.TrainingRequest) -> training_pb2.TrainingResult:
        if not request.request_id:
            REQUESTS.labels("invalid").inc()
            return self._failed(request, "request_id is required")
        key = result_key(request.request_id)
        if self.store.exists(key):
            REQUESTS.labels("duplicate").inc()
            log.info("duplicate request: re-publishing its result", extra={"request_id": request.request_id})
            return json_format.ParseDict(self.store.get_json(key), training_pb2.TrainingResult())
        log.info("training", extra={"request_id": request.request_id, "model": request.model_name,
                                    "reason": request.reason, "min_rows": request.min_rows})
        try:
            result = self.pipeline.run(request)
        except Cancelled:
            raise  # not answered: the batch stays uncommitted and is redelivered
        except Exception as exc:
            if isinstance(exc, EXPLAINED_FAILURES):
                log.warning("training failed", extra={"request_id": request.request_id, "error": str(exc)})
            else:
                log.exception("training failed", extra={"request_id": request.request_id})
            result = self._failed(request, f"{type(exc).__name__}: {exc}")
        REQUESTS.labels(Status.Name(result.status).lower()).inc()
        # Remembered first, published second: a crash in between re-publishes, never retrains.
        self.store.put_json(key, json_format.MessageToDict(result))
        return result

    def _failed(self, request: training_pb2.TrainingRequest, error: str) -> training_pb2.TrainingResult:
        result = training_pb2.TrainingResult(request_id=request.request_id,
                                             model_name=request.model_name or self.default_model_name,
                                             status=Status.FAILED, error=error)
        result.finished_at.GetCurrentTime()
        return result


class TrainerWorker(ConsumerWorker):
    """A ConsumerWorker whose stop also interrupts a request waiting for rows."""

    def __init__(self, consumer: Consumer, handler: TrainingRequestHandler, cancelled: threading.Event) -> None:
        # One request per poll: each takes seconds, and its offset is committed as soon as it is answered.
        super().__init__("trainer", consumer, handler.handle_batch, max_records=1)
        self.cancelled = cancelled

    def wake(self) -> None:
        self.cancelled.set()
