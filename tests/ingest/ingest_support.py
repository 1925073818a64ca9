"""What the ingest tests share: raw records as producers send them, reading what ingest published,
and an ingest process on topics of its own."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka

from services.common.kafka import Consumer, decode
from services.common.deadletter import PREFIX
from services.common.settings import Topics
from support import ServiceRun, free_port, unique_prefix


def agrawal(event_id: str | None = "e-1", **overrides) -> dict:
    record = {"event_id": event_id, "entity_id": "c-1", "event_time": 1_700_000_000_000,
              "salary": 50000.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 3, "zipcode": 2,
              "hvalue": 300000.0, "hyears": 5, "loan": 1000.0, "label": 1}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def as_json(record: dict) -> bytes:
    return json.dumps(record).encode()


def read_topic(bootstrap: str, topic: str, until, timeout: float = 30.0) -> list:
    """Reads committed records (confluent-kafka messages, undecoded) from the start of `topic`
    until `until(messages)` holds."""
    consumer = Consumer(bootstrap, f"test-{uuid.uuid4().hex}", [topic], read_committed=True)
    messages: list = []
    try:
        deadline = time.monotonic() + timeout
        while not until(messages):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: condition not met with {len(messages)} records")
            messages += consumer.poll_messages(timeout=0.5)
        return messages
    finally:
        consumer.close()


def produce_located(bootstrap: str, topic: str, records: list[tuple]) -> list[tuple[int, int]]:
    """Produces (key, value, headers[, timestamp ms]) records in order with plain confluent-kafka, as
    an outside producer would; returns the (partition, offset) each was written at."""
    located: list = [None] * len(records)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def delivered(index: int):
        def report(err, msg) -> None:
            assert err is None, err
            located[index] = (msg.partition(), msg.offset())
        return report

    for index, (key, value, headers, *timestamp) in enumerate(records):
        producer.produce(topic, value, key, headers=headers, timestamp=timestamp[0] if timestamp else 0,
                         on_delivery=delivered(index))
    assert producer.flush(30) == 0
    assert None not in located
    return located


def error_headers(msg) -> dict[str, str]:
    """A dead letter's driftline.errors.* headers, as text."""
    return {name: value.decode() for name, value in msg.headers() or ()
            if name.startswith(PREFIX)}


def own_headers(msg) -> list[tuple[str, bytes | None]]:
    return [(name, value) for name, value in msg.headers() or () if not name.startswith(PREFIX)]


def read_to_end(bootstrap: str, topic: str, message_type=None) -> list:
    """Every committed record of a one-partition topic, up to its end when called (decoded as
    `message_type`; without one, the confluent-kafka messages).

    The end is the high watermark read first, and the reader stops once its position (which
    counts transaction markers) reaches it: a read_committed reader once saw a partition-EOF
    before the four committed records at the start of a topic, so an EOF is not taken as the end.
    """
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                                         "isolation.level": "read_committed", "enable.auto.commit": False})
    partition = confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)
    records: list = []
    try:
        end = consumer.get_watermark_offsets(partition, timeout=10)[1]
        consumer.assign([partition])
        deadline = time.monotonic() + 30
        while consumer.position([partition])[0].offset < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: end {end} not reached ({len(records)} records)")
            records += [m if message_type is None else decode(m.value(), message_type)
                        for m in consumer.consume(100, 0.5) if m.error() is None]
        return records
    finally:
        consumer.close()


@dataclass(frozen=True)
class RunningIngest:
    run: ServiceRun
    topics: Topics
    address: str
    bootstrap: str


@contextlib.contextmanager
def running_ingest(bootstrap: str, log_path: Path, **env: str):
    """An ingest process on topics of its own (a fresh prefix), serving once this yields."""
    prefix = unique_prefix()
    port = free_port()
    env = {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_GRPC_PORT": str(port), "DRIFTLINE_LOG_JSON": "true", **env}
    with ServiceRun("ingest", env, log_path) as run:
        run.wait_serving(f"127.0.0.1:{port}", timeout=45)
        yield RunningIngest(run, Topics(prefix), f"127.0.0.1:{port}", bootstrap)
