"""Writes one batch — accepted events, dead letters and (on the Kafka path)
the consumed offsets — in one Kafka transaction: all of it becomes visible to
read_committed consumers, or none of it does.

A failed batch is aborted and the error re-raised, so the caller retries the
same input (the Kafka worker rewinds to the last committed offset). A fatal
producer error (e.g. fenced by a newer instance with the same transactional
id) cannot be aborted: the producer is replaced, whose initialisation fences
and aborts whatever the old one left open.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition

from services.common.kafka import Consumer, DeliveryError, Producer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: str | bytes | None
    value: bytes | None  # None: a null value (a rejected tombstone stays one)
    headers: Sequence[tuple[str, bytes | None]] | None = None
    timestamp_ms: int | None = None  # None: the time of producing


class TransactionalPublisher:
    def __init__(self, bootstrap: str, transactional_id: str, transaction_timeout_ms: int = 15000,
                 client_config: Mapping[str, object] | None = None) -> None:
        self.bootstrap = bootstrap
        self.transactional_id = transactional_id
        self.config = {**(client_config or {}), "transaction.timeout.ms": transaction_timeout_ms}
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer(self.bootstrap, transactional_id=self.transactional_id, config=self.config)

    def publish(self, records: Sequence[Outgoing], consumer: Consumer | None = None,
                offsets: Sequence[TopicPartition] | None = None) -> None:
        """Produces `records` and, with a consumer, commits `offsets` (default: its position) under
        its group generation, atomically."""
        producer = self._producer
        try:
            producer.begin_transaction()
            for record in records:
                producer.produce_raw(record.topic, record.value, record.key, record.headers,
                                     timestamp=record.timestamp_ms)
            if consumer is not None:
                producer.send_offsets_to_transaction(consumer, offsets)
            producer.commit_transaction()
        except (KafkaException, DeliveryError) as exc:
            self._abort(exc)
            raise

    def _abort(self, cause: Exception) -> None:
        error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        fatal = error is not None and hasattr(error, "fatal") and error.fatal()
        if not fatal:
            try:
                self._producer.abort_transaction()
                log.warning("transaction aborted", extra={"error": str(cause)})
                return
            except KafkaException as exc:
                log.error("abort failed; replacing the producer", extra={"error": str(exc)})
        else:
            log.error("fatal producer error; replacing the producer", extra={"error": str(cause)})
        self._producer = self._new_producer()

    def close(self) -> None:
        self._producer.flush()
