"""`driftline.events` → `driftline.features`, exactly once among read_committed
readers: read-process-write in Kafka transactions.

Each polled batch is one transaction holding its feature records, its dead
letters (`driftline.feature.dlq`), the state rows it changed (the changelog,
state.py) and the consumed offsets. A crash therefore either published a batch
and moved past it, or did neither: the restarted process reads the state the
last committed batch left and goes on from its offsets, and the records of an
aborted transaction are never seen by a read_committed reader. The state in
memory changes only once its transaction has committed.

Records refused before any state changes (not an Event: stage `decode`; an
unknown stream: `route`) are dead-lettered inside the batch's transaction. An
event whose computation raises fails its batch: `ConsumerWorker` hands the batch
over again, then record by record, and an event that fails `max_attempts` times
on its own is dead-lettered (stage `handle`) in a transaction of its own that
also commits its offset, so the partition moves on.

Kafka trouble is not the records' fault and never dead-letters one: a failed
transaction is aborted (or its producer replaced, whose initialisation fences
and aborts what the old one left open) and retried in place; when the outcome
of a commit is unknown the group's committed offsets say whether it went
through. After `REWIND_AFTER_S` of failures the batch is given back (the
consumer is rewound to its first records) so that polling, and with it the
group membership, goes on; it is read again and recomputed from the unchanged
state.

Fast recovery: the consumer and the transactional producer are named after the
process's instance id (`DRIFTLINE_INSTANCE_ID`): a restarted process takes its
partitions back at once (static membership, no rebalance, no session timeout to
wait for) and its producer fences its predecessor's open transaction at start.
A newly assigned partition's state is read from the changelog before its first
event is handled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from services.common.deadletter import DEAD_LETTERS, KafkaOrigin, Rejection, dead_letter_headers
from services.common.kafka import Consumer, DeliveryError, Producer, exit_if_fatal
from services.common.runtime import ConsumerWorker
from services.common.streams import StreamCatalog
from services.common.threads import Backoff

from .app import Refusal, handle_event
from .metrics import EVENTS, TRANSACTIONS
from .settings import FeatureSettings
from .state import Changes, EntityTable, read_changelog

log = logging.getLogger(__name__)

SERVICE = "feature"
REWIND_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None
    partition: int = -1  # -1: by key


class BatchGivenBack(Exception):
    """The batch was not published and the consumer was rewound to read it again."""


class FeatureProcessor:
    def __init__(self, settings: FeatureSettings, catalog: StreamCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.table = EntityTable()
        self.ready = threading.Event()  # set once the first assignment's state is loaded
        topics = settings.topics
        self.features_topic = topics.features
        self.dead_letter_topic = topics.dead_letters(SERVICE)
        self.consumer = Consumer(settings.kafka_bootstrap, settings.app_id, [topics.events], from_beginning=True,
                                 read_committed=True, instance_id=settings.member_id(),
                                 session_timeout_ms=settings.kafka_session_timeout_ms,
                                 config=settings.kafka_client_config())
        self.consumer.raw.subscribe([topics.events], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.transactional_id = settings.transactional_id()
        self.producer: Producer | None = self._new_producer()
        # (topic, partition) -> where the consumer was rewound to: until the records are read again
        # from there, the rest of the given-back batch (handed over record by record) is not handled.
        self._rewound: dict[tuple[str, int], int] = {}
        self.worker = ConsumerWorker("feature-events", self.consumer, self.handle,
                                     max_records=settings.feature_batch_records, poll_timeout=0.2,
                                     commits_offsets=True, dead_letters=_DeadLettersInTransaction(self),
                                     max_attempts=settings.max_attempts)

    def _new_producer(self) -> Producer:
        return Producer(self.settings.kafka_bootstrap, transactional_id=self.transactional_id,
                        config={**self.settings.kafka_client_config(),
                                "transaction.timeout.ms": self.settings.feature_transaction_timeout_ms})

    # -- a batch ----------------------------------------------------------------------------------

    def handle(self, messages: Sequence[Message]) -> None:
        messages = self.not_given_back(messages)
        changes = Changes(self.table)
        records = []
        for message in messages:
            result = handle_event(self.catalog, changes, message)
            if isinstance(result, Refusal):
                records.append(self.dead_letter(message, Rejection(result.reason, result.field, result.stage)))
            else:
                records.append(Outgoing(self.features_topic, result.entity_id.encode(), result.SerializeToString()))
        try:
            self.publish(records, changes, messages)
        except BatchGivenBack:
            return  # read again by the next poll; nothing of it was applied

    def dead_letter(self, message: Message, rejection: Rejection) -> Outgoing:
        DEAD_LETTERS.labels(SERVICE, rejection.stage).inc()
        log.warning("event dead-lettered", extra={
            "stage": rejection.stage, "reason": rejection.reason, "partition": message.partition(),
            "offset": message.offset()})
        origin = KafkaOrigin(message.topic(), message.partition(), message.offset())
        return Outgoing(self.dead_letter_topic, message.key(), message.value(),
                        dead_letter_headers(message.headers(), rejection, origin, service=SERVICE))

    def publish(self, records: Sequence[Outgoing], changes: Changes, messages: Sequence[Message]) -> None:
        """One transaction of `records`, the changed rows and the offsets of `messages`, then the rows
        into the table. Raises BatchGivenBack after rewinding the consumer to `messages` when Kafka
        refuses for too long."""
        offsets = next_offsets(messages)
        backoff = Backoff(0.1, 2.0)
        given_up_at = time.monotonic() + REWIND_AFTER_S
        uncertain = False  # a failed commit may have gone through
        while True:
            try:
                if not (uncertain and self._offsets_committed(offsets)):
                    self._transaction(records, changes, offsets)
                break
            except (KafkaException, DeliveryError) as exc:
                exit_if_fatal(exc)  # a fenced consumer can never commit again: the next process takes over
                TRANSACTIONS.labels("aborted").inc()
                uncertain = True
                log.warning("transaction failed; retrying", extra={"error": str(exc), "records": len(records)})
                self._abort(exc)
                if self.worker.stopping:
                    raise
                if time.monotonic() > given_up_at or _group_moved_on(exc):
                    self._rewind(messages)
                    raise BatchGivenBack() from exc
                self.worker.wait(backoff.next())
        TRANSACTIONS.labels("committed").inc()
        self.table.apply(changes)

    def _transaction(self, records: Iterable[Outgoing], changes: Changes, offsets: list[TopicPartition]) -> None:
        if self.producer is None:
            self.producer = self._new_producer()
        producer = self.producer
        producer.begin_transaction()
        for record in records:
            producer.produce_raw(record.topic, record.value, record.key, record.headers, partition=record.partition)
        changelog = self.settings.changelog_topic
        for partition, key, value in changes.changelog():
            producer.produce_raw(changelog, value, key, partition=partition)
        # The offsets of these records, not the consumer's position: a batch handed over record by
        # record must not commit past a record not yet handled.
        producer.send_offsets_to_transaction(self.consumer, offsets)
        producer.commit_transaction()

    def _abort(self, cause: Exception) -> None:
        error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        if self.producer is not None and not (isinstance(error, KafkaError) and error.fatal()):
            try:
                self.producer.abort_transaction()
                return
            except KafkaException as exc:
                log.error("abort failed; replacing the producer", extra={"error": str(exc)})
        # The next transaction makes a new producer, whose init fences and aborts this one's.
        self.producer = None

    def _offsets_committed(self, offsets: list[TopicPartition]) -> bool:
        committed = self.consumer.raw.committed([TopicPartition(tp.topic, tp.partition) for tp in offsets], timeout=10)
        reached = {tp.partition: tp.offset for tp in committed}
        if all(reached.get(tp.partition, -1) >= tp.offset for tp in offsets):
            log.info("the failed commit had gone through", extra={"offsets": {tp.partition: tp.offset for tp in offsets}})
            return True
        return False

    def _rewind(self, messages: Sequence[Message]) -> None:
        log.error("Kafka keeps refusing the transaction; the batch is read again", extra={"records": len(messages)})
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            first.setdefault((message.topic(), message.partition()), message.offset())
        self._rewound.update(first)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.raw.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                pass  # no longer assigned: its next owner starts from the committed offset

    def not_given_back(self, messages: Sequence[Message]) -> Sequence[Message]:
        if not self._rewound:
            return messages
        kept = []
        for message in messages:
            key = (message.topic(), message.partition())
            at = self._rewound.get(key)
            if at is not None and message.offset() == at:
                del self._rewound[key]  # read again from where it was rewound to
            elif at is not None and message.offset() > at:
                continue
            kept.append(message)
        return kept

    # -- rebalances (inside poll, on the worker's thread) ------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        self._rewound.clear()  # positions start again from the committed offsets
        wanted = [tp.partition for tp in partitions]
        backoff = Backoff()
        while not self.worker.stopping:
            try:
                self.table.load(read_changelog(self.settings.kafka_bootstrap, self.settings.changelog_topic, wanted,
                                               client_config=self.settings.kafka_client_config()))
                break
            except Exception:
                # No event of these partitions may be handled without its state: wait for the changelog.
                log.exception("state restore failed; retrying", extra={"partitions": wanted})
                self.worker.wait(backoff.next())
        log.info("partitions assigned", extra={"partitions": wanted, "rows": len(self.table)})
        self.ready.set()

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.table.drop(tp.partition)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop(timeout)  # finishes the batch in hand (its transaction) and leaves the group
        if self.producer is not None:
            self.producer.close()


class _DeadLettersInTransaction:
    """The `ConsumerWorker`'s dead-letter queue: a record that failed `max_attempts` times goes to the
    dead-letter topic in a transaction that also commits its offset."""

    def __init__(self, processor: FeatureProcessor) -> None:
        self.processor = processor

    def send(self, message: Message, reason: str, *, stage: str, field: str = "") -> None:
        if not self.processor.not_given_back([message]):
            return
        EVENTS.labels("failed", "").inc()
        record = self.processor.dead_letter(message, Rejection(reason, field, stage))
        try:
            self.processor.publish([record], Changes(self.processor.table), [message])
        except BatchGivenBack:
            pass  # read again, and dead-lettered again if it still fails


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Per partition, the offset after the last of `messages`: what a commit of them says."""
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        last[key] = max(last.get(key, -1), message.offset())
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


_GROUP_ERRORS = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID,
                 KafkaError.REBALANCE_IN_PROGRESS}


def _group_moved_on(exc: Exception) -> bool:
    """The group has a new generation: this batch's offsets can no longer be committed by this member
    until it polls again."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() in _GROUP_ERRORS


