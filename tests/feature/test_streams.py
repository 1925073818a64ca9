"""feature with several streams: one process serves every stream of a streams folder, each with
its own schema, state, feature set and segments, and a stream added to the folder while it runs.
Then the segment writer alone: a stream whose uploads fail holds back only its own rows."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer as KafkaConsumer, TopicPartition

from driftline.v1 import events_pb2, features_pb2
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.objectstore import MinioObjectStore, ObjectRef, ObjectStore
from services.common.settings import Topics
from services.common.streams import StreamCatalog, parse_schema_text
from services.feature.app import apply_event
from services.feature.catalog import table_key
from services.feature.segment_writer import FeatureSegmentWriter
from services.feature.settings import FeatureSettings
from services.ingest.validation import validate_values
from feature_support import (FEATURE_STORE, dead_letter_errors, found_values, get_online, offline_vectors,
                             read_dead_letters, read_features, sidecars)
from support import ServiceRun, free_port, wait_for

LABEL = {"type": "integer", "required": False, "min": 0, "max": 1}
# Both streams have an entity feature "m": were their states shared, the means would mix.
SEA = {"stream": "sea", "model": "sea-model", "label": LABEL,
       "fields": [{"name": n, "type": "number"} for n in ("x1", "x2", "x3")],
       "entity_features": [{"name": "m", "source": "x1", "alpha": 0.5}]}
HYPER = {"stream": "hyper", "model": "hyper-model", "label": LABEL,
         "fields": [{"name": n, "type": "number"} for n in "abcde"],
         "entity_features": [{"name": "m", "source": "a", "alpha": 0.25}]}
TRI = {"stream": "tri", "label": LABEL,
       "fields": [{"name": "p", "type": "integer"}, {"name": "q", "type": "number"}]}
SCHEMAS = {doc["stream"]: parse_schema_text(json.dumps(doc), f"{doc['stream']}.json") for doc in (SEA, HYPER, TRI)}


def write_stream(folder: Path, doc: dict) -> None:
    """As a deployment would: the whole file appears at once (rename), never half written."""
    partial = folder / f".{doc['stream']}.json.part"
    partial.write_text(json.dumps(doc))
    os.replace(partial, folder / f"{doc['stream']}.json")


@pytest.fixture
def streams_dir(tmp_path) -> Path:
    """A streams folder with sea and hyper (the service's DRIFTLINE_STREAMS_DIR)."""
    folder = tmp_path / "streams"
    folder.mkdir()
    write_stream(folder, SEA)
    write_stream(folder, HYPER)
    return folder


def make_event(stream: str, i: int, entity_id: str, label: int | None) -> events_pb2.Event:
    """An event as ingest makes it, from a flat record and the stream's schema."""
    schema = SCHEMAS[stream]
    doc = {"event_id": f"{stream}-{i}", "entity_id": entity_id, "event_time": 1_700_000_000_000 + 1000 * i}
    doc.update({spec.name: (i % 7 if spec.type == "integer" else 10.0 * k + i) for k, spec in enumerate(schema.fields)})
    if label is not None:
        doc["label"] = label
    return validate_values(doc, schema)


def expected_vectors(stream: str, events: list[events_pb2.Event]) -> list[list[float]]:
    return offline_vectors(SCHEMAS[stream], events)


def segment_table(store: ObjectStore, found: list[dict]):
    """The rows of the segments (sidecars) in offset order, as one pyarrow table per segment."""
    return [pq.read_table(io.BytesIO(store.get_bytes(s["key"], expected_sha256=s["sha256"])))
            for s in sorted(found, key=lambda s: s["first_offset"])]


# -- pure ---------------------------------------------------------------------------------------------


def test_the_same_entity_in_two_streams_has_two_rows_and_two_states():
    sea, hyper = SCHEMAS["sea"], SCHEMAS["hyper"]
    table: dict = {}
    for offset, (stream, schema, i) in enumerate([("sea", sea, 0), ("hyper", hyper, 1), ("sea", sea, 2)]):
        event = make_event(stream, i, "shared", 1)
        key = table_key(stream, "shared")
        _, table[key], outcome = apply_event(schema, event, table.get(key), partition=0, offset=offset)
        assert outcome == "computed"
    assert sorted(table) == ["hyper\x1fshared", "sea\x1fshared"]
    assert table["sea\x1fshared"]["state"]["count"] == 2 and table["hyper\x1fshared"]["state"]["count"] == 1
    # sea's m: x1 = 0.0, then 2.0 with alpha 0.5; hyper's m is its own a = 1.0.
    assert table["sea\x1fshared"]["values"][-1] == 1.0 and table["hyper\x1fshared"]["values"][-1] == 1.0
    assert len(table["sea\x1fshared"]["values"]) == 4 and len(table["hyper\x1fshared"]["values"]) == 6


# -- one feature process, several streams ---------------------------------------------------------


def test_one_feature_process_serves_every_stream_of_the_folder_and_one_added_while_it_runs(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path, streams_dir):
    topics = Topics(topic_prefix)
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {"DRIFTLINE_TOPIC_PREFIX": topic_prefix, "DRIFTLINE_BUCKET": bucket_name, "DRIFTLINE_GRPC_PORT": str(port),
           "DRIFTLINE_STREAMS_DIR": str(streams_dir), "DRIFTLINE_STREAM": "sea",
           "DRIFTLINE_FEATURE_SEGMENT_ROWS": "1000", "DRIFTLINE_FEATURE_SEGMENT_SECONDS": "1"}
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, bucket_name, s3.secure)
    producer = Producer(kafka_bootstrap)
    # Interleaved on one partition; "shared" is an entity of both streams.
    events = {"sea": [make_event("sea", i, ["shared", "s-1"][i % 2], None if i % 3 == 2 else i % 2)
                      for i in range(8)],
              "hyper": [make_event("hyper", i, ["shared", "h-1"][i % 2], None if i % 4 == 3 else 1 - i % 2)
                        for i in range(8)]}
    ghost = events_pb2.Event(event_id="ghost-1", stream="ghost", entity_id="shared")
    ghost.fields["x1"].number = 1.0
    sent = [e for pair in zip(events["sea"], events["hyper"]) for e in pair]
    sent.insert(5, ghost)  # a stream nobody knows: dead-lettered, and the processor goes on

    with ServiceRun("feature", env, tmp_path / "feature.log") as run:
        run.wait_serving(address, FEATURE_STORE)
        reader = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.features], read_committed=True)
        for event in sent:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()

        records = read_features(reader, len(sent) - 1)
        assert [r.event_id for r in records] == [e.event_id for e in sent if e is not ghost]
        last: dict[str, dict[str, list[float]]] = {}
        for stream, stream_events in events.items():
            mine = [r for r in records if r.feature_set == stream]
            assert [r.event_id for r in mine] == [e.event_id for e in stream_events]
            assert [list(r.values) for r in mine] == expected_vectors(stream, stream_events)
            assert [r.HasField("label") for r in mine] == [e.HasField("label") for e in stream_events]
            last[stream] = {r.entity_id: list(r.values) for r in mine}
        # Separate state: each stream's "shared" mean is its own field's, not a mix of both.
        assert last["sea"]["shared"] != last["hyper"]["shared"]
        [dead] = read_dead_letters(kafka_bootstrap, topics.dead_letters("feature"), 1)
        assert dead.value() == ghost.SerializeToString(deterministic=True) and dead.key() == b"shared"
        assert dead_letter_errors(dead) == {
            "reason": f"unknown stream 'ghost'; this process serves {['hyper', 'sea']}", "field": "stream",
            "stage": "route", "service": "feature", "topic": topics.events, "partition": "0", "offset": "5"}

        sea = get_online(address, "sea", ["shared", "s-1", "h-1"])
        assert sea.feature_set.name == "sea" and list(sea.feature_set.feature_names) == ["x1", "x2", "x3", "m"]
        assert found_values(sea) == {**last["sea"], "h-1": None}
        hyper = get_online(address, "hyper", ["shared", "h-1", "s-1"])
        assert list(hyper.feature_set.feature_names) == ["a", "b", "c", "d", "e", "m"]
        assert found_values(hyper) == {**last["hyper"], "s-1": None}
        assert get_online(address, "", ["s-1"]).feature_set.name == "sea"  # no name: the default stream
        for unknown in ("ghost", "tri"):
            with pytest.raises(grpc.RpcError) as caught:
                get_online(address, unknown, ["shared"])
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            get_online(address, "hyper", [])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        for stream, stream_events in events.items():
            rows = list(zip(stream_events, expected_vectors(stream, stream_events)))
            found = sidecars(store, len(rows), stream=stream)
            assert sum(s["rows"] for s in found) == len(rows)
            names = SCHEMAS[stream].feature_names
            for sidecar in found:
                assert sidecar["stream"] == stream and sidecar["feature_names"] == names
                assert sidecar["key"].startswith(f"datasets/{stream}/segments/p000-")
            tables = segment_table(store, found)
            assert all(t.column_names == ["event_id", "entity_id", "event_time_ms", "label", *names] for t in tables)
            assert [i for t in tables for i in t.column("event_id").to_pylist()] == [e.event_id for e, _ in rows]
            assert [m for t in tables for m in t.column("m").to_pylist()] == [v[-1] for _, v in rows]
            assert [x for t in tables for x in t.column("label").to_pylist()] == [
                e.label if e.HasField("label") else None for e, _ in rows]

        # A third stream, added while the process runs; its events follow at once.
        write_stream(streams_dir, TRI)
        tri = [make_event("tri", i, ["shared", "t-1"][i % 2], i % 2) for i in range(4)]
        for event in tri:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()
        records = read_features(reader, len(tri))
        assert [(r.event_id, r.feature_set) for r in records] == [(e.event_id, "tri") for e in tri]
        assert [list(r.values) for r in records] == expected_vectors("tri", tri)
        online = get_online(address, "tri", ["shared", "t-1", "s-1"])
        assert list(online.feature_set.feature_names) == ["p", "q"]
        assert found_values(online) == {**{r.entity_id: list(r.values) for r in records}, "s-1": None}
        assert found_values(get_online(address, "sea", ["shared"])) == {"shared": last["sea"]["shared"]}
        found = sidecars(store, len(tri), stream="tri")
        assert sum(s["rows"] for s in found) == len(tri) and all(s["feature_names"] == ["p", "q"] for s in found)

        assert run.stop(timeout=60) == 0
    reader.close()


# -- the segment writer, one stream's uploads failing ----------------------------------------------


class FailingFor(ObjectStore):
    """A real object store whose writes under `prefix` fail while `failing` is set."""

    def __init__(self, store: MinioObjectStore, prefix: str) -> None:
        self.store, self.prefix, self.bucket = store, prefix, store.bucket
        self.failing = True
        self.failures = 0

    def ensure_bucket(self) -> None:
        self.store.ensure_bucket()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        if self.failing and key.startswith(self.prefix):
            self.failures += 1
            raise ConnectionError(f"injected failure writing {key}")
        return self.store.put_bytes(key, data, content_type)

    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        return self.store.get_bytes(key, expected_sha256)

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        return self.store.list_keys(prefix, start_after)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)


def feature_record(stream: str, offset: int) -> features_pb2.FeatureRecord:
    width = len(SCHEMAS[stream].feature_names)
    record = features_pb2.FeatureRecord(event_id=f"{stream}-{offset}", entity_id="shared", feature_set=stream,
                                        values=[float(offset)] * width, label=offset % 2)
    record.event_time.FromMilliseconds(1_700_000_000_000 + offset)
    return record


def test_a_stream_whose_uploads_fail_holds_back_only_its_own_rows_and_none_is_lost_or_doubled(
        kafka_bootstrap, s3, bucket_name, topic_prefix, streams_dir):
    settings = FeatureSettings(
        kafka_bootstrap=kafka_bootstrap, s3_endpoint=s3.endpoint, s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key, s3_secure=s3.secure, bucket=bucket_name, topic_prefix=topic_prefix,
        streams_dir=str(streams_dir), stream="sea", feature_segment_rows=3, feature_segment_seconds=0.5)
    topic = settings.topics.features
    ensure_topics(kafka_bootstrap, [topic])
    store = FailingFor(MinioObjectStore.from_settings(settings), "datasets/hyper/")
    producer = Producer(kafka_bootstrap)
    # Offsets 0..9: sea at the even ones, hyper at the odd ones.
    first = [feature_record("sea" if offset % 2 == 0 else "hyper", offset) for offset in range(10)]
    for record in first:
        producer.produce(topic, record, key=record.entity_id)
    producer.flush()
    # Not a member (it subscribes to nothing): it only reads the writers' committed offset.
    group = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.segments_group_id})

    def committed() -> int:
        return group.committed([TopicPartition(topic, 0)], timeout=5)[0].offset

    def keys(stream: str) -> list[str]:
        return sorted(k for k in store.list_keys(f"datasets/{stream}/segments/") if k.endswith(".json"))

    writer = FeatureSegmentWriter(settings, store, StreamCatalog(streams_dir, default="sea"))
    writer.start()
    try:
        # sea's rows are written (3 by count, 2 by age) while every hyper upload fails, and the
        # partition is committed only up to hyper's first row.
        wait_for(lambda: sum(store.get_json(k)["rows"] for k in keys("sea")) == 5, 30, "sea's 5 rows in segments")
        wait_for(lambda: committed() == 1, 15, "the commit to stop at hyper's first row (offset 1)")
        wait_for(lambda: store.failures >= 2, 15, "hyper's upload to be retried")
        assert keys("hyper") == []
    finally:
        writer.stop()
    assert committed() == 1  # the final flush failed for hyper: its rows stay uncommitted
    sea_segments = keys("sea")

    # A burst of hyper (and one more sea row) arrives; the next writer replays from offset 1: sea's
    # rows there are in sea's segments and skipped, hyper's are written, none twice. Segments by
    # count only now (sea's last row at the stop), so their bounds are known.
    store.failing = False
    settings = settings.model_copy(update={"feature_segment_seconds": 600.0})
    more = [feature_record("sea", 10)] + [feature_record("hyper", offset) for offset in range(11, 18)]
    for record in more:
        producer.produce(topic, record, key=record.entity_id)
    producer.flush()
    writer = FeatureSegmentWriter(settings, store, StreamCatalog(streams_dir, default="sea"))
    writer.start()
    try:
        wait_for(lambda: sum(store.get_json(k)["rows"] for k in keys("hyper")) >= 12, 30, "hyper's 12 rows")
        wait_for(lambda: committed() == 10, 15, "the commit to stop at sea's buffered row 10")
    finally:
        writer.stop()
    assert committed() == 18
    group.close()

    everything = first + more
    for stream in ("sea", "hyper"):
        found = [store.get_json(k) for k in keys(stream)]
        assert all(s["feature_names"] == SCHEMAS[stream].feature_names and s["rows"] <= 3 for s in found)
        ids = [i for t in segment_table(store.store, found) for i in t.column("event_id").to_pylist()]
        assert ids == [r.event_id for r in everything if r.feature_set == stream]
    assert keys("sea")[:len(sea_segments)] == sea_segments and len(keys("sea")) == len(sea_segments) + 1
    assert sorted((s["first_offset"], s["last_offset"]) for s in map(store.get_json, keys("hyper"))) == [
        (1, 5), (7, 11), (12, 14), (15, 17)]


# -- an upgrade: rows from before several streams ---------------------------------------------------


def test_a_table_row_from_before_streams_keeps_its_state_in_the_default_stream(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path, streams_dir):
    """The changelog of a one-stream feature service keys rows by the bare entity id; after the
    upgrade the default stream goes on from them and moves them under their (stream, entity) key."""
    settings = FeatureSettings(topic_prefix=topic_prefix)
    changelog = f"{settings.app_id}-entity_state-changelog"
    ensure_topics(kafka_bootstrap, [changelog], config={"cleanup.policy": "compact"})
    old_row = {"event_id": "before", "event_time_ms": 1_600_000_000_000, "values": [100.0, 0.0, 0.0, 100.0],
               "state": {"count": 1, "means": {"m": 100.0}}, "partition": 0, "offset": -1}
    producer = Producer(kafka_bootstrap)
    # The changelog's format (faust's, kept so old state carries over) is JSON, for keys too.
    producer.produce_raw(changelog, json.dumps(old_row).encode(), key=json.dumps("old-1"))
    producer.flush()
    topics = Topics(topic_prefix)
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {"DRIFTLINE_TOPIC_PREFIX": topic_prefix, "DRIFTLINE_BUCKET": bucket_name, "DRIFTLINE_GRPC_PORT": str(port),
           "DRIFTLINE_STREAMS_DIR": str(streams_dir), "DRIFTLINE_STREAM": "sea"}
    with ServiceRun("feature", env, tmp_path / "feature.log") as run:
        run.wait_serving(address, FEATURE_STORE)
        assert found_values(get_online(address, "sea", ["old-1"])) == {"old-1": old_row["values"]}
        assert found_values(get_online(address, "hyper", ["old-1"])) == {"old-1": None}
        reader = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.features], read_committed=True)
        event = make_event("sea", 4, "old-1", 1)  # x1 = 4.0
        producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()
        [record] = read_features(reader, 1)
        assert list(record.values) == [4.0, 14.0, 24.0, 100.0 + 0.5 * (4.0 - 100.0)]
        assert found_values(get_online(address, "sea", ["old-1"])) == {"old-1": list(record.values)}
        assert run.stop(timeout=60) == 0
    reader.close()
    # The old key is deleted (a tombstone), the row lives on under its new key.
    log = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [changelog], read_committed=True)
    changes = read_changes(log, 3)
    log.raw.close()
    assert [(key, value is None) for key, value in changes] == [("old-1", False), ("sea\x1fold-1", False),
                                                               ("old-1", True)]


def read_changes(consumer: Consumer, count: int, timeout: float = 30.0) -> list[tuple[str, bytes | None]]:
    changes: list = []
    deadline = time.monotonic() + timeout
    while len(changes) < count and time.monotonic() < deadline:
        changes += [(json.loads(m.key()), m.value()) for m in consumer.poll_messages(100, 0.5)]
    return changes
