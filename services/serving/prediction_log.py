"""Every Predict answer, as one `PredictionLog` on `driftline.predictions`.

The request path only puts a tuple on a bounded queue (never waits): building
the protobuf and producing happen on this module's thread. When the queue is
full — the broker is slow or gone — the log is dropped and counted, because
answering predictions matters more than recording them.

Logs are columnar (see serving.proto): the request's features, scores and labels
as three flat little-endian buffers, not a message per row — this thread shares
the interpreter with the request path, and at 4096 rows a request the per-row
messages cost most of serving's throughput. The monitor reads either form back
(`services.monitor.joiner.prediction_columns`).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import serving_pb2
from services.common.kafka import DeliveryError, Producer
from services.common.threads import StoppableThread

from .metrics import PREDICTION_LOGS

log = logging.getLogger(__name__)

VARIANT = "production"

_QUEUED = PREDICTION_LOGS.labels("queued")
_DROPPED = PREDICTION_LOGS.labels("dropped")
_PRODUCED = PREDICTION_LOGS.labels("produced")


class RequestIds:
    """Unique request ids, 32 hex digits like a uuid4's, without a uuid4 (and its urandom call) per
    request: a random 64-bit prefix per process, then a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


# The id of a request that came without one (Predict's, ModelInfer's without an `id`).
new_request_id = RequestIds()


@dataclass(frozen=True, slots=True)
class ServedRequest:
    request_id: str
    model_name: str
    model_version: int
    # ModelInfer's float32 [N, F] matrix (no event ids), or Predict's rows (their event ids are logged).
    rows: Sequence[serving_pb2.Row] | np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    served_at_ns: int
    # production, canary or shadow: which variant gave these scores.
    variant: str = VARIANT
    # The [N, F] matrix of Predict's `rows` when the caller has it already (saves rebuilding it).
    features: np.ndarray | None = None


def to_log(served: ServedRequest) -> serving_pb2.PredictionLog:
    """The columnar log of one request: a few buffers, whatever its number of rows.

    >>> import numpy as np
    >>> log = to_log(ServedRequest("r1", "m", 3, np.array([[1, 2], [3, 4], [5, 6]], "f4"),
    ...                            np.array([[.9, .1], [.2, .8], [.5, .5]], "f4"), np.array([0, 1, 0]), 0))
    >>> len(log.rows), log.feature_count, log.score_count, len(log.features_f32), list(log.event_ids)
    (0, 2, 2, 24, [])
    >>> np.frombuffer(log.labels_i32, "<i4").tolist(), np.frombuffer(log.scores_f32, "<f4")[1::2].tolist()
    ([0, 1, 0], [0.10000000149011612, 0.800000011920929, 0.5])
    """
    log, buffers = _header(served)
    log.features_f32, log.scores_f32, log.labels_i32 = buffers
    return log


def encode_log(served: ServedRequest) -> bytes:
    """`to_log(served).SerializeToString()`, cheaper: the small fields through protobuf, the three
    buffers appended as length-delimited fields (the wire format of a message is the concatenation
    of its fields, so this parses to the same message).

    Why: the protobuf runtime copies a large bytes field into a fresh arena and out again; with
    the fresh memory's page faults that cost ~0.5 ms of the interpreter for a 4096-row request's
    300 kB, against ~20 µs here.

    >>> import numpy as np
    >>> served = ServedRequest("r1", "m", 3, [serving_pb2.Row(values=[1, 2], event_id="e1")],
    ...                        np.array([[.9, .1]], "f4"), np.array([0]), 0, features=np.array([[1, 2]], "f4"))
    >>> serving_pb2.PredictionLog.FromString(encode_log(served)) == to_log(served)
    True
    """
    log, buffers = _header(served)
    parts = [log.SerializeToString()]
    for number, data in zip((_FEATURES_F32, _SCORES_F32, _LABELS_I32), buffers):
        if data:  # proto3 leaves empty bytes out
            parts += (_varint(number << 3 | 2), _varint(len(data)), data)
    return b"".join(parts)


_FEATURES_F32 = serving_pb2.PredictionLog.FEATURES_F32_FIELD_NUMBER
_SCORES_F32 = serving_pb2.PredictionLog.SCORES_F32_FIELD_NUMBER
_LABELS_I32 = serving_pb2.PredictionLog.LABELS_I32_FIELD_NUMBER


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(served: ServedRequest) -> tuple[serving_pb2.PredictionLog, tuple[bytes, bytes, bytes]]:
    """The log without its three buffers, and the buffers: features, scores, labels."""
    served_at = Timestamp()
    served_at.FromNanoseconds(served.served_at_ns)
    rows = served.rows
    event_ids: list[str] = []
    if isinstance(rows, np.ndarray):
        features = rows
    else:
        features = served.features
        if features is None:
            features = np.array([row.values for row in rows], dtype="<f4")
        event_ids = [row.event_id for row in rows]  # the one per-row step, and only for Predict
        if not any(event_ids):
            event_ids = []
    n = len(served.labels)
    features, scores = (a if a.ndim == 2 else a.reshape(n, a.size // n if n else 0)
                        for a in (features, served.probabilities))
    log = serving_pb2.PredictionLog(
        request_id=served.request_id, model_name=served.model_name, model_version=served.model_version,
        variant=served.variant, served_at=served_at, feature_count=features.shape[1],
        score_count=scores.shape[1], event_ids=event_ids)
    return log, (features.astype("<f4", copy=False).tobytes(), scores.astype("<f4", copy=False).tobytes(),
                 served.labels.astype("<i4", copy=False).tobytes())


class PredictionLogger(StoppableThread):
    """Produces the logs the request path hands over, on a thread of its own.

    The hand-over is a plain deque (an append is atomic under the GIL): no lock, no condition
    variable and no wake-up per request. The thread drains whatever has queued, then sleeps
    `drain_interval_s` when there is nothing; at thousands of requests a second that is one
    wake-up per few milliseconds instead of one per request, each of which made the event loop
    hand the GIL over."""

    def __init__(self, producer: Producer, topic: str, max_queued: int = 10_000,
                 drain_interval_s: float = 0.005) -> None:
        super().__init__("prediction-log")
        self.producer = producer
        self.topic = topic
        self.max_queued = max_queued
        self.drain_interval_s = drain_interval_s
        self._queue: deque[ServedRequest] = deque()
        self.dropped = 0

    def submit(self, served: ServedRequest) -> None:
        """Called on the request path: never blocks."""
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            _DROPPED.inc()
            return
        self._queue.append(served)
        _QUEUED.inc()

    def run(self) -> None:
        waiting = self._queue
        while True:
            if not waiting:
                if self.stopping:
                    return
                self.producer.poll(0)  # serve delivery callbacks while idle
                self.wait(self.drain_interval_s)
                continue
            served = waiting.popleft()
            try:
                self.producer.produce_raw(self.topic, encode_log(served), key=served.model_name)
                _PRODUCED.inc()
            except Exception:
                log.exception("could not produce a prediction log; dropping it",
                              extra={"request_id": served.request_id})
                _DROPPED.inc()

    def stop(self, timeout: float = 30.0) -> None:
        """Drains what is queued, then waits for the broker to acknowledge it."""
        super().stop(timeout)
        try:
            self.producer.flush(timeout)
        except DeliveryError:
            log.exception("some prediction logs were not delivered")
