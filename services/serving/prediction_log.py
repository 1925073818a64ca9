"""Every Predict answer, as one `PredictionLog` on `driftline.predictions`.

The request path only puts a tuple on a bounded queue (never waits): building
the protobuf and producing happen on this module's thread. What the broker
cannot take (it is slow or gone) waits in a bounded spool on local disk
(services/serving/spool.py) and is replayed, in order, when the broker answers
again; a log is dropped, and counted by reason, only when the queue or the
spool's quota is full, because answering predictions matters more than
recording them.

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
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import KafkaError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import serving_pb2
from services.common.kafka import Producer
from services.common.threads import Backoff, StoppableThread

from .metrics import DROPPED_LOGS, PREDICTION_LOGS, SPOOL_BYTES
from .spool import Segment, Spool

log = logging.getLogger(__name__)

VARIANT = "production"

_QUEUED = PREDICTION_LOGS.labels("queued")
_DROPPED = PREDICTION_LOGS.labels("dropped")
_PRODUCED = PREDICTION_LOGS.labels("produced")
_SPOOLED = PREDICTION_LOGS.labels("spooled")
_REPLAYED = PREDICTION_LOGS.labels("replayed")


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


class _Deliveries:
    """The producer's delivery callback and what it learnt, kept apart from the logger so the
    producer's client (which holds the callback) does not hold the logger in a cycle.

    Every report arrives on the logger's thread (inside its `poll`/`produce`), so no lock."""

    __slots__ = ("in_flight", "in_flight_bytes", "failed", "replaying", "last_report")

    def __init__(self) -> None:
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.failed: list[tuple[bytes, bytes]] = []  # (key, value) of records the broker did not take
        self.replaying = False  # the records in flight come from the spool
        self.last_report = time.monotonic()

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        self.in_flight -= 1
        self.in_flight_bytes -= len(msg)  # the value's length, without copying it out
        self.last_report = time.monotonic()
        if err is None:
            (_REPLAYED if self.replaying else _PRODUCED).inc()
        else:
            self.failed.append((msg.key() or b"", msg.value() or b""))


DIRECT = "direct"  # produced as they come
SPOOLING = "spooling"  # appended to the spool, which is replayed in order before producing directly again


class PredictionLogger(StoppableThread):
    """Produces the logs the request path hands over, on a thread of its own, spooling to disk
    what the broker cannot take.

    The hand-over is a plain deque (an append is atomic under the GIL): no lock, no condition
    variable and no wake-up per request. The thread drains whatever has queued, then sleeps
    `drain_interval_s` when there is nothing; at thousands of requests a second that is one
    wake-up per few milliseconds instead of one per request, each of which made the event loop
    hand the GIL over.

    While the broker keeps up, logs are produced directly. A delivery that fails (the producer
    gives up on a record after `delivery_timeout_ms`), no delivery report for `stall_s` while
    records wait, or more than `max_in_flight` records (or `max_in_flight_bytes`) unacknowledged,
    switch the logger to spooling: the failed records and every new log go to the spool. Once the
    records in flight have settled, the spool is replayed oldest segment first; a segment is deleted
    when each of its records is acknowledged, and a segment with any failure is replayed whole again
    after a back-off (at least once: the request id de-duplicates downstream). When the spool is
    empty the logger produces directly again. A spool left by an earlier process is replayed first.

    Lost without a count only: the logs in the deque and in the producer's memory when the process
    is killed (at most `stall_s` of traffic, bounded by `max_in_flight`, while the broker is away;
    milliseconds' worth while it answers). Dropped and counted by reason: a full deque
    (`queue_full`), a log past the spool's quota (`spool_full`), a failed write to it
    (`spool_error`), the unreadable tail of a spool segment (`corrupt`).
    """

    def __init__(self, bootstrap: str, topic: str, spool: Spool, *, max_queued: int = 10_000,
                 drain_interval_s: float = 0.005, delivery_timeout_ms: int = 5000, stall_s: float = 1.0,
                 max_in_flight: int = 10_000, max_in_flight_bytes: int = 64 << 20,
                 client_config: Mapping[str, object] | None = None) -> None:
        super().__init__("prediction-log")
        self._deliveries = _Deliveries()
        self.producer = Producer(bootstrap, config={
            **(client_config or {}),
            # Replaces the wrapper's own callback: each failed record is spooled here, not raised.
            "on_delivery": self._deliveries,
            # A record the broker has not taken by then comes back as failed and goes to the spool,
            # instead of waiting in memory (which a killed process loses) for librdkafka's 5 minutes.
            "message.timeout.ms": delivery_timeout_ms,
            "request.timeout.ms": min(30_000, delivery_timeout_ms),
            # A broker back from an outage is found within a second, not librdkafka's 10.
            "reconnect.backoff.max.ms": 1000,
            # Room for what may be in flight, so producing never blocks on a full local queue.
            "queue.buffering.max.kbytes": 2 * max_in_flight_bytes // 1024,
            "queue.buffering.max.messages": 2 * max_in_flight})
        self.topic = topic
        self.spool = spool
        self.max_queued = max_queued
        self.drain_interval_s = drain_interval_s
        self.stall_s = stall_s
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self._queue: deque[ServedRequest] = deque()
        self.dropped = 0
        self.mode = SPOOLING if len(spool) else DIRECT
        self._replaying: Segment | None = None
        self._replay_failures = 0
        self._next_replay = 0.0
        self._backoff = Backoff(first_s=0.2, most_s=5.0)
        self._spool_failing = False
        SPOOL_BYTES.set(spool.bytes)
        if len(spool):
            log.info("replaying the prediction logs an earlier process spooled",
                     extra={"spool": str(spool.directory), "segments": len(spool), "bytes": spool.bytes})

    def submit(self, served: ServedRequest) -> None:
        """Called on the request path: never blocks."""
        if len(self._queue) >= self.max_queued:
            self._drop("queue_full")
            return
        self._queue.append(served)
        _QUEUED.inc()

    def run(self) -> None:
        waiting = self._queue
        while True:
            worked = bool(waiting)
            try:
                while waiting:
                    self._send(waiting.popleft())
                self.producer.poll(0)  # delivery reports
                self._settle()
                self._replay()
                self.spool.sync_if_due()
            except Exception:
                # A dead logger thread would lose every later log without a word; this one keeps going.
                log.exception("the prediction logger failed; continuing")
                self.wait(1.0)
            if not worked:
                if self.stopping:
                    break
                self.wait(self.drain_interval_s)
        self._finish()

    def _send(self, served: ServedRequest) -> None:
        value = encode_log(served)
        key = served.model_name.encode()
        deliveries = self._deliveries
        if self.mode is DIRECT:
            if not deliveries.in_flight:
                deliveries.last_report = time.monotonic()  # the stall clock starts with the first wait
            elif (deliveries.in_flight >= self.max_in_flight
                  or deliveries.in_flight_bytes + len(value) > self.max_in_flight_bytes
                  or time.monotonic() - deliveries.last_report > self.stall_s):
                self._start_spooling("the broker is not acknowledging prediction logs")
        if self.mode is DIRECT:
            self._produce(key, value)
        else:
            self._spool(key, value)

    def _produce(self, key: bytes, value: bytes) -> None:
        self._deliveries.in_flight += 1
        self._deliveries.in_flight_bytes += len(value)
        self.producer.produce_raw(self.topic, value, key=key)

    def _spool(self, key: bytes, value: bytes) -> None:
        try:
            stored = self.spool.append(key, value)
        except OSError:
            if not self._spool_failing:
                log.exception("cannot write to the prediction-log spool; dropping logs until it works",
                              extra={"spool": str(self.spool.directory)})
            self._spool_failing = True
            self._drop("spool_error")
            return
        self._spool_failing = False
        if not stored:
            self._drop("spool_full")
            return
        _SPOOLED.inc()
        SPOOL_BYTES.set(self.spool.bytes)

    def _start_spooling(self, why: str) -> None:
        if self.mode is DIRECT:
            self.mode = SPOOLING
            log.warning("%s; spooling them to disk until it does", why,
                        extra={"spool": str(self.spool.directory), "in_flight": self._deliveries.in_flight})

    def _settle(self) -> None:
        """What the delivery reports said: failed direct records go to the spool; failed replayed
        ones are still in theirs and count against its segment."""
        failed = self._deliveries.failed
        if not failed:
            return
        if self._replaying is not None:
            self._replay_failures += len(failed)
        else:
            self._start_spooling("prediction logs could not be delivered")
            for key, value in failed:
                self._spool(key, value)
        failed.clear()

    def _replay(self, start: bool = True) -> None:
        """One step: closes the segment being replayed once all of it settled, then (with `start`)
        sends the next one."""
        deliveries = self._deliveries
        if self.mode is DIRECT or deliveries.in_flight:
            return
        if self._replaying is not None:
            segment, self._replaying = self._replaying, None
            deliveries.replaying = False
            if self._replay_failures:
                log.warning("could not replay a spool segment yet; retrying after a back-off",
                            extra={"segment": segment.path.name, "failed": self._replay_failures})
                self._replay_failures = 0
                self._next_replay = time.monotonic() + self._backoff.next()
            else:
                self.spool.delete(segment)
                SPOOL_BYTES.set(self.spool.bytes)
                self._backoff.reset()
        if not start or time.monotonic() < self._next_replay:
            return
        segment = self.spool.oldest()
        if segment is None:
            self.mode = DIRECT
            log.info("prediction-log spool replayed; producing directly again")
            return
        if segment.corrupt:
            self._drop("corrupt")
        if not segment.records:
            self.spool.delete(segment)
            SPOOL_BYTES.set(self.spool.bytes)
            return
        self._replaying = segment
        deliveries.replaying = True
        for key, value in segment.records:
            self._produce(key, value)

    def _finish(self) -> None:
        """After the last log: waits (bounded by the delivery timeout) for the broker's word on
        what is in flight, spools what it refused, and closes the spool."""
        deadline = time.monotonic() + self._delivery_timeout_s + 5
        while self._deliveries.in_flight and time.monotonic() < deadline:
            self.producer.poll(0.1)
            self._settle()
        self._replay(start=False)
        if self._deliveries.in_flight:
            log.error("prediction logs still unacknowledged at shutdown are lost",
                      extra={"records": self._deliveries.in_flight})
        self.spool.close()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        _DROPPED.inc()
        DROPPED_LOGS.labels(reason).inc()
