"""The published-ids topic, `driftline.events.ids`: the durable, shared half of de-duplication.

Every accepted event's id (`dedup.dedup_key`: stream and event_id) is produced to this topic,
keyed by itself, inside the transaction that publishes the event (and, on the Kafka path,
commits the raw offsets), so a read_committed reader sees an id exactly when its event is
published. Before ingest consumes anything, `IdLog.load` reads the newest `capacity` ids of each
partition into the process's RecentIds (a restarted process thereby knows what its predecessors
published), then the thread follows the topic for as long as the process runs, so each replica
learns the ids the others publish. The topic is compacted and deleted after `retention_ms`: it is
bounded in time as the in-memory set is in size.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from services.common.threads import StoppableThread

from .dedup import RecentIds

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


def topic_config(retention_ms: int) -> dict[str, str]:
    """The ids topic's settings: compacted (an id written twice, by two replicas in the same
    moment, is kept once) and deleted after `retention_ms`, in segments small enough to go on time.

    >>> topic_config(7 * DAY_MS)["segment.ms"], topic_config(3_600_000)["segment.ms"]
    ('86400000', '3600000')
    """
    return {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms),
            "segment.ms": str(min(retention_ms, DAY_MS))}


class IdLog(StoppableThread):
    """Reads the published-ids topic into `recent`: `load()` up to its end, then `start()` to follow it."""

    def __init__(self, bootstrap: str, topic: str, recent: RecentIds, group_id: str,
                 client_config: Mapping[str, object] | None = None) -> None:
        super().__init__("ingest-ids")
        self.topic = topic
        self.recent = recent
        self.loaded = 0
        # No group membership (partitions are assigned, never subscribed): every replica reads all of
        # them. The group id is librdkafka's requirement only; nothing is committed under it.
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"{group_id}-ids-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": True,
            "fetch.wait.max.ms": 100, **(client_config or {})})

    def load(self, timeout_s: float = 60.0) -> int:
        """Reads the newest `recent.capacity` committed ids of every partition; returns how many.

        read_committed ends each partition at its last stable offset: an id of a transaction still
        open (another replica's) comes later, through the follower."""
        started = time.monotonic()
        partitions = self._partitions(timeout_s)
        start = []
        for partition in partitions:
            low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout_s,
                                                           cached=False)
            start.append(TopicPartition(self.topic, partition, max(low, high - self.recent.capacity)))
        self.consumer.assign(start)
        waiting = set(partitions)
        while waiting:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{self.topic}: partitions {sorted(waiting)} not read to their end "
                                   f"in {timeout_s}s")
            self.loaded += self._read(0.1, waiting)
        log.info("published ids loaded", extra={"topic": self.topic, "ids": self.loaded, "remembered": len(self.recent),
                                                "seconds": round(time.monotonic() - started, 3)})
        return self.loaded

    def run(self) -> None:
        while not self.stopping:
            try:
                # A batch read returns when full or at its timeout: short, so another replica's id
                # is known here a fetch after it commits.
                self._read(0.1)
            except KafkaException:
                log.exception("reading the published ids failed; retrying", extra={"topic": self.topic})
                self.wait(1.0)
        self.consumer.close()

    def _read(self, timeout_s: float, waiting: set[int] | None = None) -> int:
        keys = []
        for msg in self.consumer.consume(1000, timeout_s):
            error = msg.error()
            if error is None:
                if msg.key() is not None:
                    keys.append(msg.key())
            elif error.code() == KafkaError._PARTITION_EOF:
                if waiting is not None:
                    waiting.discard(msg.partition())
            else:
                raise KafkaException(error)
        self.recent.seen(keys)
        return len(keys)

    def _partitions(self, timeout_s: float) -> list[int]:
        metadata = self.consumer.list_topics(self.topic, timeout=timeout_s).topics[self.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        return sorted(metadata.partitions)
