"""ingest under faults, as real processes over a real broker: every distinct event exactly once in
`driftline.events` (read_committed) through SIGKILLs with re-sent duplicates, through a zombie
(SIGSTOP past its session timeout while another member takes over, then SIGCONT), and past a
poison record; and the published-ids topic that de-duplication survives restarts by."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
from confluent_kafka import Consumer as RawConsumer, TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc
from services.common.kafka import Producer, ensure_topics
from services.common.settings import Topics
from services.ingest.dedup import RecentIds, dedup_key
from services.ingest.idlog import DAY_MS, IdLog, topic_config
from ingest_support import (
    agrawal, as_json, error_headers, own_headers, produce_located, read_to_end, read_topic, running_ingest,
)
from support import ServiceRun, free_port, unique_prefix, wait_for

JSON = [("content-type", b"application/json")]
# The broker's smallest session timeout (group.min.session.timeout.ms): a zombie is found out soon.
SESSION_TIMEOUT_MS = 6000


def test_the_id_log_loads_the_committed_ids_then_follows_new_ones(kafka_bootstrap):
    topic = f"{unique_prefix()}driftline.events.ids"
    ensure_topics(kafka_bootstrap, [topic], config=topic_config(DAY_MS))
    producer = Producer(kafka_bootstrap, transactional_id=f"test-{uuid.uuid4().hex}")

    def write(keys: list[bytes], commit: bool = True) -> None:
        producer.begin_transaction()
        for key in keys:
            producer.produce_raw(topic, b"", key)
        producer.commit_transaction() if commit else producer.abort_transaction()

    first, second, aborted, later = (dedup_key("sea", f"e-{i}") for i in range(4))
    write([first, second])
    write([aborted], commit=False)
    recent = RecentIds(10)
    ids = IdLog(kafka_bootstrap, topic, recent, "test")
    assert ids.load() == 2
    assert first in recent and second in recent and aborted not in recent
    ids.start()
    try:
        write([later])  # another replica's, published while this one runs
        wait_for(lambda: later in recent, 30, "the follower to read the new id")
        assert aborted not in recent
    finally:
        ids.stop()


class Stream(threading.Thread):
    """Produces `records` (key, value, headers) to a topic at a steady pace, as an outside producer."""

    def __init__(self, bootstrap: str, topic: str, records: list[tuple], seconds: float) -> None:
        super().__init__(daemon=True)
        self.producer = Producer(bootstrap)
        self.topic = topic
        self.records = records
        self.pause = seconds / len(records)

    def run(self) -> None:
        for key, value, headers in self.records:
            self.producer.produce_raw(self.topic, value, key, headers)
            time.sleep(self.pause)
        self.producer.flush()

    def finish(self) -> None:
        self.join(120)
        assert not self.is_alive(), "the stream did not finish"


def stream_of(ids: list[str], resend_every: int) -> list[tuple]:
    """Each id once, and every `resend_every`-th one again a few records later (a producer's retry)."""
    records = []
    for index, event_id in enumerate(ids):
        records.append((event_id.encode(), as_json(agrawal(event_id)), JSON))
        if index % resend_every == resend_every - 1:
            records.append((ids[index - 3].encode(), as_json(agrawal(ids[index - 3])), JSON))
    return records


def end_offset(bootstrap: str, topic: str) -> int:
    """The one partition's high watermark: it grows as ingest produces, committed or not."""
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": f"end-{uuid.uuid4().hex}"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1]
    finally:
        consumer.close()


def wait_progress(bootstrap: str, topic: str, records: int, what: str) -> None:
    start = end_offset(bootstrap, topic)
    wait_for(lambda: end_offset(bootstrap, topic) >= start + records, 60, what, every=0.2)


def published_ids(bootstrap: str, topics: Topics) -> collections.Counter:
    return collections.Counter(e.event_id for e in read_to_end(bootstrap, topics.events, events_pb2.Event))


def wait_all_published(bootstrap: str, topics: Topics, ids: list[str]) -> collections.Counter:
    """Every id published (read_committed), then how many times each was."""
    def complete():
        counts = published_ids(bootstrap, topics)
        return counts if set(ids) <= set(counts) else None
    return wait_for(complete, 90, f"all {len(ids)} events in {topics.events}", every=1.0)


def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


def ingest_env(prefix: str, port: int, **extra: str) -> dict[str, str]:
    return {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_GRPC_PORT": str(port),
            "DRIFTLINE_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS), "DRIFTLINE_INGEST_POLL_MAX_RECORDS": "100",
            **extra}


def start_ingest(env: dict[str, str], log_path: Path) -> ServiceRun:
    run = ServiceRun("ingest", env, log_path)
    run.wait_serving(f"127.0.0.1:{env['DRIFTLINE_GRPC_PORT']}", timeout=60)
    return run


def test_sigkill_three_times_during_a_stream_with_resent_duplicates_publishes_each_event_once(
        kafka_bootstrap, tmp_path):
    prefix, port = unique_prefix(), free_port()
    topics = Topics(prefix)
    env = ingest_env(prefix, port, DRIFTLINE_INSTANCE_ID="ingest")
    ids = [f"k-{i}" for i in range(3000)]
    sent = stream_of(ids, resend_every=10)
    run = start_ingest(env, tmp_path / "ingest-0.log")
    stream = Stream(kafka_bootstrap, topics.events_raw, sent, seconds=25)
    stream.start()
    try:
        for kill in range(1, 4):
            wait_progress(kafka_bootstrap, topics.events, 200, f"ingest to publish before kill {kill}")
            run.process.kill()
            run.process.wait(30)
            # Re-sent while ingest is down, of what it had published: only the ids it wrote to its
            # published-ids topic tell the restarted process that these are duplicates.
            again = random.Random(kill).sample(sorted(published_ids(kafka_bootstrap, topics)), 100)
            produce_located(kafka_bootstrap, topics.events_raw,
                            [(i.encode(), as_json(agrawal(i)), JSON) for i in again])
            run = start_ingest(env, tmp_path / f"ingest-{kill}.log")
        stream.finish()
        counts = wait_all_published(kafka_bootstrap, topics, ids)
        assert sorted(counts) == sorted(ids)
        assert [i for i, n in counts.items() if n > 1] == []
        # Every raw record was consumed, the re-sent duplicates among them: they were judged, not missed.
        group = f"{prefix}driftline-ingest"
        wait_for(lambda: committed_offset(kafka_bootstrap, group, topics.events_raw) >=
                 end_offset(kafka_bootstrap, topics.events_raw), 30, "ingest to commit the whole raw topic")
        run.assert_running()
    finally:
        run.stop()


def group_owner(bootstrap: str, group: str) -> str | None:
    """The static member (group.instance.id) that holds the group's partition, if any does."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(10)
    return next((m.group_instance_id for m in description.members if m.assignment.topic_partitions), None)


def test_a_zombie_resumed_after_another_member_took_its_partition_publishes_nothing_twice(
        kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    topics = Topics(prefix)
    group = f"{prefix}driftline-ingest"
    ids = [f"z-{i}" for i in range(2500)]
    stream = Stream(kafka_bootstrap, topics.events_raw, stream_of(ids, resend_every=25), seconds=25)
    runs = {}
    for name in ("a", "b"):
        runs[name] = start_ingest(ingest_env(prefix, free_port(), DRIFTLINE_INSTANCE_ID=f"ingest-{name}",
                                             DRIFTLINE_INGEST_TRANSACTIONAL_ID=f"{prefix}ingest-{name}"),
                                  tmp_path / f"ingest-{name}.log")
    try:
        stream.start()
        wait_progress(kafka_bootstrap, topics.events, 200, "the first member to publish")
        zombie = wait_for(lambda: group_owner(kafka_bootstrap, group), 30, "a member to own the partition")[-1]
        heir = "b" if zombie == "a" else "a"
        runs[zombie].process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: group_owner(kafka_bootstrap, group) == f"ingest-{heir}", 60,
                     f"ingest-{heir} to take the partition over", every=0.5)
            wait_progress(kafka_bootstrap, topics.events, 200, f"ingest-{heir} to publish")
        finally:
            runs[zombie].process.send_signal(signal.SIGCONT)
        stream.finish()
        counts = wait_all_published(kafka_bootstrap, topics, ids)
        assert sorted(counts) == sorted(ids)
        assert [i for i, n in counts.items() if n > 1] == []
        for run in runs.values():
            run.assert_running()  # the zombie rejoined as an ordinary member
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                os.kill(run.process.pid, signal.SIGCONT)  # a failure while it was stopped
            run.stop()


# JSON nested deeper than the parser's recursion limit: it once made json.loads raise RecursionError
# in the processing itself (a poison record, dead-lettered only after max_attempts); the parse
# step now refuses anything deeper than its depth limit, at once.
DEEP = b'{"event_id": "deep", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_a_record_that_once_broke_the_processing_is_dead_lettered_at_once_and_the_records_behind_it_published(
        kafka_bootstrap, tmp_path):
    with running_ingest(kafka_bootstrap, tmp_path / "ingest.log", DRIFTLINE_MAX_ATTEMPTS="3") as ingest:
        topics = ingest.topics
        located = produce_located(kafka_bootstrap, topics.events_raw, [
            (b"p-1", as_json(agrawal("p-1")), JSON), (b"deep", DEEP, JSON), (b"p-2", as_json(agrawal("p-2")), JSON)])
        with grpc.insecure_channel(ingest.address) as channel:
            answer = ingest_pb2_grpc.IngestStub(channel).IngestBatch(ingest_pb2.IngestRequest(records=[
                ingest_pb2.RawRecord(key="deep", value=DEEP), ingest_pb2.RawRecord(value=as_json(agrawal("p-3")))]),
                timeout=30)
        assert [(r.accepted, r.event_id) for r in answer.results] == [(False, ""), (True, "p-3")]
        assert answer.results[0].reason.startswith("JSON nested deeper than")

        # The gRPC one first: a Kafka origin is three headers, a gRPC one two.
        dead = sorted(read_topic(kafka_bootstrap, topics.events_dlq, until=lambda got: len(got) >= 2),
                      key=lambda m: len(error_headers(m)))
        assert [(m.key(), m.value(), own_headers(m)) for m in dead] == [(b"deep", DEEP, []), (b"deep", DEEP, JSON)]
        errors = [error_headers(m) for m in dead]
        assert [e["driftline.errors.stage"] for e in errors] == ["parse"] * 2
        assert all(e["driftline.errors.reason"].startswith("JSON nested deeper than") for e in errors)
        assert errors[0]["driftline.errors.grpc.index"] == "0"
        assert (errors[1]["driftline.errors.topic"], errors[1]["driftline.errors.offset"]) == (
            topics.events_raw, str(located[1][1]))
        wait_for(lambda: set(published_ids(kafka_bootstrap, topics)) >= {"p-1", "p-2", "p-3"}, 60,
                 "the records around the poison one to be published")
        assert sorted(published_ids(kafka_bootstrap, topics).elements()) == ["p-1", "p-2", "p-3"]
        assert len(read_to_end(kafka_bootstrap, topics.events_dlq)) == 2
        ingest.run.assert_running()
