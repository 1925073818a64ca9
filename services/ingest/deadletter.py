"""Ingest's dead letters: the common format (services/common/deadletter.py) with ingest's stages
(`parse`, `route`, `validate`) and origins (a raw record's topic, partition and offset, or the
record's index in an IngestBatch call).

A record that ingest rejects is thereby a raw record again: fixed, it can be produced back to the
raw topic as it is.

>>> headers = dead_letter_headers([], Rejection("missing required field 'age'", "age", VALIDATE),
...                               KafkaOrigin("driftline.events.raw", 0, 42), rejected_at_ms=0)
>>> dict(headers)["driftline.errors.service"], dict(headers)["driftline.errors.stage"]
(b'ingest', b'validate')
>>> grpc_origin(3)
GrpcOrigin(method='/driftline.v1.Ingest/IngestBatch', index=3)
"""

from __future__ import annotations

from driftline.v1 import ingest_pb2
from services.common import deadletter
from services.common.deadletter import (  # noqa: F401  (ingest's names for the common format)
    OFFSET, PARTITION, PREFIX, REASON, STAGE, TOPIC, GrpcOrigin, Headers, KafkaOrigin, Origin, Rejection)

from .validation import VALIDATE

__all__ = ["OFFSET", "PARTITION", "PREFIX", "REASON", "STAGE", "TOPIC", "GrpcOrigin", "Headers", "KafkaOrigin", "Origin", "Rejection", "dead_letter_headers", "grpc_origin"]

SERVICE_NAME = "ingest"
INGEST_BATCH_METHOD = f"/{ingest_pb2.DESCRIPTOR.services_by_name['Ingest'].full_name}/IngestBatch"


def grpc_origin(index: int) -> GrpcOrigin:
    return GrpcOrigin(INGEST_BATCH_METHOD, index)


def dead_letter_headers(original: Headers | None, rejection: Rejection, origin: Origin,
                        rejected_at_ms: int | None = None) -> list[tuple[str, bytes | None]]:
    """The common dead-letter headers, as ingest writes them."""
    return deadletter.dead_letter_headers(original, rejection, origin, service=SERVICE_NAME,
                                          rejected_at_ms=rejected_at_ms)
