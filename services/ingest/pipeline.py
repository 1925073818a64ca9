"""One batch of raw records in, one transaction out: each record is validated,
checked against recently published ids, and becomes an event on
`driftline.events` (keyed by entity_id), a dead letter on
`driftline.events.dlq` (keyed like the raw record), or nothing (a duplicate).

Both entry points use this: the Kafka worker (origin = the raw record's
topic/partition/offset, offsets committed in the same transaction) and gRPC
IngestBatch (origin topic "grpc", partition -1, offset = the record's index in
the request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import events_pb2, ingest_pb2
from services.common.kafka import Consumer, schema_headers
from services.common.schema import StreamSchema
from services.common.settings import Topics

from .dedup import RecentIds
from .metrics import RECORDS, TRANSACTIONS
from .publisher import Outgoing, TransactionalPublisher
from .validation import ValidationError, media_type, validate_record


@dataclass(frozen=True, slots=True)
class RawInput:
    payload: bytes | None
    content_type: str | None
    key: bytes | str | None
    origin: events_pb2.RecordOrigin


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one record: exactly one of event / rejected is set, or duplicate_id."""

    event: events_pb2.Event | None = None
    rejected: events_pb2.RejectedRecord | None = None
    duplicate_id: str | None = None

    @property
    def name(self) -> str:
        return "accepted" if self.event else "rejected" if self.rejected else "duplicate"

    def result(self) -> ingest_pb2.RecordResult:
        if self.rejected is not None:
            return ingest_pb2.RecordResult(accepted=False, reason=self.rejected.reason,
                                           field=self.rejected.field)
        if self.event is not None:
            return ingest_pb2.RecordResult(accepted=True, event_id=self.event.event_id)
        return ingest_pb2.RecordResult(accepted=True, event_id=self.duplicate_id, duplicate=True)


class IngestPipeline:
    def __init__(self, schema: StreamSchema, topics: Topics, publisher: TransactionalPublisher,
                 recent: RecentIds, source: str) -> None:
        self.schema = schema
        self.topics = topics
        self.publisher = publisher
        self.recent = recent
        self.source = source  # "kafka" or "grpc", for metrics

    def process(self, inputs: Sequence[RawInput], consumer: Consumer | None = None) -> list[Outcome]:
        """Validates, de-duplicates and publishes a batch; raises (having published nothing) on failure."""
        outcomes = [self.classify(raw) for raw in inputs]
        claimed = [o.event.event_id for o in outcomes if o.event is not None]
        try:
            self.publisher.publish(self._outgoing(inputs, outcomes), consumer)
        except BaseException:
            self.recent.release(claimed)
            TRANSACTIONS.labels(self.source, "aborted").inc()
            raise
        self.recent.confirm(claimed)
        TRANSACTIONS.labels(self.source, "committed").inc()
        for outcome in outcomes:
            RECORDS.labels(self.source, outcome.name).inc()
        return outcomes

    def classify(self, raw: RawInput) -> Outcome:
        try:
            event = validate_record(raw.payload, raw.content_type, self.schema)
        except ValidationError as exc:
            return Outcome(rejected=rejected_record(raw, exc))
        if not self.recent.claim(event.event_id):
            return Outcome(duplicate_id=event.event_id)
        return Outcome(event=event)

    def _outgoing(self, inputs: Sequence[RawInput], outcomes: Sequence[Outcome]) -> list[Outgoing]:
        records = []
        for raw, outcome in zip(inputs, outcomes):
            if outcome.event is not None:
                records.append(Outgoing(self.topics.events, outcome.event.entity_id, outcome.event))
            elif outcome.rejected is not None:
                # Dead letters are read by people and outside tools: make them self-describing.
                records.append(Outgoing(self.topics.events_dlq, raw.key, outcome.rejected,
                                        schema_headers(outcome.rejected)))
        return records


def rejected_record(raw: RawInput, error: ValidationError) -> events_pb2.RejectedRecord:
    rejected_at = Timestamp()
    rejected_at.GetCurrentTime()
    return events_pb2.RejectedRecord(
        reason=error.reason, field=error.field, origin=raw.origin, payload=raw.payload or b"",
        content_type=media_type(raw.content_type), rejected_at=rejected_at)
