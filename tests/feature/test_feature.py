"""feature: the pure transform and segment encoding, then the feature worker as a
real process (`python -m services.feature`) spoken to through Kafka, gRPC and
the object store only — including a restart that recovers the table."""

from __future__ import annotations

import doctest
import io
import math
import uuid
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from driftline.v1 import events_pb2, features_pb2, features_pb2_grpc
from services.common.kafka import Consumer, Producer
from services.common.objectstore import MinioObjectStore
from services.common.schema import SchemaError, StreamSchema, load_schema
from services.common.settings import Topics
from services.feature import transform
from services.feature.app import apply_event
from services.feature.segments import SegmentRow, encode_parquet, segment_stem
from services.feature.transform import EntityState, compute_features, compute_features_offline
from feature_support import FEATURE_STORE, found_values, get_online, offline_vectors, read_features, sidecars
from support import ServiceRun, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(REPO_ROOT / "config/streams/default.json")
FEATURES = SCHEMA.feature_names


def agrawal_values(i: int) -> dict:
    return {"salary": 20000.0 + 1000 * i, "commission": 0.0, "age": 20 + i, "elevel": i % 5, "car": 1 + i % 20,
            "zipcode": i % 9, "hvalue": 1000.0 * i, "hyears": 1 + i % 30, "loan": 500.0 * i}


def make_event(i: int, entity_id: str, label: int | None) -> events_pb2.Event:
    event = events_pb2.Event(event_id=f"ev-{i}", stream="default", entity_id=entity_id)
    event.event_time.FromMilliseconds(1_700_000_000_000 + 1000 * i)
    for name, value in agrawal_values(i).items():
        if SCHEMA.spec(name).type == "integer":
            event.fields[name].integer = value
        else:
            event.fields[name].number = value
    if label is not None:
        event.label = label
    return event


# -- the pure parts -----------------------------------------------------------------------------------


def test_transform_doctest():
    result = doctest.testmod(transform)
    assert result.attempted > 0 and result.failed == 0


def test_the_default_stream_has_the_agrawal_fields_then_the_entity_mean():
    assert FEATURES == ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan",
                        "salary_entity_mean"]
    assert SCHEMA.classes == [0, 1]


def test_a_schema_with_an_entity_feature_on_a_missing_field_is_refused():
    with pytest.raises(SchemaError, match="source 'wage' is not a numeric field"):
        StreamSchema.from_dict({"stream": "s", "fields": [{"name": "salary", "type": "number"}],
                                "entity_features": [{"name": "m", "source": "wage"}]})


def test_features_follow_schema_order_and_the_entity_mean_is_exponentially_weighted():
    values, state = compute_features(SCHEMA, agrawal_values(0))
    assert values == [20000.0, 0.0, 20.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 20000.0]
    values, state = compute_features(SCHEMA, agrawal_values(10), state)
    assert values[-1] == pytest.approx(20000.0 + 0.2 * (30000.0 - 20000.0))
    assert state.count == 2


def test_a_missing_optional_value_is_nan_and_leaves_the_mean_alone():
    schema = StreamSchema.from_dict({"stream": "s", "fields": [{"name": "x", "type": "number", "required": False}],
                                     "entity_features": [{"name": "x_mean", "source": "x", "alpha": 0.5}]})
    values, state = compute_features(schema, {"x": 4.0})
    values, state = compute_features(schema, {}, state)
    assert math.isnan(values[0]) and values[1] == 4.0


def test_offline_replay_equals_the_online_sequence_per_entity():
    events = [(f"c-{i % 2}", agrawal_values(i)) for i in range(6)]
    states: dict[str, EntityState] = {}
    online = []
    for entity_id, values in events:
        vector, states[entity_id] = compute_features(SCHEMA, values, states.get(entity_id))
        online.append(vector)
    assert list(compute_features_offline(SCHEMA, events)) == online


def test_a_replayed_event_does_not_move_the_entity_state_twice():
    first = make_event(1, "c-1", 1)
    values, row, outcome = apply_event(SCHEMA, first, None, partition=0, offset=7)
    assert outcome == "computed"
    again, unchanged, outcome = apply_event(SCHEMA, first, row, partition=0, offset=7)
    assert (again, unchanged, outcome) == (values, None, "replayed")
    _, newer, outcome = apply_event(SCHEMA, make_event(2, "c-1", 0), row, partition=0, offset=8)
    assert outcome == "computed" and newer["state"]["count"] == 2


def test_segments_are_parquet_with_the_contract_columns_and_stable_bytes():
    rows = [SegmentRow(offset=5 + i, event_id=f"e{i}", entity_id="c", event_time_ms=1000 + i, label=i % 2,
                       values=compute_features(SCHEMA, agrawal_values(i))[0]) for i in range(3)]
    data = encode_parquet(rows, FEATURES)
    assert data == encode_parquet(rows, FEATURES)  # same rows, same sha256
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == ["event_id", "entity_id", "event_time_ms", "label", *FEATURES]
    assert [str(t) for t in table.schema.types[:4]] == ["string", "string", "int64", "int32"]
    assert all(str(t) == "double" for t in table.schema.types[4:])
    assert segment_stem("default", 2, 5, 7) == "datasets/default/segments/p002-000000000005-000000000007"


# -- the worker, as a process -------------------------------------------------------------------------


def online_features(address: str, entity_ids: list[str]) -> dict[str, list[float] | None]:
    response = get_online(address, "default", entity_ids)
    assert list(response.feature_set.feature_names) == FEATURES
    return found_values(response)


def expected_vectors(events: list[events_pb2.Event]) -> list[list[float]]:
    return offline_vectors(SCHEMA, events)


def test_feature_worker_computes_serves_writes_segments_and_recovers_after_restart(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path):
    topics = Topics(topic_prefix)
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {"DRIFTLINE_TOPIC_PREFIX": topic_prefix, "DRIFTLINE_BUCKET": bucket_name, "DRIFTLINE_GRPC_PORT": str(port),
           "DRIFTLINE_LOG_JSON": "true",
           # First run: nothing is due before shutdown, so its segment proves the flush on SIGTERM.
           "DRIFTLINE_FEATURE_SEGMENT_ROWS": "1000", "DRIFTLINE_FEATURE_SEGMENT_SECONDS": "600"}
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, bucket_name, s3.secure)
    producer = Producer(kafka_bootstrap)
    entities = ["c-0", "c-1", "c-2"]
    first_events = [make_event(i, entities[i % 3], None if i % 4 == 3 else i % 2) for i in range(12)]
    labelled_first = [e for e in first_events if e.HasField("label")]

    with ServiceRun("feature", env, tmp_path / "first.log") as first:
        first.wait_serving(address, FEATURE_STORE)
        reader = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.features],  # the topic exists now
                          read_committed=True)
        for event in first_events:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()

        records = read_features(reader, len(first_events))
        assert [r.event_id for r in records] == [e.event_id for e in first_events]
        assert [list(r.values) for r in records] == expected_vectors(first_events)
        assert [r.HasField("label") for r in records] == [e.HasField("label") for e in first_events]
        assert {r.feature_set for r in records} == {"default"}

        online = online_features(address, [*entities, "nobody"])
        last = {r.entity_id: list(r.values) for r in records}
        assert online == {**last, "nobody": None}
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            features_pb2_grpc.FeatureStoreStub(channel).GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(feature_set="other", entity_ids=["c-0"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert store.list_keys("datasets/") == []

        assert first.stop(timeout=60) == 0

    # Every record, labelled or not: a delayed label joins an unlabelled row later.
    [sidecar] = sidecars(store, len(first_events), timeout=0)
    assert sidecar["rows"] == len(first_events) and sidecar["feature_names"] == FEATURES
    assert sidecar["partition"] == 0 and sidecar["first_offset"] == 0
    assert sidecar["key"] == f"datasets/default/segments/p000-000000000000-{sidecar['last_offset']:012d}.parquet"
    assert sidecar["min_event_time_ms"] == 1_700_000_000_000 and sidecar["stream"] == "default"
    table = pq.read_table(io.BytesIO(store.get_bytes(sidecar["key"], expected_sha256=sidecar["sha256"])))
    assert table.column("event_id").to_pylist() == [e.event_id for e in first_events]
    assert table.column("label").to_pylist() == [e.label if e.HasField("label") else None for e in first_events]
    assert table.column("salary_entity_mean").to_pylist() == [v[-1] for v in expected_vectors(first_events)]
    assert len(labelled_first) < len(first_events)

    # A new process with a fresh in-memory store and datadir: the table comes back from its changelog.
    env.update({"DRIFTLINE_FEATURE_SEGMENT_ROWS": "3", "DRIFTLINE_FEATURE_SEGMENT_SECONDS": "1"})
    with ServiceRun("feature", env, tmp_path / "second.log") as second:
        second.wait_serving(address, FEATURE_STORE)
        assert online_features(address, entities) == last

        more = [make_event(100 + i, "c-0", 1) for i in range(4)]
        for event in more:
            producer.produce(topics.events, event, key=event.entity_id)
        producer.flush()
        records = read_features(reader, len(more))
        # The entity mean continues from the recovered state, as if no restart had happened.
        assert [list(r.values) for r in records] == expected_vectors(first_events + more)[-4:]

        # By rows (3) and by time (the 4th, after 1 s); none of the first run's rows again.
        found = sorted(sidecars(store, len(first_events) + 4), key=lambda s: s["first_offset"])
        assert [s["rows"] for s in found] == [len(first_events), 3, 1]
        assert found[0]["last_offset"] < found[1]["first_offset"]
        written = [pq.read_table(io.BytesIO(store.get_bytes(s["key"], expected_sha256=s["sha256"])))
                   for s in found[1:]]
        assert [i for t in written for i in t.column("event_id").to_pylist()] == [e.event_id for e in more]
    reader.close()
