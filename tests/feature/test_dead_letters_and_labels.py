"""feature as a process: poison records go to `driftline.feature.dlq` with their reason and origin
and the records behind them are processed; delayed labels of `driftline.labels` land in label
segments of their stream, each once, across a SIGKILL and restart."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from driftline.v1 import events_pb2, features_pb2
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.schema import load_schema
from services.common.settings import Topics
from services.feature.settings import FeatureSettings
from feature_support import (FEATURE_STORE, dead_letter_errors, read_dead_letters, read_features, schema_event,
                             service_env)
from support import ServiceRun, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(REPO_ROOT / "config/streams/default.json")
NOT_PROTOBUF = b"\xff\xff\xff\xff"  # an invalid tag: no message type parses it


def test_poison_events_are_dead_lettered_with_reason_and_origin_and_the_partition_moves_on(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path):
    topics = Topics(topic_prefix)
    settings = FeatureSettings(topic_prefix=topic_prefix)
    producer = Producer(kafka_bootstrap)
    # A corrupt state row (its "state" is no mapping): every event of entity "broken" raises in
    # the transform, on every attempt.
    ensure_topics(kafka_bootstrap, [settings.changelog_topic], config={"cleanup.policy": "compact"})
    producer.produce_raw(settings.changelog_topic, json.dumps({"state": 5, "partition": 0, "offset": -1}).encode(),
                         key=json.dumps("default\x1fbroken"))
    producer.flush()
    port = free_port()
    env = service_env(topic_prefix, bucket_name, port, DRIFTLINE_MAX_ATTEMPTS="2")
    good = [schema_event(SCHEMA, i, f"c-{i % 3}") for i in range(10)]
    poisoned = schema_event(SCHEMA, 99, "broken")

    with ServiceRun("feature", env, tmp_path / "feature.log") as run:
        run.wait_serving(f"127.0.0.1:{port}", FEATURE_STORE)
        reader = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.features], read_committed=True)
        for event in good[:5]:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.produce_raw(topics.events, NOT_PROTOBUF, key=b"c-0", headers=[("origin", b"a test")])  # offset 5
        producer.produce(topics.events, poisoned, key=poisoned.entity_id)  # offset 6
        for event in good[5:]:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()

        records = read_features(reader, len(good))
        assert [r.event_id for r in records] == [e.event_id for e in good]
        undecodable, failing = read_dead_letters(kafka_bootstrap, topics.dead_letters("feature"), 2)
        assert run.stop(timeout=60) == 0
    assert reader.poll_batch(features_pb2.FeatureRecord, timeout=1) == []  # no other record, and none twice
    reader.close()

    assert undecodable.value() == NOT_PROTOBUF and undecodable.key() == b"c-0"
    assert ("origin", b"a test") in undecodable.headers()  # the record's own headers are kept
    errors = dead_letter_errors(undecodable)
    assert errors.pop("reason").startswith("not a driftline.v1.Event")
    assert errors == {"field": "", "stage": "decode", "service": "feature", "topic": topics.events,
                      "partition": "0", "offset": "5"}
    assert failing.value() == poisoned.SerializeToString(deterministic=True)  # as Producer.produce sent it
    errors = dead_letter_errors(failing)
    assert errors.pop("reason").startswith("AttributeError")
    assert errors == {"field": "", "stage": "handle", "service": "feature", "topic": topics.events,
                      "partition": "0", "offset": "6"}


def label(event_id: str, value: int, labelled_at_ms: int, stream: str = "", event_time_ms: int | None = None
          ) -> events_pb2.Label:
    message = events_pb2.Label(event_id=event_id, label=value, stream=stream)
    message.labelled_at.FromMilliseconds(labelled_at_ms)
    if event_time_ms is not None:
        message.event_time.FromMilliseconds(event_time_ms)
    return message


def label_rows(store, stream: str) -> list[dict]:
    """Every row of `stream`'s label segments, by segment key."""
    rows = []
    for key in sorted(k for k in store.list_keys(f"datasets/{stream}/labels/") if k.endswith(".json")):
        sidecar = store.get_json(key)
        table = pq.read_table(io.BytesIO(store.get_bytes(sidecar["key"], expected_sha256=sidecar["sha256"])))
        assert [str(t) for t in table.schema.types] == ["string", "int32", "int64", "int64"]
        assert sidecar["rows"] == table.num_rows and sidecar["stream"] == stream
        rows += table.to_pylist()
    return rows


def test_labels_land_in_label_segments_of_their_stream_once_each_across_a_sigkill(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path):
    topics = Topics(topic_prefix)
    store = s3.store(bucket_name)
    port = free_port()
    env = service_env(topic_prefix, bucket_name, port, DRIFTLINE_FEATURE_SEGMENT_SECONDS="0.5")
    producer = Producer(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, [topics.labels])
    first = [(label("ev-1", 1, 5_000, event_time_ms=1_000), []),  # no stream: the default one
             (label("ev-2", 0, 6_000), []),
             (label("sea-1", 1, 7_000, stream="sea"), []),
             (label("hyper-1", 0, 8_000, stream="sea"), [("driftline.stream", b"hyper")])]  # the header wins
    for message, headers in first:
        producer.produce(topics.labels, message, key=message.event_id, headers=headers)
    producer.produce_raw(topics.labels, NOT_PROTOBUF, key=b"x")  # offset 4
    producer.produce(topics.labels, label("", 1, 9_000), key=b"y")  # offset 5: labels nothing
    producer.flush()

    run = ServiceRun("feature", env, tmp_path / "feature-0.log")
    try:
        run.wait_serving(f"127.0.0.1:{port}", FEATURE_STORE)
        wait_for(lambda: len(label_rows(store, "default")) == 2 and label_rows(store, "hyper"), 30,
                 "the first labels in segments")
        run.process.kill()
        run.process.wait()
        later = [label("ev-3", 1, 10_000), label("ev-1", 0, 11_000)]  # ev-1 relabelled: both are kept
        for message in later:
            producer.produce(topics.labels, message, key=message.event_id)
        producer.flush()
        run = ServiceRun("feature", env, tmp_path / "feature-1.log")
        run.wait_serving(f"127.0.0.1:{port}", FEATURE_STORE)
        wait_for(lambda: len(label_rows(store, "default")) >= 4, 30, "the later labels in segments")
        assert run.stop(timeout=60) == 0
    finally:
        run.stop()

    assert label_rows(store, "default") == [
        {"event_id": "ev-1", "label": 1, "labelled_at_ms": 5_000, "event_time_ms": 1_000},
        {"event_id": "ev-2", "label": 0, "labelled_at_ms": 6_000, "event_time_ms": 0},
        {"event_id": "ev-3", "label": 1, "labelled_at_ms": 10_000, "event_time_ms": 0},
        {"event_id": "ev-1", "label": 0, "labelled_at_ms": 11_000, "event_time_ms": 0}]
    assert [r["event_id"] for r in label_rows(store, "sea")] == ["sea-1"]
    assert [r["event_id"] for r in label_rows(store, "hyper")] == ["hyper-1"]
    dead = read_dead_letters(kafka_bootstrap, topics.dead_letters("feature"), 2)
    # At least once: a SIGKILL before the writer's commit sends a dead letter again.
    assert {(m.value(), dead_letter_errors(m)["offset"]) for m in dead} == {
        (NOT_PROTOBUF, "4"), (label("", 1, 9_000).SerializeToString(), "5")}
    assert Counter(dead_letter_errors(m)["stage"] for m in dead) == {"decode": len(dead)}
    assert {dead_letter_errors(m)["topic"] for m in dead} == {topics.labels}
