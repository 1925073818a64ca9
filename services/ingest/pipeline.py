"""One batch of raw records in, one transaction out: each record is parsed,
routed to the stream it names (its `driftline.stream` header, else a protobuf
Event's `stream`, else the default stream) and validated against that stream's
schema from the catalogue, checked against the ids already published in that
stream (dedup.py, idlog.py), and becomes an event on `driftline.events` (keyed
by entity_id, its `stream` set, its id on `driftline.events.ids` in the same
transaction), a dead letter on `driftline.events.dlq` (the record's own key,
value, headers and timestamp, plus `driftline.errors.*` headers: deadletter.py),
or nothing (a duplicate). Records of several streams share a batch: a dead
letter is an outcome, not an error, so one stream's bad record never holds up
another's. A record whose processing raises (not a rule it breaks: a bug, a
resource it could not read) fails its batch; after `max_attempts` such failures
it is dead-lettered at stage `handle`, the error as its reason, and the records
behind it are published.

Both entry points use this: the Kafka worker (origin = the raw record's
topic/partition/offset, offsets committed in the same transaction) and gRPC
IngestBatch (origin = the method and the record's index in the request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from driftline.v1 import events_pb2, ingest_pb2
from services.common.deadletter import HANDLE
from services.common.kafka import Consumer, header
from services.common.schema import StreamSchema
from services.common.settings import Topics
from services.common.streams import STREAM_HEADER, StreamCatalog

from .deadletter import Headers, Origin, Rejection, dead_letter_headers
from .dedup import RecentIds, dedup_key
from .metrics import RECORDS, TRANSACTIONS
from .publisher import Outgoing, TransactionalPublisher
from .validation import Parsed, ValidationError, parse_record, route, validate_parsed

Validate = Callable[[Parsed, StreamSchema], events_pb2.Event]


@dataclass(frozen=True, slots=True)
class RawInput:
    payload: bytes | None
    content_type: str | None
    key: bytes | str | None
    origin: Origin
    headers: Headers | None = None  # the record's own (its stream among them), kept on its dead letter
    timestamp_ms: int | None = None  # the record's own Kafka timestamp, kept on its dead letter

    @property
    def stream(self) -> str | None:
        """The stream its `driftline.stream` header names, if any."""
        return header(self.headers, STREAM_HEADER)


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
    """`max_attempts`: how many times a record's processing may raise before it is dead-lettered
    (1 on the gRPC path, whose caller is the one that retries); `validate`: the rules, a seam for
    tests of a processing error."""

    def __init__(self, catalog: StreamCatalog, topics: Topics, publisher: TransactionalPublisher,
                 recent: RecentIds, source: str, *, ids_topic: str = "", max_attempts: int = 1,
                 validate: Validate = validate_parsed) -> None:
        self.catalog = catalog  # this pipeline's own: a catalogue is not shared between threads
        self.topics = topics
        self.publisher = publisher
        self.recent = recent
        self.source = source  # "kafka" or "grpc", for metrics
        self.ids_topic = ids_topic  # "": ids are remembered in memory only
        self.max_attempts = max_attempts
        self.validate = validate
        self._failures: dict[Origin, int] = {}  # records whose processing raised, and how often

    def process(self, inputs: Sequence[RawInput], consumer: Consumer | None = None,
                offsets: Sequence[TopicPartition] | None = None) -> list[Outcome]:
        """Validates, de-duplicates and publishes a batch, committing `consumer`'s `offsets` with it;
        raises (having published nothing) on failure."""
        outcomes: list[Outcome] = []
        try:
            for raw in inputs:
                outcomes.append(self.classify(raw))
            self.publisher.publish(self._outgoing(inputs, outcomes), consumer, offsets)
        except BaseException:
            self.recent.release(claimed(outcomes))
            TRANSACTIONS.labels(self.source, "aborted").inc()
            raise
        self.recent.confirm(claimed(outcomes))
        self._failures.clear()  # what failed before is published or dead-lettered now
        TRANSACTIONS.labels(self.source, "committed").inc()
        for outcome in outcomes:
            RECORDS.labels(self.source, outcome.name).inc()
        return outcomes

    def classify(self, raw: RawInput) -> Outcome:
        try:
            parsed = parse_record(raw.payload, raw.content_type)
            event = self.validate(parsed, route(parsed, raw.stream, self.catalog))
        except ValidationError as exc:
            return Outcome(rejected=Rejection.of(exc))
        except Exception as exc:
            failures = self._failures[raw.origin] = self._failures.get(raw.origin, 0) + 1
            if failures < self.max_attempts:
                raise
            return Outcome(rejected=Rejection(f"{type(exc).__name__}: {exc}", "", HANDLE))
        if not self.recent.claim(event_key(event)):
            return Outcome(duplicate_id=event.event_id)
        return Outcome(event=event)

    def _outgoing(self, inputs: Sequence[RawInput], outcomes: Sequence[Outcome]) -> list[Outgoing]:
        records = []
        for raw, outcome in zip(inputs, outcomes):
            if outcome.event is not None:
                records.append(Outgoing(self.topics.events, outcome.event.entity_id,
                                        outcome.event.SerializeToString()))
                if self.ids_topic:
                    records.append(Outgoing(self.ids_topic, event_key(outcome.event), b""))
            elif outcome.rejected is not None:
                # The record as it came, so any Kafka tool shows its producer what it sent.
                records.append(Outgoing(self.topics.events_dlq, raw.key, raw.payload,
                                        dead_letter_headers(raw.headers, outcome.rejected, raw.origin),
                                        timestamp_ms=raw.timestamp_ms))
        return records


def event_key(event: events_pb2.Event) -> bytes:
    """Event ids are unique within a stream: two streams may both send an "e-1"."""
    return dedup_key(event.stream, event.event_id)


def claimed(outcomes: Sequence[Outcome]) -> list[bytes]:
    return [event_key(o.event) for o in outcomes if o.event is not None]
