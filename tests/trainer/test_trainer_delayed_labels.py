"""Delayed labels end to end, as real processes: events without a label go through the feature
service, their labels come 30 s (of event time) later on `driftline.labels`, the feature service
files them into label segments, and the next dataset the trainer cuts over those events holds
them with those labels, where the dataset cut before the labels came did not."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from driftline.v1 import events_pb2, training_pb2
from helpers_models import SCHEMA_FIELDS, T0_MS, agrawal_rows
from services.common.datasets import labels_prefix, segments_prefix
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.schema import load_schema
from services.common.settings import Topics
from support import ServiceRun, free_port, unique_bucket, unique_prefix, wait_for

SUCCEEDED = training_pb2.TrainingResult.SUCCEEDED
SCHEMA = load_schema(Path(__file__).resolve().parents[2] / "config/streams/default.json")
LABEL_DELAY_MS = 30_000


def event_of(row: dict, labelled: bool) -> events_pb2.Event:
    event = events_pb2.Event(event_id=row["event_id"], stream="default", entity_id=row["entity_id"])
    event.event_time.FromMilliseconds(row["event_time_ms"])
    for name in SCHEMA_FIELDS:
        if SCHEMA.spec(name).type == "integer":
            event.fields[name].integer = int(row[name])
        else:
            event.fields[name].number = row[name]
    if labelled:
        event.label = row["label"]
    return event


def label_of(row: dict) -> events_pb2.Label:
    label = events_pb2.Label(event_id=row["event_id"], label=row["label"])
    label.event_time.FromMilliseconds(row["event_time_ms"])
    label.labelled_at.FromMilliseconds(row["event_time_ms"] + LABEL_DELAY_MS)
    return label


def rows_in(store, prefix: str) -> int:
    return sum(store.get_json(k)["rows"] for k in store.list_keys(prefix) if k.endswith(".json"))


def test_a_label_sent_30_s_after_its_event_is_in_the_next_dataset_that_covers_it(kafka_bootstrap, s3, tmp_path):
    topics, store = Topics(unique_prefix()), s3.store(unique_bucket())
    ensure_topics(kafka_bootstrap, [topics.events, topics.labels, topics.training_requests,
                                    topics.training_results])
    common = {"DRIFTLINE_TOPIC_PREFIX": topics.prefix, "DRIFTLINE_BUCKET": store.bucket}
    feature_port, registry_port = free_port(), free_port()
    rows = agrawal_rows(300, seed=41)
    on_time, late = rows[:200], rows[200:]
    producer = Producer(kafka_bootstrap)
    results = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", [topics.training_results])

    def train(min_rows: int) -> training_pb2.TrainingResult:
        request = training_pb2.TrainingRequest(request_id=uuid.uuid4().hex, model_name="m", stream="default",
                                               min_rows=min_rows, reason="test")
        request.window_start.FromMilliseconds(T0_MS)
        request.window_end.FromMilliseconds(rows[-1]["event_time_ms"])
        producer.produce(topics.training_requests, request, key="m")
        producer.flush()
        found: list = []
        wait_for(lambda: found.extend(r.value for r in results.poll_batch(training_pb2.TrainingResult, timeout=0.5)
                                      if r.value.request_id == request.request_id) or found, 90,
                 "the training result", every=0)
        assert found[0].status == SUCCEEDED, found[0].error
        return found[0]

    with (ServiceRun("feature", {**common, "DRIFTLINE_GRPC_PORT": str(feature_port),
                                 "DRIFTLINE_INSTANCE_ID": "feature", "DRIFTLINE_FEATURE_SEGMENT_SECONDS": "1"},
                     tmp_path / "feature.log") as feature,
          ServiceRun("registry", {**common, "DRIFTLINE_GRPC_PORT": str(registry_port),
                                  "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db")},
                     tmp_path / "registry.log") as registry,
          ServiceRun("trainer", {**common, "DRIFTLINE_REGISTRY_ADDRESS": f"127.0.0.1:{registry_port}",
                                 "DRIFTLINE_WAIT_TIMEOUT_S": "30", "DRIFTLINE_POLL_INTERVAL_S": "0.2"},
                     tmp_path / "trainer.log") as trainer):
        registry.wait_serving(f"127.0.0.1:{registry_port}", "driftline.v1.Registry")
        feature.wait_serving(f"127.0.0.1:{feature_port}", "driftline.v1.FeatureStore")
        for i, row in enumerate(rows):
            producer.produce(topics.events, event_of(row, labelled=i < len(on_time)), key=row["entity_id"])
        producer.flush()
        wait_for(lambda: rows_in(store, segments_prefix("default")) >= len(rows), 60, "the feature segments")

        before = train(len(on_time))
        for row in late:
            producer.produce(topics.labels, label_of(row), key=row["event_id"])
        producer.flush()
        wait_for(lambda: rows_in(store, labels_prefix("default")) >= len(late), 60, "the label segments")
        after = train(len(rows))
        trainer.assert_running()
    results.close()

    manifests = [store.get_json(f"datasets/default/versions/{r.dataset_id}.json") for r in (before, after)]
    assert [m["rows"] for m in manifests] == [200, 300] and before.dataset_id != after.dataset_id
    assert manifests[0]["label_segments"] == []
    assert sum(s["labels"] for s in manifests[1]["label_segments"]) == len(late)
    # The 60 most recent rows are the eval slice: all of them events whose label came late.
    eval_rows = pq.read_table(io.BytesIO(store.get_bytes(f"datasets/default/eval/{after.dataset_id}.parquet")))
    assert eval_rows.column("event_id").to_pylist() == [r["event_id"] for r in rows[240:]]
    assert eval_rows.column("label").to_pylist() == [r["label"] for r in rows[240:]]
