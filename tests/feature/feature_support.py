"""Helpers of the feature tests: reading the feature and dead-letter topics, the segments and the
online store."""

from __future__ import annotations

import time
import uuid

import grpc
from confluent_kafka import Message

from driftline.v1 import events_pb2, features_pb2, features_pb2_grpc
from services.common.deadletter import PREFIX
from services.common.kafka import Consumer
from services.common.objectstore import ObjectStore
from services.common.schema import StreamSchema
from services.feature.transform import compute_features_offline
from services.feature.segments import segments_prefix

FEATURE_STORE = "driftline.v1.FeatureStore"


def service_env(topic_prefix: str, bucket: str, port: int, **more: str) -> dict[str, str]:
    """The environment of a `python -m services.feature` of one test, as the supervisor starts it
    (with its instance id)."""
    return {"DRIFTLINE_TOPIC_PREFIX": topic_prefix, "DRIFTLINE_BUCKET": bucket, "DRIFTLINE_GRPC_PORT": str(port),
            "DRIFTLINE_INSTANCE_ID": "feature", **more}


def schema_event(schema: StreamSchema, i: int, entity_id: str) -> events_pb2.Event:
    """Event `ev-<i>` of `schema`'s stream, every field set from `i`."""
    event = events_pb2.Event(event_id=f"ev-{i}", stream=schema.stream, entity_id=entity_id)
    event.event_time.FromMilliseconds(1_700_000_000_000 + i)
    for spec in schema.fields:
        if spec.type == "integer":
            event.fields[spec.name].integer = i % 7
        else:
            event.fields[spec.name].number = float(i % 101)
    return event


def offline_vectors(schema: StreamSchema, events: list[events_pb2.Event]) -> list[list[float]]:
    """The vectors of `events` computed offline, in order: what the process must have produced."""
    pairs = [(e.entity_id, {k: getattr(v, v.WhichOneof("kind")) for k, v in e.fields.items()}) for e in events]
    return list(compute_features_offline(schema, pairs))


def read_features(consumer: Consumer, count: int, timeout: float = 60.0) -> list[features_pb2.FeatureRecord]:
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(records)} of {count} feature records after {timeout}s")
        records += [r.value for r in consumer.poll_batch(features_pb2.FeatureRecord, timeout=0.5)]
    return records


def sidecars(store: ObjectStore, want_rows: int, timeout: float = 30.0, stream: str = "default") -> list[dict]:
    """The sidecars of `stream`'s segments, once they hold `want_rows` rows in all (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [store.get_json(k) for k in store.list_keys(segments_prefix(stream)) if k.endswith(".json")]
        if sum(s["rows"] for s in found) >= want_rows or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def get_online(address: str, feature_set: str, entity_ids: list[str]) -> features_pb2.GetOnlineFeaturesResponse:
    with grpc.insecure_channel(address) as channel:
        return features_pb2_grpc.FeatureStoreStub(channel).GetOnlineFeatures(
            features_pb2.GetOnlineFeaturesRequest(feature_set=feature_set, entity_ids=entity_ids), timeout=10)


def found_values(response: features_pb2.GetOnlineFeaturesResponse) -> dict[str, list[float] | None]:
    """entity id -> its values, or None when the store has no row for it."""
    return {row.entity_id: list(row.values) if row.found else None for row in response.rows}


def read_dead_letters(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Message]:
    """The first `count` records of a dead-letter topic (read_committed), failing at the timeout."""
    consumer = Consumer(bootstrap, f"test-{uuid.uuid4().hex}", [topic], read_committed=True)
    try:
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} dead letters on {topic} after {timeout}s")
            found += consumer.poll_messages(100, 0.5)
        return found
    finally:
        consumer.close()


def dead_letter_errors(message: Message) -> dict[str, str]:
    """A dead letter's driftline.errors.* headers, without the prefix and the timestamp."""
    return {name[len(PREFIX):]: value.decode() for name, value in message.headers() or ()
            if name.startswith(PREFIX) and name != f"{PREFIX}timestamp"}
