"""The Kafka path: `driftline.events.raw` → validate → `driftline.events` /
`driftline.events.dlq`, read-process-write exactly once.

The consumer reads committed data only and never commits on its own: each
polled batch's offsets are committed inside the batch's transaction, so a
crash either published a batch and moved past it, or did neither.
"""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from services.common.kafka import CONTENT_TYPE, Consumer, header
from services.common.runtime import ConsumerWorker

from .deadletter import KafkaOrigin
from .pipeline import IngestPipeline, RawInput
from .settings import IngestSettings


def raw_input(msg: Message) -> RawInput:
    headers = msg.headers()
    kind, timestamp_ms = msg.timestamp()
    return RawInput(payload=msg.value(), content_type=header(headers, CONTENT_TYPE), key=msg.key(),
                    origin=KafkaOrigin(msg.topic(), msg.partition(), msg.offset()), headers=headers,
                    timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms)


def build_raw_worker(settings: IngestSettings, pipeline: IngestPipeline) -> ConsumerWorker:
    consumer = Consumer(settings.kafka_bootstrap, settings.group_id, [settings.topics.events_raw],
                        from_beginning=True, read_committed=True)

    def handle(messages: Sequence[Message]) -> None:
        pipeline.process([raw_input(msg) for msg in messages], consumer=consumer)

    return ConsumerWorker("ingest-raw", consumer, handle, max_records=settings.ingest_poll_max_records,
                          commits_offsets=True)
