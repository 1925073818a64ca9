"""Every Predict answer, as one `PredictionLog` on `driftline.predictions`.

The request path only puts a tuple on a bounded queue (never waits): building
the protobuf and producing happen on this module's thread. When the queue is
full — the broker is slow or gone — the log is dropped and counted, because
answering predictions matters more than recording them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import serving_pb2
from services.common.kafka import DeliveryError, Producer

from .metrics import PREDICTION_LOGS

log = logging.getLogger(__name__)

VARIANT = "production"

_QUEUED = PREDICTION_LOGS.labels("queued")
_DROPPED = PREDICTION_LOGS.labels("dropped")
_PRODUCED = PREDICTION_LOGS.labels("produced")


@dataclass(frozen=True, slots=True)
class ServedRequest:
    request_id: str
    model_name: str
    model_version: int
    # Predict's rows (with event ids), or ModelInfer's float32 [N, F] matrix (no event ids).
    rows: Sequence[serving_pb2.Row] | np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    served_at_ns: int
    # production, canary or shadow: which variant gave these scores.
    variant: str = VARIANT


def to_log(served: ServedRequest) -> serving_pb2.PredictionLog:
    served_at = Timestamp()
    served_at.FromNanoseconds(served.served_at_ns)
    if isinstance(served.rows, np.ndarray):
        rows = [serving_pb2.PredictedRow(features=features.tolist(), scores=scores.tolist(), label=int(label))
                for features, scores, label in zip(served.rows, served.probabilities, served.labels)]
        return serving_pb2.PredictionLog(
            request_id=served.request_id, model_name=served.model_name,
            model_version=served.model_version, variant=served.variant, served_at=served_at, rows=rows)
    return serving_pb2.PredictionLog(
        request_id=served.request_id, model_name=served.model_name,
        model_version=served.model_version, variant=served.variant, served_at=served_at,
        rows=[serving_pb2.PredictedRow(event_id=row.event_id, features=row.values,
                                       scores=scores.tolist(), label=int(label))
              for row, scores, label in zip(served.rows, served.probabilities, served.labels)])


class PredictionLogger(threading.Thread):
    def __init__(self, producer: Producer, topic: str, max_queued: int = 10_000) -> None:
        super().__init__(name="prediction-log", daemon=True)
        self.producer = producer
        self.topic = topic
        self._queue: queue.Queue[ServedRequest] = queue.Queue(max_queued)
        self._stopping = threading.Event()
        self.dropped = 0

    def submit(self, served: ServedRequest) -> None:
        """Called on the request path: never blocks."""
        try:
            self._queue.put_nowait(served)
            _QUEUED.inc()
        except queue.Full:
            self.dropped += 1
            _DROPPED.inc()

    def run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                served = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.producer.poll(0)  # serve delivery callbacks while idle
                continue
            try:
                self.producer.produce(self.topic, to_log(served), key=served.model_name)
                _PRODUCED.inc()
            except Exception:
                log.exception("could not produce a prediction log; dropping it",
                              extra={"request_id": served.request_id})
                _DROPPED.inc()

    def stop(self, timeout: float = 30.0) -> None:
        """Drains what is queued, then waits for the broker to acknowledge it."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        try:
            self.producer.flush(timeout)
        except DeliveryError:
            log.exception("some prediction logs were not delivered")
