"""services.common.runtime.ConsumerWorker against a real broker: retries, poison records and
dead letters, and static membership."""

import threading
import time
import uuid

from confluent_kafka import Consumer as RawConsumer

from services.common.deadletter import DeadLetterQueue
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.runtime import ConsumerWorker
from support import wait_for


def _topic(kind: str) -> str:
    return f"test.worker.{kind}.{uuid.uuid4().hex[:10]}"


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer(bootstrap)
    for i, value in enumerate(values):
        producer.produce_raw(topic, value, key=f"k{i}".encode(), headers=[("trace-id", f"t{i}".encode())])
    producer.flush()


def _read_all(bootstrap: str, topic: str, want: int, timeout_s: float = 30.0) -> list:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    return got


class _Handler:
    """Records each value it handles once; raises on every record whose value is in `poison`,
    and on the first `flaky` attempts of any batch."""

    def __init__(self, poison: set[bytes], flaky: int = 0) -> None:
        self.poison = poison
        self.flaky = flaky
        self.handled: list[bytes] = []
        self.calls = 0

    def __call__(self, messages) -> None:
        self.calls += 1
        if self.calls <= self.flaky:
            raise ConnectionError("the dependency is not up yet")
        for message in messages:
            if message.value() in self.poison:
                raise ValueError(f"cannot handle {message.value()!r}")
        self.handled += [m.value() for m in messages if m.value() not in self.handled]


def _run(bootstrap: str, topic: str, handler: _Handler, dead_letters: DeadLetterQueue | None,
         max_attempts: int = 2) -> ConsumerWorker:
    consumer = Consumer(bootstrap, f"g-{uuid.uuid4().hex}", [topic])
    worker = ConsumerWorker("test", consumer, handler, dead_letters=dead_letters, max_attempts=max_attempts)
    worker.start()
    return worker


def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_moves_on(kafka_bootstrap):
    topic, dlq = _topic("in"), _topic("dlq")
    ensure_topics(kafka_bootstrap, [topic, dlq])
    values = [f"v{i}".encode() for i in range(30)]
    _produce(kafka_bootstrap, topic, values)
    handler = _Handler(poison={b"v7"})
    worker = _run(kafka_bootstrap, topic, handler, DeadLetterQueue(Producer(kafka_bootstrap), dlq, "test"))
    try:
        wait_for(lambda: len(handler.handled) == 29, timeout=60, what="the records behind the poison one")
        [letter] = _read_all(kafka_bootstrap, dlq, 1)
    finally:
        worker.stop()
    assert handler.handled == [v for v in values if v != b"v7"]
    assert (letter.value(), letter.key()) == (b"v7", b"k7")
    headers = dict(letter.headers())
    assert headers["trace-id"] == b"t7"
    assert headers["driftline.errors.stage"] == b"handle"
    assert headers["driftline.errors.service"] == b"test"
    assert headers["driftline.errors.reason"] == b"ValueError: cannot handle b'v7'"
    assert (headers["driftline.errors.topic"], headers["driftline.errors.partition"],
            headers["driftline.errors.offset"]) == (topic.encode(), b"0", b"7")
    assert worker.dead_letters.sent == 1


def test_a_failure_that_passes_is_retried_and_nothing_is_dead_lettered(kafka_bootstrap):
    topic, dlq = _topic("in"), _topic("dlq")
    ensure_topics(kafka_bootstrap, [topic, dlq])
    values = [f"v{i}".encode() for i in range(10)]
    _produce(kafka_bootstrap, topic, values)
    handler = _Handler(poison=set(), flaky=1)  # fails once, then works: under max_attempts
    worker = _run(kafka_bootstrap, topic, handler, DeadLetterQueue(Producer(kafka_bootstrap), dlq, "test"))
    try:
        wait_for(lambda: len(handler.handled) == 10, timeout=60, what="every record")
    finally:
        worker.stop()
    assert handler.handled == values
    assert worker.failures == 1 and worker.dead_letters.sent == 0


def test_without_a_dead_letter_topic_a_failing_batch_is_retried_not_skipped(kafka_bootstrap):
    topic = _topic("in")
    ensure_topics(kafka_bootstrap, [topic])
    _produce(kafka_bootstrap, topic, [b"a", b"bad", b"c"])
    handler = _Handler(poison={b"bad"})
    worker = _run(kafka_bootstrap, topic, handler, None, max_attempts=1)
    try:
        wait_for(lambda: worker.failures >= 3, timeout=60, what="three failed attempts")
        assert handler.handled == []  # nothing skipped past the record that fails
        handler.poison.clear()  # the dependency is fixed
        wait_for(lambda: len(handler.handled) == 3, timeout=60, what="the batch, once it passes")
    finally:
        worker.stop()
    assert handler.handled == [b"a", b"bad", b"c"]


def test_a_static_member_restarted_under_its_name_takes_its_partition_back(kafka_bootstrap):
    """A member that dies without leaving (as after SIGKILL) holds its partitions until its session
    times out; restarted under the same group.instance.id it gets them back without waiting."""
    topic = _topic("in")
    ensure_topics(kafka_bootstrap, [topic])
    _produce(kafka_bootstrap, topic, [b"a", b"b"])
    group = f"g-{uuid.uuid4().hex}"
    first = Consumer(kafka_bootstrap, group, [topic], instance_id="worker-1", session_timeout_ms=60000)
    wait_for(lambda: bool(first.poll_messages(10, 0.5)), timeout=30, what="the first member's records")
    # Abandon it without leaving the group: a killed process sends no LeaveGroup (a static member
    # never does; its close keeps the membership for the session timeout).
    first.raw.close()
    second = Consumer(kafka_bootstrap, group, [topic], instance_id="worker-1", session_timeout_ms=60000)
    got: list = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() and not got:
            got.extend(second.poll_messages(10, 0.5))

    poller = threading.Thread(target=poll)
    poller.start()
    poller.join(timeout=30)  # well under the 60 s session a dynamic member would wait out
    done.set()
    poller.join()
    second.close()
    assert [m.value() for m in got] == [b"a", b"b"]


def test_an_outage_is_retried_without_dead_lettering_the_records_it_hit(kafka_bootstrap):
    """A handler failing because something it talks to is down (here: deliveries the broker did not
    take) is not handed poison records: nothing goes to the dead-letter topic, and the records are
    handled once the outage ends, however many attempts it lasted."""
    from services.common.kafka import DeliveryError

    topic, dlq = _topic("in"), _topic("dlq")
    ensure_topics(kafka_bootstrap, [topic, dlq])
    _produce(kafka_bootstrap, topic, [b"a", b"b"])
    outage = threading.Event()
    outage.set()
    handled: list[bytes] = []

    def handle(messages) -> None:
        if outage.is_set():
            raise DeliveryError("2 records failed, first: broker transport failure")
        handled.extend(m.value() for m in messages)

    consumer = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", [topic])
    worker = ConsumerWorker("test", consumer, handle, max_attempts=1,
                            dead_letters=DeadLetterQueue(Producer(kafka_bootstrap), dlq, "test"))
    worker.start()
    try:
        wait_for(lambda: worker.failures >= 3, timeout=60, what="attempts during the outage")
        outage.clear()
        wait_for(lambda: handled == [b"a", b"b"], timeout=60, what="the records after the outage")
    finally:
        worker.stop()
    assert worker.dead_letters.sent == 0
