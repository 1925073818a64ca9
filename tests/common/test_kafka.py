"""services.common.kafka against a real broker."""

import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from driftline.v1 import events_pb2
from services.common.kafka import (
    POLL_LINGER_S, PROTOBUF, Consumer, DecodeFailure, DeliveryError, Producer, decode, ensure_topics, header,
)


def _topic() -> str:
    return f"test.kafka.{uuid.uuid4().hex[:10]}"


def _event(i: int) -> events_pb2.Event:
    event = events_pb2.Event(event_id=f"e-{i}", stream="s", entity_id=f"ent-{i % 3}", label=i % 2)
    event.fields["x"].number = i * 0.5
    event.event_time.FromMilliseconds(1_700_000_000_000 + i)
    return event


def _topic_with_events(kafka_bootstrap: str, count: int, key: str | None = None) -> tuple[str, Producer]:
    """A new topic holding _event(0) .. _event(count - 1), and the producer that wrote them."""
    topic = _topic()
    ensure_topics(kafka_bootstrap, [topic])
    producer = Producer(kafka_bootstrap)
    for i in range(count):
        producer.produce(topic, _event(i), key=key)
    producer.flush()
    return topic, producer


def _drain(consumer: Consumer, want: int, rounds: int = 30):
    got = []
    for _ in range(rounds):
        got += consumer.poll_batch(events_pb2.Event, timeout=1.0)
        if len(got) >= want:
            break
    return got


def test_protobuf_records_round_trip_with_keys_and_headers(kafka_bootstrap):
    topic = _topic()
    ensure_topics(kafka_bootstrap, [topic])
    producer = Producer(kafka_bootstrap)
    sent = [_event(i) for i in range(20)]
    for event in sent:
        producer.produce(topic, event, key=event.entity_id, headers=[
            ("trace-id", b"t-1"), ("content-type", PROTOBUF.encode()), ("message-type", b"driftline.v1.Event")])
    producer.flush()
    assert producer.delivered == 20

    consumer = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", [topic])
    records = _drain(consumer, 20)
    consumer.close()
    assert [r.value for r in records] == sent
    assert [r.key.decode() for r in records] == [e.entity_id for e in sent]
    first = records[0]
    assert header(first.headers, "content-type") == PROTOBUF
    assert header(first.headers, "message-type") == "driftline.v1.Event"
    assert header(first.headers, "trace-id") == "t-1"
    assert first.value.fields["x"].number == 0.0 and first.value.HasField("label")


def test_a_consumer_group_resumes_after_its_last_commit(kafka_bootstrap):
    topic, producer = _topic_with_events(kafka_bootstrap, 10)
    group = f"g-{uuid.uuid4().hex}"

    first = Consumer(kafka_bootstrap, group, [topic])
    seen = _drain(first, 10)
    first.commit()
    first.close()
    assert [r.value.event_id for r in seen] == [f"e-{i}" for i in range(10)]

    for i in range(10, 15):
        producer.produce(topic, _event(i))
    producer.flush()
    second = Consumer(kafka_bootstrap, group, [topic])
    resumed = _drain(second, 5)
    second.close()
    assert [r.value.event_id for r in resumed] == [f"e-{i}" for i in range(10, 15)]


def test_an_uncommitted_batch_is_delivered_again(kafka_bootstrap):
    topic, _ = _topic_with_events(kafka_bootstrap, 5)
    group = f"g-{uuid.uuid4().hex}"
    crashed = Consumer(kafka_bootstrap, group, [topic])
    assert len(_drain(crashed, 5)) == 5
    crashed.close()  # stopped before commit: nothing may be lost
    again = Consumer(kafka_bootstrap, group, [topic])
    assert [r.value.event_id for r in _drain(again, 5)] == [f"e-{i}" for i in range(5)]
    again.close()


def test_topic_creation_is_idempotent(kafka_bootstrap):
    topics = [_topic(), _topic()]
    ensure_topics(kafka_bootstrap, topics, partitions=3)
    ensure_topics(kafka_bootstrap, topics, partitions=3)
    ensure_topics(kafka_bootstrap, topics[:1])
    meta = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert all(len(meta[t].partitions) == 3 for t in topics)


def test_a_failed_delivery_is_raised_not_lost(kafka_bootstrap):
    # The client accepts the record; the broker (1 MB default limit) refuses it.
    producer = Producer(kafka_bootstrap, config={"message.timeout.ms": 5000, "message.max.bytes": 10_000_000,
                                                 "compression.type": "none"})
    too_big = b"x" * 2_000_000
    producer.produce_raw(_topic(), too_big)
    with pytest.raises(DeliveryError):
        producer.flush(10)


def test_a_value_of_the_wrong_type_is_a_clear_decode_failure():
    with pytest.raises(DecodeFailure, match="not a driftline.v1.Event"):
        decode(b"\xff\xff\xff", events_pb2.Event)


def test_a_consumer_reports_its_lag_per_partition_from_its_commits(kafka_bootstrap):
    from confluent_kafka import TopicPartition

    from services.common.kafka import CONSUMER_LAG

    topic, _ = _topic_with_events(kafka_bootstrap, 12, key="k")
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(kafka_bootstrap, group, [topic], config={"statistics.interval.ms": 200})

    def lag_becomes(wanted: int) -> float:
        for _ in range(50):  # statistics are served by polls, every 200 ms
            consumer.poll_messages(1, 0.1)
            if CONSUMER_LAG.labels(group, topic, "0")._value.get() == wanted:
                break
        return CONSUMER_LAG.labels(group, topic, "0")._value.get()

    try:
        assert len(_drain(consumer, 12)) == 12
        consumer.raw.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
        assert lag_becomes(7) == 7  # 12 in the partition, the group committed 5
        consumer.commit()
        assert lag_becomes(0) == 0
    finally:
        consumer.close()


@pytest.mark.timeout(60)
def test_a_poll_returns_the_records_there_without_waiting_out_its_timeout(kafka_bootstrap):
    # A poll's timeout bounds the wait for a *first* record. Were it spent filling the batch
    # (librdkafka's consume(n, timeout)), this poll would block for 600 s and the test time out.
    topic, _ = _topic_with_events(kafka_bootstrap, 3)
    consumer = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        got = []
        while len(got) < 3:
            got += consumer.poll_batch(events_pb2.Event, max_records=500, timeout=600)
        assert [r.value.event_id for r in got] == ["e-0", "e-1", "e-2"]
        assert consumer.poll_batch(events_pb2.Event, max_records=2, timeout=0.5) == []
    finally:
        consumer.close()


class _ScriptedRaw:
    """A librdkafka consumer stand-in that answers each `consume` call from a script."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers, self.calls = answers, []

    def consume(self, max_records: int, timeout: float) -> list[str]:
        self.calls.append((max_records, timeout))
        if self.answers:
            return self.answers.pop(0)
        time.sleep(timeout)  # as librdkafka does when nothing comes
        return []


def test_a_batch_is_the_records_of_one_consume_call():
    # librdkafka purges a revoked partition's records only from the call serving the rebalance,
    # so records of two calls in one batch could carry a revoked one into a transaction.
    consumer = Consumer.__new__(Consumer)
    consumer.raw = _ScriptedRaw([[], [], ["a", "b"], ["c"]])
    assert consumer._consume(500, timeout=10) == ["a", "b"]
    assert consumer.raw.calls == [(500, POLL_LINGER_S)] * 3
    assert consumer._consume(500, timeout=10) == ["c"]
    consumer.raw = _ScriptedRaw([])
    assert consumer._consume(500, timeout=0.12) == []
    waits = [timeout for _, timeout in consumer.raw.calls]
    assert len(waits) >= 2 and max(waits) <= POLL_LINGER_S and sum(waits) <= 0.12
