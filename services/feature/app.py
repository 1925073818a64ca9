"""The faust app: `driftline.events` → feature vectors → `driftline.features`,
with each entity's state and latest vector in a changelog-backed table.

One app serves every stream of the catalogue (`DRIFTLINE_STREAMS_DIR`): an
event names its stream (`Event.stream`, set by ingest; empty means the default
stream) and its features are computed with that stream's schema. The table is
keyed by (stream, entity) (catalog.table_key), so an entity id used in two
streams keeps two states. A stream added to the folder is served from its
first event, without a restart. An event of a stream the catalogue does not
know (or no longer knows) is counted, logged and skipped, like an undecodable
one: ingest writes only events of known streams, so it is a bug upstream.

The app id includes the topic prefix, so a prefixed loop (a test) has its own
consumer group and its own changelog topic (`<app id>-entity_state-changelog`).
The table lives in memory (`memory://`) and is rebuilt from its changelog when
a worker starts, which is what makes a restarted worker answer as before.

Delivery is at least once: after a crash faust replays events past its last
commit. A replayed event must not move an entity's state a second time, so
each table row remembers the source offset it has applied; an event at or
before it is recomputed from the current state without changing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust

from driftline.v1 import events_pb2, features_pb2
from services.common.kafka import DecodeFailure, decode
from services.common.schema import StreamSchema, event_values
from services.common.streams import StreamCatalog

from .catalog import current_schema, load_row, table_key
from .metrics import EVENTS
from .settings import FeatureSettings
from .transform import EntityState, compute_features
from .transport import ReadCommittedTransport

log = logging.getLogger(__name__)

TABLE_NAME = "entity_state"
AGENT_NAME = "compute_features"


@dataclass(frozen=True)
class FeatureApp:
    app: faust.App
    table: faust.Table
    catalog: StreamCatalog
    events_topic: faust.TopicT
    features_topic: faust.TopicT


def create_app(settings: FeatureSettings, catalog: StreamCatalog, datadir: str) -> FeatureApp:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_brokers],
        store="memory://",  # must be given here, not configured later (FIELD-NOTES)
        datadir=datadir,
        autodiscover=False,
        web_enabled=False,  # metrics and health come from our own endpoints, not faust's web UI
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    # Before anything touches app.transport (declaring a topic does).
    app.transport = ReadCommittedTransport(app.conf.broker_consumer, app)
    events_topic = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw")
    features_topic = app.topic(settings.topics.features, key_serializer="raw", value_serializer="raw")
    # Co-partitioned with the events topic (keyed by entity_id): faust writes a row to the
    # changelog partition of the event that updates it, whatever the row's key.
    table = app.Table(TABLE_NAME, default=None, partitions=settings.topic_partitions,
                      help="Per (stream, entity): the state of the stateful features and the latest vector.")
    feature_app = FeatureApp(app, table, catalog, events_topic, features_topic)

    @app.agent(events_topic, name=AGENT_NAME)
    async def compute_features_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await handle_event(feature_app, event)

    return feature_app


async def handle_event(feature_app: FeatureApp, event: faust.EventT) -> None:
    message = event.message
    try:
        source = decode(event.value, events_pb2.Event)
    except DecodeFailure as exc:
        # ingest writes only valid Events here; anything else is a bug upstream, not data to retry.
        EVENTS.labels("undecodable", "").inc()
        log.error("skipping an undecodable event", extra={
            "partition": message.partition, "offset": message.offset, "error": str(exc)})
        return
    schema = current_schema(feature_app.catalog, source.stream)
    if schema is None:
        # Same as undecodable: ingest writes only events of streams it knows.
        EVENTS.labels("unknown_stream", source.stream).inc()
        log.error("skipping an event of an unknown stream", extra={
            "stream": source.stream, "streams": feature_app.catalog.names(), "event_id": source.event_id,
            "partition": message.partition, "offset": message.offset})
        return
    table = feature_app.table
    row, legacy_key = load_row(table, schema.stream, source.entity_id, feature_app.catalog.default)
    values, new_row, outcome = apply_event(schema, source, row, message.partition, message.offset)
    if new_row is not None:
        table[table_key(schema.stream, source.entity_id)] = new_row
        if legacy_key is not None:
            del table[legacy_key]  # moved under its (stream, entity) key
    EVENTS.labels(outcome, schema.stream).inc()
    record = feature_record(schema, source, values)
    await feature_app.features_topic.send(key=source.entity_id.encode(), value=record.SerializeToString())


def apply_event(schema: StreamSchema, event: events_pb2.Event, row: dict[str, Any] | None,
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
