"""Kafka on confluent-kafka: a producer that never loses a failed delivery
silently, a consumer that commits only what was processed, idempotent topic
creation, and protobuf values with self-describing headers.

Delivery is at least once everywhere; consumers de-duplicate by the id each
record carries (`event_id`, `request_id`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from confluent_kafka import (
    Consumer as _Consumer,
    KafkaError,
    KafkaException,
    Message as _KafkaMessage,
    Producer as _Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf.message import DecodeError, Message
from prometheus_client import Gauge

log = logging.getLogger(__name__)

CONTENT_TYPE = "content-type"
MESSAGE_TYPE = "message-type"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

M = TypeVar("M", bound=Message)


class DeliveryError(RuntimeError):
    """At least one produced record was not acknowledged by the broker."""


class DecodeFailure(ValueError):
    """A record's value is not the protobuf message the consumer expected."""


def decode(value: bytes | None, message_type: type[M]) -> M:
    """Parses a protobuf value, raising DecodeFailure with what was wrong."""
    message = message_type()
    try:
        message.ParseFromString(value or b"")
    except DecodeError as exc:
        raise DecodeFailure(f"not a {message_type.DESCRIPTOR.full_name}: {exc}") from exc
    return message


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """Returns the last value of a header as text (Kafka allows repeats), or None."""
    found = None
    for key, value in headers or ():
        if key.lower() == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


class _DeliveryReports:
    """The delivery callback's state, kept apart from the Producer wrapper.

    librdkafka holds the callback; were it a bound method of the wrapper, the
    wrapper and its client would form a cycle that only the garbage collector
    frees, and an unused producer would outlive its owner, still connected.
    """

    __slots__ = ("delivered", "failures")

    def __init__(self) -> None:
        self.delivered = 0
        self.failures: list[str] = []

    def __call__(self, err: KafkaError | None, msg: _KafkaMessage) -> None:
        if err is None:
            self.delivered += 1
            return
        # A record purged by an aborted transaction was given up on purpose, not lost.
        if err.code() != KafkaError._PURGE_QUEUE:
            log.error("delivery failed", extra={"topic": msg.topic(), "error": err.str()})
        self.failures.append(f"{msg.topic()}: {err.str()}")


# The exit status of a process whose Kafka client can no longer go on (EX_SOFTWARE).
FATAL_EXIT_STATUS = 70
# How long a transaction call may block (librdkafka's own timeout), and how much longer it may
# take before the process gives up on the client (CallWatchdog).
TRANSACTION_CALL_S = 15
CALL_GRACE_S = 5


class CallWatchdog:
    """Ends the process when a client call outlives its own timeout by `CALL_GRACE_S`.

    Seen after a broker restart: `send_offsets_to_transaction(..., 30)` blocked for minutes,
    and the process, alive and silent, consumed nothing more. A call that ignores its timeout
    leaves the client in a state nothing in the process can repair; the supervisor (or
    Kubernetes) restarts the process, whose new producer fences the old one's transaction
    (exactly once is kept: nothing of the stuck transaction was committed). One thread per
    transactional producer checks once a second; a call costs two attribute writes.
    """

    def __init__(self) -> None:
        self._call: tuple[str, float] | None = None
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bounded(self, name: str, timeout_s: float) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="kafka-call-watchdog", daemon=True)
            self._thread.start()
        self._call = (name, time.monotonic() + timeout_s + CALL_GRACE_S)
        try:
            yield
        finally:
            self._call = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            call = self._call
            if call is not None and time.monotonic() > call[1]:
                log.critical("a kafka call outlived its timeout; exiting so that the process is restarted",
                             extra={"call": call[0], "exit_status": FATAL_EXIT_STATUS})
                logging.shutdown()
                os._exit(FATAL_EXIT_STATUS)


class Producer:
    """An idempotent, acks=all producer of protobuf records.

    Delivery failures are collected by the delivery callback and raised from
    `flush()`, so a caller that flushes before it commits its input never
    commits past a record the broker did not take.
    """

    def __init__(self, bootstrap: str, *, transactional_id: str | None = None,
                 linger_ms: int = 5, config: Mapping[str, object] | None = None) -> None:
        self._reports = _DeliveryReports()
        conf: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "compression.type": "lz4",
            "on_delivery": self._reports,
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
        conf.update(config or {})
        self._producer = _Producer(conf)
        self._calls = CallWatchdog() if transactional_id else None
        if transactional_id:
            with self._calls.bounded("init_transactions", TRANSACTION_CALL_S):
                self._producer.init_transactions(TRANSACTION_CALL_S)

    @property
    def delivered(self) -> int:
        """Records the broker has acknowledged so far."""
        return self._reports.delivered

    def produce(self, topic: str, message: Message, key: str | bytes | None = None,
                headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        # Deterministic: maps in key order, so a record published again (a trainer's stored result
        # re-published to a redelivered request) is the same bytes, not the same fields reordered.
        self.produce_raw(topic, message.SerializeToString(deterministic=True), key, headers)

    def produce_raw(self, topic: str, value: bytes | None, key: str | bytes | None = None,
                    headers: Sequence[tuple[str, bytes | None]] | None = None,
                    timestamp: int | None = None, partition: int | None = None) -> None:
        """Queues bytes; waits for room when the local queue is full instead of failing.

        `timestamp`: the record's timestamp in epoch milliseconds (e.g. the one of the record
        it copies); None: now. `partition`: None lets the key choose (a changelog row goes to
        the partition of the event that changed it, whatever its key)."""
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, timestamp=timestamp or 0, **where)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Waits for every queued record; raises DeliveryError if any failed or remain."""
        remaining = self._producer.flush(timeout)
        self._raise_failures()
        if remaining:
            raise DeliveryError(f"{remaining} records still undelivered after {timeout}s")

    def _raise_failures(self) -> None:
        if self._reports.failures:
            failures, self._reports.failures = self._reports.failures, []
            raise DeliveryError(f"{len(failures)} records failed, first: {failures[0]}")

    # Transactions: read-process-write exactly once (ingest).
    def begin_transaction(self) -> None:
        self._producer.begin_transaction()

    def send_offsets_to_transaction(self, consumer: "Consumer",
                                    offsets: Sequence[TopicPartition] | None = None) -> None:
        """Commits `offsets` (default: the consumer's position) with the transaction, under the
        consumer's group generation, so a fenced zombie's commit fails (KIP-447)."""
        raw = consumer.raw
        with self._calls.bounded("send_offsets_to_transaction", TRANSACTION_CALL_S):
            self._producer.send_offsets_to_transaction(
                list(offsets) if offsets is not None else raw.position(raw.assignment()),
                raw.consumer_group_metadata(), TRANSACTION_CALL_S)

    def commit_transaction(self) -> None:
        with self._calls.bounded("commit_transaction", TRANSACTION_CALL_S):
            self._producer.commit_transaction(TRANSACTION_CALL_S)
        self._raise_failures()

    def abort_transaction(self) -> None:
        with self._calls.bounded("abort_transaction", TRANSACTION_CALL_S):
            self._producer.abort_transaction(TRANSACTION_CALL_S)
        # The aborted records' "purged" reports are served by a later poll: they fail nothing after.
        self._producer.poll(0)
        self._reports.failures.clear()

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)


class Record(Generic[M]):
    """A consumed record: its decoded value, and where it came from.

    The rest is read from the underlying message on demand, because a consumer
    on the hot path touches little besides the value.
    """

    __slots__ = ("message", "value")

    def __init__(self, message: _KafkaMessage, value: M) -> None:
        self.message = message
        self.value = value

    @property
    def topic(self) -> str:
        return self.message.topic()

    @property
    def partition(self) -> int:
        return self.message.partition()

    @property
    def offset(self) -> int:
        return self.message.offset()

    @property
    def key(self) -> bytes | None:
        return self.message.key()

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return self.message.headers() or []

    @property
    def timestamp_ms(self) -> int:
        return self.message.timestamp()[1]

    def __repr__(self) -> str:
        return f"Record({self.topic}[{self.partition}]@{self.offset}, {type(self.value).__name__})"


# librdkafka's own view of each assigned partition's lag (high watermark − position), read from its
# statistics callback, so every confluent-kafka consumer of every service reports it with no polling of
# its own. The Grafana platform dashboard and KEDA's lag scaler read the same quantity.
CONSUMER_LAG = Gauge("driftline_kafka_consumer_lag",
                     "Records between a consumer group's position and the partition's end, per partition.",
                     ["group", "topic", "partition"])
LAG_STATISTICS_INTERVAL_MS = 5000


def record_consumer_lag(group: str, statistics_json: str) -> dict[tuple[str, int], int]:
    """Sets CONSUMER_LAG from one librdkafka statistics document; returns what it set.

    >>> record_consumer_lag("g", json.dumps({"topics": {"t": {"partitions": {
    ...     "0": {"consumer_lag": 7}, "1": {"consumer_lag": -1}, "-1": {"consumer_lag": 0}}}}}))
    {('t', 0): 7}
    """
    found = {}
    for topic, entry in json.loads(statistics_json).get("topics", {}).items():
        for partition, stats in entry.get("partitions", {}).items():
            lag = stats.get("consumer_lag", -1)
            if int(partition) >= 0 and lag >= 0:  # -1: the internal UA partition, or lag not known yet
                found[(topic, int(partition))] = lag
                CONSUMER_LAG.labels(group, topic, partition).set(lag)
    return found


# How long a poll that has its first record waits for more to join its batch: a batch per record
# would be a transaction per record in ingest and feature, a longer wait is latency at every hop.
POLL_LINGER_S = 0.05


class Consumer:
    """A consumer group member that commits only after processing.

    `enable.auto.commit` is off: call `commit()` once the records returned by
    `poll_batch()` are processed (and anything they produced is flushed), so a
    crash replays work instead of losing it.
    """

    def __init__(self, bootstrap: str, group_id: str, topics: Iterable[str], *,
                 from_beginning: bool = True, read_committed: bool = False, instance_id: str = "",
                 session_timeout_ms: int = 10000, config: Mapping[str, object] | None = None) -> None:
        conf: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            # A member that dies without leaving holds its partitions until the session times out;
            # a static member (KIP-345: the same `group.instance.id` after a restart) takes them
            # back at once, without a rebalance of the others.
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": min(1000, session_timeout_ms // 3),
            "statistics.interval.ms": LAG_STATISTICS_INTERVAL_MS,
            "stats_cb": lambda statistics: record_consumer_lag(group_id, statistics),
        }
        if instance_id:
            conf["group.instance.id"] = instance_id
        conf.update(config or {})
        self.raw = _Consumer(conf)
        topics = list(topics)
        if topics:  # none: the caller assigns partitions itself (`position_at_end`)
            self.raw.subscribe(topics)

    def poll_messages(self, max_records: int = 500, timeout: float = 1.0) -> list[_KafkaMessage]:
        """Returns raw messages, skipping end-of-partition events, raising real errors (and ending
        the process on a fatal one: `exit_if_fatal`)."""
        try:
            return [msg for msg in self._consume(max_records, timeout) if _is_data(msg)]
        except KafkaException as exc:  # consume() itself raises a fatal error too
            exit_if_fatal(exc)
            raise

    def _consume(self, max_records: int, timeout: float) -> list[_KafkaMessage]:
        """Up to `max_records` messages from one `consume` call: the first call, within
        `timeout`, of at most POLL_LINGER_S that returns any. One call, not a poll and then a
        consume: a rebalance served by a second call leaves the first call's record unrevoked in
        the batch, and a transaction under the new generation would publish a record that
        another member publishes too (librdkafka drops a revoked partition's records only
        within one call). And not `consume(n, timeout)`: it waits out the whole timeout for n
        (librdkafka's batch semantics), which at 400 events/s held each record 0.26 s (median;
        0.48 s p95) per hop."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            batch = self.raw.consume(max_records, max(0.0, min(POLL_LINGER_S, remaining)))
            if batch or remaining <= POLL_LINGER_S:
                return batch

    def poll_batch(self, message_type: type[M], max_records: int = 500,
                   timeout: float = 1.0) -> list[Record[M]]:
        """Returns decoded records; a record that does not decode raises DecodeFailure."""
        return list(self.iter_records(message_type, max_records, timeout))

    def iter_records(self, message_type: type[M], max_records: int = 500,
                     timeout: float = 1.0) -> Iterator[Record[M]]:
        """Yields the records of one poll, each decoded as it is reached.

        For large polls this is about twice as fast as `poll_batch`: a value
        processed and dropped before the next is decoded keeps the allocator's
        memory hot, where a list of a thousand live messages does not.
        """
        for msg in self._consume(max_records, timeout):
            if msg.error() is not None and not _is_data(msg):
                continue
            value = message_type()
            try:
                value.ParseFromString(msg.value() or b"")
            except DecodeError as exc:
                raise DecodeFailure(f"not a {message_type.DESCRIPTOR.full_name} at "
                                    f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}") from exc
            yield Record(msg, value)

    def commit(self, asynchronous: bool = False) -> None:
        """Commits the positions of everything polled so far."""
        try:
            self.raw.commit(asynchronous=asynchronous)
        except KafkaException as exc:
            exit_if_fatal(exc)
            # Nothing polled since the last commit is not a failure.
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        self.raw.close()


def fatal_consumer_error(exc: BaseException) -> KafkaError | None:
    """The error if `exc` says a consumer can no longer go on: a fatal error, or fencing of its
    static membership (which librdkafka raises as FENCED_INSTANCE_ID before it turns fatal)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(err, KafkaError) and (err.fatal() or err.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)):
        return err
    return None


def exit_if_fatal(exc: BaseException) -> None:
    """Ends the process when `exc` is a fatal consumer error (`fatal_consumer_error`).

    A static member whose session lapsed while the broker was away (a broker restart longer
    than the session timeout) is fenced when it comes back ("static consumer fenced by other
    consumer with same group.instance.id", librdkafka issue #3437), after which the client
    consumes nothing, for ever. librdkafka's rule is to destroy such a client; the process is the
    unit that the supervisor (or Kubernetes) restarts, and a restarted process under the same
    instance id joins at once. Exiting abruptly is safe: every consumer commits only after its
    work is done (or in its transaction), which the fault suite's SIGKILLs prove.
    """
    err = fatal_consumer_error(exc)
    if err is None:
        return
    log.critical("fatal kafka consumer error; exiting so that the process is restarted",
                 extra={"error": err.str(), "code": err.name(), "exit_status": FATAL_EXIT_STATUS})
    logging.shutdown()
    os._exit(FATAL_EXIT_STATUS)


def _is_data(msg: _KafkaMessage) -> bool:
    """True for a record; False for an end-of-partition event; raises for a real error."""
    err = msg.error()
    if err is None:
        return True
    if err.code() == KafkaError._PARTITION_EOF:
        return False
    exc = KafkaException(err)
    exit_if_fatal(exc)
    raise exc


def position_at_end(consumer: Consumer, topic: str, timeout: float = 10.0, *, commit: bool = True) -> None:
    """Assigns every partition of `topic` at its current end and commits there (unless `commit`
    is False: a follower that never commits then leaves no group on the broker).

    For a consumer that must see every record published from now on, in every
    instance (serving follows the registry's events this way). Explicit offsets
    rather than `auto.offset.reset=latest`: "latest" is resolved lazily, so a
    record published just after start could be skipped. The commit makes a
    `ConsumerWorker`'s rewind-on-failure return here, not to the topic's start.
    """
    raw = consumer.raw
    raw.unsubscribe()  # the group's own partitions, not a share of them: every instance sees every record
    # A topic created a moment ago may have no leader yet (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE,
    # UNKNOWN_TOPIC_OR_PART): retry until `timeout`, rather than fail the start of the process.
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        try:
            metadata = raw.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            ends = [TopicPartition(topic, p, raw.get_watermark_offsets(TopicPartition(topic, p), timeout)[1])
                    for p in sorted(metadata.partitions)]
            if not ends:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"{topic} has no partitions yet"))
            raw.assign(ends)
            if commit:
                raw.commit(offsets=ends, asynchronous=False)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            retriable = error is not None and (error.retriable() or error.code() in _NOT_READY)
            if not retriable or time.monotonic() + pause > deadline:
                raise
            log.info("the topic is not ready yet; retrying", extra={"topic": topic, "error": str(exc)})
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


_NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
              KafkaError.COORDINATOR_LOAD_IN_PROGRESS}


def ensure_topics(bootstrap: str, topics: Iterable[str], *, partitions: int = 1,
                  replication: int = 1, config: Mapping[str, str] | None = None,
                  timeout: float = 30.0, client_config: Mapping[str, object] | None = None) -> None:
    """Creates the topics that do not exist yet; existing ones are left as they are.

    `config`: the new topics' settings; `client_config`: the admin client's (security,
    `CommonSettings.kafka_client_config()`)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    wanted = list(dict.fromkeys(topics))
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=partitions, replication_factor=replication,
                    config=dict(config or {})) for t in wanted if t not in existing]
    if not new:
        return
    for topic, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_metadata(admin, wanted, timeout)


def _wait_for_metadata(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """Blocks until every topic has a leader, so the first produce does not race creation."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=timeout).topics
        if all(t in meta and meta[t].partitions and meta[t].error is None
               and all(p.leader >= 0 for p in meta[t].partitions.values()) for t in topics):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout}s: {topics}")
        time.sleep(0.1)
