"""The dead-letter record of a rejected raw record, as Kafka Connect writes one.

The value and the key are the rejected record's own bytes, untouched, so any
Kafka tool shows a JSON producer its own JSON; its headers are kept, and
`driftline.errors.*` headers say why it was rejected and where it came from
(the format is in services/ingest/README.md). A record that ingest rejects is
thereby a raw record again: fixed, it can be produced back to the raw topic
as it is.

>>> headers = dead_letter_headers(
...     [("content-type", b"application/json"), ("driftline.errors.reason", b"an earlier rejection")],
...     Rejection("missing required field 'age'", "age", VALIDATE),
...     KafkaOrigin("driftline.events.raw", 0, 42), rejected_at_ms=1_700_000_000_000)
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
>>> [name for name, _ in grpc_origin(3).headers()]
['driftline.errors.grpc.method', 'driftline.errors.grpc.index']
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from driftline.v1 import ingest_pb2

from .validation import VALIDATE, ValidationError

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

SERVICE_NAME = "ingest"
INGEST_BATCH_METHOD = f"/{ingest_pb2.DESCRIPTOR.services_by_name['Ingest'].full_name}/IngestBatch"

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was refused: `reason` for people, `field` the culprit ("" for the whole record),
    `stage` the step that refused it (validation.PARSE or validation.VALIDATE)."""

    reason: str
    field: str
    stage: str

    @classmethod
    def of(cls, error: ValidationError) -> Rejection:
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


def grpc_origin(index: int) -> GrpcOrigin:
    return GrpcOrigin(INGEST_BATCH_METHOD, index)


def dead_letter_headers(original: Headers | None, rejection: Rejection, origin: Origin,
                        rejected_at_ms: int | None = None) -> list[tuple[str, bytes | None]]:
    """The record's own headers, then the `driftline.errors.*` ones.

    Error headers the record already carried (a dead letter produced back to the
    raw topic and rejected again) describe the earlier rejection and are dropped.
    """
    when = time.time_ns() // 1_000_000 if rejected_at_ms is None else rejected_at_ms
    kept = [(name, value) for name, value in original or () if not name.lower().startswith(PREFIX)]
    return [*kept,
            (REASON, rejection.reason.encode()), (FIELD, rejection.field.encode()),
            (STAGE, rejection.stage.encode()), (SERVICE, SERVICE_NAME.encode()),
            (TIMESTAMP, str(when).encode()), *origin.headers()]
