"""The Kafka path: `driftline.events.raw` → validate → `driftline.events` /
`driftline.events.dlq`, read-process-write exactly once.

The consumer reads committed data only and never commits on its own: each
polled batch's offsets are committed inside the batch's transaction, so a
crash either published a batch and moved past it, or did neither. The
offsets go with the consumer's group metadata (KIP-447): a zombie — a process
paused past its session timeout whose partitions another member took over —
has its stale transaction refused by the group coordinator, and aborts it.

A batch that fails is aborted, the consumer is rewound to the last commit and
polled again after a back-off, rather than the same batch handed over again:
only a poll lets a rebalance take effect, so a zombie gives up partitions it
no longer owns instead of retrying a transaction that can never commit. A
record whose processing keeps raising is dead-lettered by the pipeline after
`max_attempts` polls of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message, TopicPartition

from services.common.kafka import CONTENT_TYPE, Consumer, exit_if_fatal, header
from services.common.runtime import ConsumerWorker
from services.common.threads import Backoff

from .deadletter import KafkaOrigin
from .pipeline import IngestPipeline, RawInput
from .settings import IngestSettings

log = logging.getLogger(__name__)


def raw_input(msg: Message) -> RawInput:
    headers = msg.headers()
    kind, timestamp_ms = msg.timestamp()
    return RawInput(payload=msg.value(), content_type=header(headers, CONTENT_TYPE), key=msg.key(),
                    origin=KafkaOrigin(msg.topic(), msg.partition(), msg.offset()), headers=headers,
                    timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms)


def build_raw_worker(settings: IngestSettings, pipeline: IngestPipeline) -> ConsumerWorker:
    consumer = Consumer(settings.kafka_bootstrap, settings.group_id, [settings.topics.events_raw],
                        from_beginning=True, read_committed=True, instance_id=settings.instance_id,
                        session_timeout_ms=settings.kafka_session_timeout_ms, config=settings.kafka_client_config())
    backoff = Backoff()

    def handle(messages: Sequence[Message]) -> None:
        try:
            pipeline.process([raw_input(msg) for msg in messages], consumer, batch_end(messages))
        except Exception as exc:
            exit_if_fatal(exc)  # a fenced consumer can never commit again: the next process takes over
            log.exception("batch failed; rewinding to the last commit", extra={"records": len(messages)})
            rewind(consumer)
            worker.wait(backoff.next())
            return
        backoff.reset()

    worker = ConsumerWorker("ingest-raw", consumer, handle, max_records=settings.ingest_poll_max_records,
                            commits_offsets=True)
    return worker


def batch_end(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offset after each partition's last record of the batch: what its transaction commits."""
    ends = {(msg.topic(), msg.partition()): msg.offset() + 1 for msg in messages}
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in ends.items()]


def rewind(consumer: Consumer) -> None:
    """Seeks every assigned partition back to its committed offset (its start when none is)."""
    raw = consumer.raw
    try:
        for tp in raw.committed(raw.assignment(), timeout=10):
            raw.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
    except KafkaException:
        # A partition revoked meanwhile: its next owner starts from the committed offset anyway.
        log.exception("rewind failed")
