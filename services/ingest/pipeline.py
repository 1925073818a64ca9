"""One batch of raw records in, one transaction out: each record is validated,
checked against recently published ids, and becomes an event on
`driftline.events` (keyed by entity_id), a dead letter on
`driftline.events.dlq` (the record's own key, value and headers, plus
`driftline.errors.*` headers: deadletter.py), or nothing (a duplicate).

Both entry points use this: the Kafka worker (origin = the raw record's
topic/partition/offset, offsets committed in the same transaction) and gRPC
IngestBatch (origin = the method and the record's index in the request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from driftline.v1 import events_pb2, ingest_pb2
from services.common.kafka import Consumer
from services.common.schema import StreamSchema
from services.common.settings import Topics

from .deadletter import Headers, Origin, Rejection, dead_letter_headers
from .dedup import RecentIds
from .metrics import RECORDS, TRANSACTIONS
from .publisher import Outgoing, TransactionalPublisher
from .validation import ValidationError, validate_record


@dataclass(frozen=True, slots=True)
class RawInput:
    payload: bytes | None
    content_type: str | None
    key: bytes | str | None
    origin: Origin
    headers: Headers | None = None  # the record's own, kept on its dead letter


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one record: exactly one of event / rejected is set, or duplicate_id."""

    event: events_pb2.Event | None = None
    rejected: Rejection | None = None
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
            return Outcome(rejected=Rejection.of(exc))
        if not self.recent.claim(event.event_id):
            return Outcome(duplicate_id=event.event_id)
        return Outcome(event=event)

    def _outgoing(self, inputs: Sequence[RawInput], outcomes: Sequence[Outcome]) -> list[Outgoing]:
        records = []
        for raw, outcome in zip(inputs, outcomes):
            if outcome.event is not None:
                records.append(Outgoing(self.topics.events, outcome.event.entity_id,
                                        outcome.event.SerializeToString()))
            elif outcome.rejected is not None:
                # The record as it came, so any Kafka tool shows its producer what it sent.
                records.append(Outgoing(self.topics.events_dlq, raw.key, raw.payload,
                                        dead_letter_headers(raw.headers, outcome.rejected, raw.origin)))
        return records
