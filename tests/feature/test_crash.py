"""feature under SIGKILL, as a real process restarted at once under the same instance id (what the
supervisor does): no event is lost or doubled in `driftline.features` (read_committed) nor in the
segments, the state after the crashes is the state of one uninterrupted run, and the group drains.

The recovery figures (start → SERVING, SERVING → lag back to steady) are printed, not asserted;
`FEATURE_CRASH_EVENTS=20000 FEATURE_CRASH_KILLS=3 pytest tests/feature/test_crash.py -s` is the
long form the issue measures.
"""

from __future__ import annotations

import io
import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from confluent_kafka import Consumer as KafkaConsumer, TopicPartition

from driftline.v1 import events_pb2, features_pb2
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.schema import load_schema
from services.common.settings import Topics
from services.feature.settings import FeatureSettings
from feature_support import FEATURE_STORE, offline_vectors, read_features, schema_event, service_env, sidecars
from support import ServiceRun, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(REPO_ROOT / "config/streams/default.json")
EVENTS = int(os.environ.get("FEATURE_CRASH_EVENTS", "3000"))
KILLS = int(os.environ.get("FEATURE_CRASH_KILLS", "2"))
RATE = 1000  # events a second: the stream goes on while the process is down
STEADY_LAG = 500  # one batch (DRIFTLINE_FEATURE_BATCH_RECORDS): what the lag is between two transactions


def make_event(i: int) -> events_pb2.Event:
    event = schema_event(SCHEMA, i, f"c-{i % 50}")
    if i % 2:
        event.label = i % 3 % 2
    return event


class Stream(threading.Thread):
    """Produces the events at RATE a second; `sent` says how many so far."""

    def __init__(self, bootstrap: str, topic: str, events: list[events_pb2.Event]) -> None:
        super().__init__(daemon=True)
        self.producer = Producer(bootstrap)
        self.topic, self.events, self.sent = topic, events, 0

    def run(self) -> None:
        started = time.monotonic()
        for i, event in enumerate(self.events):
            self.producer.produce(self.topic, event, key=event.entity_id)
            self.sent = i + 1
            if (delay := started + (i + 1) / RATE - time.monotonic()) > 0:
                time.sleep(delay)
        self.producer.flush()


class Lag:
    """The feature group's lag on the events topic: its end minus its committed offset."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.consumer = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": group})
        self.partition = TopicPartition(topic, 0)

    def __call__(self) -> int:
        _, end = self.consumer.get_watermark_offsets(self.partition, timeout=5, cached=False)
        committed = self.consumer.committed([self.partition], timeout=5)[0].offset
        return end - max(committed, 0)


def test_sigkilled_feature_process_loses_and_doubles_nothing_and_drains(
        kafka_bootstrap, s3, bucket_name, topic_prefix, tmp_path):
    topics = Topics(topic_prefix)
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = service_env(topic_prefix, bucket_name, port, DRIFTLINE_FEATURE_SEGMENT_SECONDS="1")
    settings = FeatureSettings(topic_prefix=topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.events, topics.features])
    events = [make_event(i) for i in range(EVENTS)]
    stream = Stream(kafka_bootstrap, topics.events, events)
    lag = Lag(kafka_bootstrap, settings.app_id, topics.events)
    recoveries = []

    run = ServiceRun("feature", env, tmp_path / "feature-0.log")
    try:
        run.wait_serving(address, FEATURE_STORE)
        stream.start()
        for kill in range(1, KILLS + 1):
            wait_for(lambda: stream.sent >= EVENTS * kill // (KILLS + 1), 120, f"event {EVENTS * kill // (KILLS + 1)}")
            run.process.kill()  # SIGKILL, mid-stream and most likely mid-transaction
            run.process.wait()
            started = time.monotonic()
            run = ServiceRun("feature", env, tmp_path / f"feature-{kill}.log")
            run.wait_serving(address, FEATURE_STORE)
            serving = time.monotonic()
            wait_for(lambda: lag() <= STEADY_LAG, 120, "the lag back to steady", every=0.05)
            recoveries.append((serving - started, time.monotonic() - serving))
        stream.join(120)
        assert stream.sent == EVENTS
        wait_for(lambda: lag() == 0, 120, "the group to drain the stream", every=0.1)
        assert run.stop(timeout=60) == 0  # the segment writer writes what it holds
    finally:
        run.stop()
        lag.consumer.close()
    print(f"\n{EVENTS} events, {KILLS} SIGKILLs; per restart (start → SERVING s, SERVING → lag ≤ {STEADY_LAG} s): "
          + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in recoveries)
          + f"; median back to steady after SERVING {statistics.median(b for _, b in recoveries):.2f} s")

    reader = Consumer(kafka_bootstrap, f"test-{os.getpid()}-{time.time_ns()}", [topics.features], read_committed=True)
    records = read_features(reader, EVENTS)
    records += [r.value for r in reader.poll_batch(features_pb2.FeatureRecord, timeout=2)]  # nothing more
    reader.close()
    assert Counter(Counter(r.event_id for r in records).values()) == {1: EVENTS}
    # One partition, in order: every vector is the one of an uninterrupted run, so no crash applied an
    # event to an entity's state twice or lost one from it.
    assert [r.event_id for r in records] == [e.event_id for e in events]
    assert [list(r.values) for r in records] == offline_vectors(SCHEMA, events)

    store = s3.store(bucket_name)
    ids = [i for s in sidecars(store, EVENTS, timeout=0) for i in pq.read_table(io.BytesIO(
        store.get_bytes(s["key"], expected_sha256=s["sha256"]))).column("event_id").to_pylist()]
    assert Counter(Counter(ids).values()) == {1: EVENTS}
