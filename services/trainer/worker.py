"""The request loop: each TrainingRequest is trained once and answered with a TrainingResult.

A request's result is stored at `training/results/<request_id>.json` before
it is published, so a redelivered or repeated request id is answered from
the store (re-published) instead of trained again. Failures the request
explains (its window never filled, its params are bad, the registry refused)
become FAILED results. An object store or broker that cannot be reached is
not the request's fault: the handler raises, and the worker tries the request
again with back-off; one that fails `max_attempts` times on its own goes to
the trainer's dead-letter topic and is answered with a FAILED result, so its
requester is not left waiting, and the requests behind it are trained. A
record that is no TrainingRequest goes to the dead-letter topic at once (it
has no request id to answer). A stop in the middle of a request leaves it
uncommitted, for the next trainer to pick up.

Two lanes read the requests, each in its own consumer group: one trains the
requests that start a regime (a first model, a drift retrain), the other the
refreshes of a regime on more rows. A drift retrain thus never queues behind
a refresh, and a refresh whose model has a newer regime is cancelled (answered
FAILED, superseded): it was asked for a concept that has gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import urllib3
from confluent_kafka import Message
from google.protobuf import json_format
from prometheus_client import Counter

from driftline.v1 import training_pb2
from services.common.deadletter import DECODE, HANDLE, ConsumedRecord, DeadLetterQueue
from services.common.kafka import Consumer, DecodeFailure, DeliveryError, Producer, decode
from services.common.objectstore import ObjectStore
from services.common.runtime import ConsumerWorker

from .dataset import Cancelled, Superseded, WindowNotFilled
from .pipeline import RegistryCallFailed, TrainingPipeline
from .train import InvalidParams

log = logging.getLogger(__name__)

Status = training_pb2.TrainingResult.Status
# Failures the request or its surroundings explain; anything else is logged with its traceback.
EXPLAINED_FAILURES = (WindowNotFilled, InvalidParams, RegistryCallFailed, Superseded)
REFRESH = training_pb2.TrainingRequest.REFRESH
# The object store or the broker out of reach: raised to the worker, which tries the request again.
TRANSIENT_FAILURES = (urllib3.exceptions.HTTPError, DeliveryError)
REQUESTS = Counter("driftline_trainer_requests_total", "Training requests handled, by outcome.", ["outcome"])


def result_key(request_id: str) -> str:
    return f"training/results/{request_id}.json"


def failed_result(request: training_pb2.TrainingRequest, error: str,
                  default_model_name: str) -> training_pb2.TrainingResult:
    result = training_pb2.TrainingResult(request_id=request.request_id,
                                         model_name=request.model_name or default_model_name,
                                         status=Status.FAILED, error=error)
    result.finished_at.GetCurrentTime()
    return result


class RequestDeadLetters(DeadLetterQueue):
    """The trainer's dead-letter topic. A request dead-lettered because handling it kept failing
    is also answered with a FAILED result (before it is dead-lettered: a crash in between brings
    the request back rather than leave its requester waiting)."""

    def __init__(self, producer: Producer, topic: str, results_topic: str, default_model_name: str) -> None:
        super().__init__(producer, topic, "trainer")
        self.results_topic = results_topic
        self.default_model_name = default_model_name

    def send(self, message: ConsumedRecord, reason: str, *, stage: str, field: str = "") -> None:
        if stage == HANDLE:
            request = decode(message.value(), training_pb2.TrainingRequest)  # it decoded before
            REQUESTS.labels("dead_lettered").inc()
            result = failed_result(request, f"dead-lettered after repeated failures: {reason}",
                                   self.default_model_name)
            self.producer.produce(self.results_topic, result, key=result.model_name)
        super().send(message, reason, stage=stage, field=field)  # flushes the result with it


class Regimes:
    """Per model, when the newest request that starts a regime was asked for (its requested_at,
    ms), as the regime lane has seen them; shared by the two lanes of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}

    def started(self, request: training_pb2.TrainingRequest) -> None:
        with self._lock:
            asked = request.requested_at.ToMilliseconds()
            self._latest[request.model_name] = max(self._latest.get(request.model_name, 0), asked)

    def supersedes(self, request: training_pb2.TrainingRequest) -> bool:
        """Whether a regime of the refresh's model was asked for after the refresh was."""
        with self._lock:
            return self._latest.get(request.model_name, 0) > request.requested_at.ToMilliseconds()


class TrainingRequestHandler:
    """Answers the requests of one lane (`refreshes`: the REFRESH requests, else all others) and
    passes over the other lane's."""

    def __init__(self, store: ObjectStore, pipeline: TrainingPipeline, producer: Producer, results_topic: str,
                 default_model_name: str, dead_letters: DeadLetterQueue, regimes: Regimes | None = None,
                 refreshes: bool = False) -> None:
        self.store = store
        self.pipeline = pipeline
        self.producer = producer
        self.results_topic = results_topic
        self.default_model_name = default_model_name
        self.dead_letters = dead_letters
        self.regimes = regimes or Regimes()
        self.refreshes = refreshes

    def handle_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self.handle(message)

    def handle(self, message: Message) -> None:
        try:
            request = decode(message.value(), training_pb2.TrainingRequest)
        except DecodeFailure as exc:
            REQUESTS.labels("undecodable").inc()
            if not self.refreshes:  # one lane dead-letters it
                self.dead_letters.send(message, str(exc), stage=DECODE)  # no request id to answer to
            return
        if (request.trigger == REFRESH) != self.refreshes:
            return  # the other lane's
        if not self.refreshes:
            self.regimes.started(request)
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
        superseded: Callable[[], bool] = (lambda: self.regimes.supersedes(request)) if self.refreshes else _never
        try:
            result = self.pipeline.run(request, superseded)
        except Cancelled:
            raise  # not answered: the batch stays uncommitted and is redelivered
        except TRANSIENT_FAILURES:
            raise  # not the request's fault: the worker tries it again
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
        return failed_result(request, error, self.default_model_name)


def _never() -> bool:
    return False


class TrainerWorker(ConsumerWorker):
    """A ConsumerWorker whose stop also interrupts a request waiting for rows."""

    def __init__(self, consumer: Consumer, handler: TrainingRequestHandler, cancelled: threading.Event, *,
                 max_attempts: int) -> None:
        # One request per poll: each takes seconds, and its offset is committed as soon as it is answered.
        super().__init__("trainer-refreshes" if handler.refreshes else "trainer", consumer, handler.handle_batch,
                         max_records=1,
                         dead_letters=handler.dead_letters, max_attempts=max_attempts)
        self.cancelled = cancelled

    def wake(self) -> None:
        self.cancelled.set()
