"""Dead letters, as Kafka Connect writes them, for every service that consumes.

A dead letter is the refused record's own key, value, headers and timestamp, untouched, plus
`driftline.errors.*` headers that say why it was refused, by which service, at which stage, and
where it came from (the format is in services/ingest/README.md). Any Kafka tool therefore shows a
producer what it sent, and a record fixed upstream can be produced back as it is. Each service has
its own dead-letter topic (`Topics.dead_letters`); ingest's is `driftline.events.dlq`.

>>> headers = dead_letter_headers(
...     [("content-type", b"application/json"), ("driftline.errors.reason", b"an earlier rejection")],
...     Rejection("missing required field 'age'", "age", "validate"),
...     KafkaOrigin("driftline.events.raw", 0, 42), service="ingest", rejected_at_ms=1_700_000_000_000)
>>> for name, value in headers:
...     print(f"{name}={value.decode()}")
content-type=application/json
driftline.errors.reason=missing required field 'age'
driftline.errors.field=age
driftline.errors.stage=validate
driftline.errors.service=ingest
driftline.errors.timestamp=1700000000000
driftline.errors.topic=driftline.events.raw
driftline.errors.partition=0
driftline.errors.offset=42
>>> [name for name, _ in GrpcOrigin("/driftline.v1.Ingest/IngestBatch", 3).headers()]
['driftline.errors.grpc.method', 'driftline.errors.grpc.index']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from .kafka import Producer

log = logging.getLogger(__name__)

PREFIX = "driftline.errors."
REASON = PREFIX + "reason"
FIELD = PREFIX + "field"
STAGE = PREFIX + "stage"
SERVICE = PREFIX + "service"
TIMESTAMP = PREFIX + "timestamp"
TOPIC = PREFIX + "topic"
PARTITION = PREFIX + "partition"
OFFSET = PREFIX + "offset"
GRPC_METHOD = PREFIX + "grpc.method"
GRPC_INDEX = PREFIX + "grpc.index"

# The stages a consumer refuses a record at (ingest adds `parse`, `route` and `validate`).
DECODE = "decode"  # the bytes are not the topic's message
HANDLE = "handle"  # its handler raised on every one of `max_attempts` attempts

Headers = Sequence[tuple[str, bytes | None]]

DEAD_LETTERS = Counter("driftline_dead_letters_total", "Records sent to a dead-letter topic.",
                       ["service", "stage"])


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was refused: `reason` for people, `field` the culprit ("" for the whole record),
    `stage` the step that refused it."""

    reason: str
    field: str = ""
    stage: str = HANDLE

    @classmethod
    def of(cls, error) -> Rejection:
        """From an error that carries `reason`, `field` and `stage` (ingest's ValidationError)."""
        return cls(error.reason, error.field, error.stage)


@dataclass(frozen=True, slots=True)
class KafkaOrigin:
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [(TOPIC, self.topic.encode()), (PARTITION, str(self.partition).encode()),
                (OFFSET, str(self.offset).encode())]


@dataclass(frozen=True, slots=True)
class GrpcOrigin:
    method: str
    index: int  # the record's position in the request

    def headers(self) -> list[tuple[str, bytes]]:
        return [(GRPC_METHOD, self.method.encode()), (GRPC_INDEX, str(self.index).encode())]


Origin = KafkaOrigin | GrpcOrigin


def dead_letter_headers(original: Headers | None, rejection: Rejection, origin: Origin, *, service: str,
                        rejected_at_ms: int | None = None) -> list[tuple[str, bytes | None]]:
    """The record's own headers, then the `driftline.errors.*` ones.

    Error headers the record already carried (a dead letter produced back and refused again)
    describe the earlier refusal and are dropped.
    """
    when = time.time_ns() // 1_000_000 if rejected_at_ms is None else rejected_at_ms
    kept = [(name, value) for name, value in original or () if not name.lower().startswith(PREFIX)]
    return [*kept,
            (REASON, rejection.reason.encode()), (FIELD, rejection.field.encode()),
            (STAGE, rejection.stage.encode()), (SERVICE, service.encode()),
            (TIMESTAMP, str(when).encode()), *origin.headers()]


class ConsumedRecord(Protocol):
    """What a dead letter is made from: a confluent_kafka Message has all of it."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class DeadLetterQueue:
    """One service's dead-letter topic: `send` produces a refused record there and waits until the
    broker has it, so a caller that then commits past the record has not lost it."""

    def __init__(self, producer: Producer, topic: str, service: str) -> None:
        self.producer = producer
        self.topic = topic
        self.service = service
        self.sent = 0

    def send(self, message: ConsumedRecord, reason: str, *, stage: str, field: str = "") -> None:
        origin = KafkaOrigin(message.topic(), message.partition(), message.offset())
        headers = dead_letter_headers(message.headers(), Rejection(reason, field, stage), origin,
                                      service=self.service)
        _, timestamp_ms = message.timestamp()
        self.producer.produce_raw(self.topic, message.value(), key=message.key(), headers=headers,
                                  timestamp=timestamp_ms if timestamp_ms > 0 else None)
        self.producer.flush()
        self.sent += 1
        DEAD_LETTERS.labels(self.service, stage).inc()
        log.warning("record dead-lettered", extra={
            "dead_letter_topic": self.topic, "stage": stage, "reason": reason, "field": field,
            "topic": origin.topic, "partition": origin.partition, "offset": origin.offset})
