"""One event → its feature record: decoding, the stream's schema, the entity's
state and the next state, with nothing sent anywhere (processor.py publishes).

An event names its stream (`Event.stream`, set by ingest; empty means the
default stream) and its features are computed with that stream's schema. The
state is keyed by (stream, entity) (catalog.table_key), so an entity id used in
two streams keeps two states. A stream added to the folder is served from its
first event, without a restart. A record that does not decode, or names a
stream the catalogue does not know (ingest writes only events of known streams:
a bug upstream), is refused: the processor dead-letters it (stages `decode`,
`route`) and goes on.

Each table row remembers the source offset it has applied. The processor's
transactions make a replay of an applied event impossible, but state written by
the at-least-once faust app of earlier releases can be ahead of its committed
offsets: an event at or before the row's offset is recomputed from the current
state without changing it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from driftline.v1 import events_pb2, features_pb2
from services.common.deadletter import DECODE
from services.common.kafka import DecodeFailure, decode
from services.common.schema import StreamSchema, event_values
from services.common.streams import StreamCatalog

from .catalog import current_schema, load_row, table_key
from .metrics import EVENTS
from .state import Changes
from .transform import EntityState, compute_features

ROUTE = "route"  # the event names a stream this process does not serve


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    stage: str
    field: str = ""


def handle_event(catalog: StreamCatalog, changes: Changes, message: Message
                 ) -> features_pb2.FeatureRecord | Refusal:
    """The event's feature record, its state change written into `changes`; or why it is refused."""
    try:
        source = decode(message.value(), events_pb2.Event)
    except DecodeFailure as exc:
        EVENTS.labels("undecodable", "").inc()
        return Refusal(str(exc), DECODE)
    schema = current_schema(catalog, source.stream)
    if schema is None:
        EVENTS.labels("unknown_stream", source.stream).inc()
        return Refusal(f"unknown stream {source.stream!r}; this process serves {catalog.names()}", ROUTE, "stream")
    partition = message.partition()
    row, legacy_key = load_row(changes, schema.stream, source.entity_id, catalog.default)
    values, new_row, outcome = apply_event(schema, source, row, partition, message.offset())
    if new_row is not None:
        changes.set(partition, table_key(schema.stream, source.entity_id), new_row)
        if legacy_key is not None:
            changes.delete(partition, legacy_key)  # moved under its (stream, entity) key
    EVENTS.labels(outcome, schema.stream).inc()
    return feature_record(schema, source, values)


def apply_event(schema: StreamSchema, event: events_pb2.Event, row: MutableMapping[str, Any] | None,
                partition: int, offset: int) -> tuple[list[float], dict[str, Any] | None, str]:
    """(feature values, the entity's new table row or None to keep it, outcome)."""
    state = EntityState.from_dict(row["state"]) if row else None
    if row and row.get("partition") == partition and offset <= row.get("offset", -1):
        if row.get("event_id") == event.event_id:
            return list(row["values"]), None, "replayed"
        values, _ = compute_features(schema, event_values(event), state)
        return values, None, "replayed"
    values, state = compute_features(schema, event_values(event), state)
    return values, {
        "event_id": event.event_id,
        "event_time_ms": event.event_time.ToMilliseconds(),
        "values": values,
        "state": state.to_dict(),
        "partition": partition,
        "offset": offset,
    }, "computed"


def feature_record(schema: StreamSchema, event: events_pb2.Event, values: list[float]
                   ) -> features_pb2.FeatureRecord:
    record = features_pb2.FeatureRecord(event_id=event.event_id, entity_id=event.entity_id,
                                        feature_set=schema.stream, values=values)
    record.event_time.CopyFrom(event.event_time)
    if event.HasField("label"):
        record.label = event.label
    return record
