"""Kafka round trip: services.common's producer and consumer beside raw
confluent-kafka on the same broker, in the same run.

Both sides move the same protobuf events and do the same protobuf work
(serialise before producing, parse after consuming) with the same producer
settings (idempotent, acks=all, lz4, linger 5 ms), so the ratio is the cost of
the plumbing itself: schema headers, delivery tracking, decoding into Records.

    python bench/kafka_roundtrip.py [--events 200000] [--repeats 3]

Prints one JSON line per result, then a table. Starts the local stack if no
DRIFTLINE_KAFKA_BOOTSTRAP is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid


from confluent_kafka import Consumer as RawConsumer, Producer as RawProducer

from driftline.v1 import events_pb2
from services.common.kafka import Consumer, Producer, ensure_topics

PRODUCER_CONFIG = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4"}


def make_events(n: int) -> list[events_pb2.Event]:
    events = []
    for i in range(n):
        event = events_pb2.Event(event_id=f"e-{i}", stream="bench", entity_id=f"ent-{i % 1000}", label=i % 2)
        for name in ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"):
            event.fields[name].number = i * 1.5
        event.event_time.FromMilliseconds(1_700_000_000_000 + i)
        events.append(event)
    return events


def produce_driftline(bootstrap: str, topic: str, events) -> float:
    producer = Producer(bootstrap)
    start = time.perf_counter()
    for event in events:
        producer.produce(topic, event, key=event.entity_id)
    producer.flush()
    return time.perf_counter() - start


def produce_raw(bootstrap: str, topic: str, events) -> float:
    producer = RawProducer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    start = time.perf_counter()
    for event in events:
        while True:
            try:
                producer.produce(topic, event.SerializeToString(), event.entity_id)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush()
    return time.perf_counter() - start


def consume_driftline(bootstrap: str, topic: str, n: int) -> float:
    consumer = Consumer(bootstrap, f"bench-{uuid.uuid4().hex}", [topic])
    got, start = 0, None
    while got < n:
        for _record in consumer.iter_records(events_pb2.Event, max_records=1000, timeout=1.0):
            if start is None:
                start = time.perf_counter()
            got += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def consume_raw(bootstrap: str, topic: str, n: int) -> float:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                            "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got, start = 0, None
    while got < n:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is None:
                if start is None:
                    start = time.perf_counter()
                event = events_pb2.Event()
                event.ParseFromString(msg.value())
                got += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def bootstrap_address() -> str:
    if os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP"):
        return os.environ["DRIFTLINE_KAFKA_BOOTSTRAP"]
    from services import devstack

    return devstack.up(quiet=True).kafka_bootstrap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bootstrap = bootstrap_address()
    events = make_events(args.events)
    times: dict[tuple[str, str], list[float]] = {}
    # Interleaved repeats, so a noisy moment on the machine hits both sides alike.
    for _ in range(args.repeats):
        for side, produce, consume in (("driftline", produce_driftline, consume_driftline),
                                       ("raw", produce_raw, consume_raw)):
            topic = f"bench.kafka.{uuid.uuid4().hex[:8]}"
            ensure_topics(bootstrap, [topic])
            times.setdefault(("produce", side), []).append(produce(bootstrap, topic, events))
            times.setdefault(("consume", side), []).append(consume(bootstrap, topic, args.events))

    rows = []
    for op in ("produce", "consume"):
        rates = {side: args.events / statistics.median(times[(op, side)]) for side in ("driftline", "raw")}
        row = {"bench": "kafka_roundtrip", "op": op, "events": args.events, "repeats": args.repeats,
               "driftline_events_per_s": round(rates["driftline"]), "raw_events_per_s": round(rates["raw"]),
               "ratio": round(rates["driftline"] / rates["raw"], 3)}
        rows.append(row)
        print(json.dumps(row))
    print(f"\n{'op':<8} {'driftline ev/s':>15} {'raw ev/s':>12} {'ratio':>7}")
    for row in rows:
        print(f"{row['op']:<8} {row['driftline_events_per_s']:>15,} {row['raw_events_per_s']:>12,} {row['ratio']:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
