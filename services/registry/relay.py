"""The outbox relay: publishes committed registry events to Kafka, in order.

Rows are marked sent only after the producer's flush confirmed delivery, so a
crash or a broker outage between the two leaves them unsent and they are
published again: at least once, with `event_id` for consumers to de-duplicate.
The database and the topic never disagree about what happened.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge

from driftline.v1 import registry_pb2
from services.common.kafka import Producer
from services.common.threads import Backoff, StoppableThread

from .store import RegistryStore

log = logging.getLogger(__name__)

PUBLISHED = Counter("driftline_registry_events_published_total", "Registry events delivered to Kafka.")
UNSENT = Gauge("driftline_registry_outbox_unsent", "Outbox rows committed but not yet delivered.")
FAILURES = Counter("driftline_registry_relay_failures_total", "Relay rounds that failed and will be retried.")


class OutboxRelay(StoppableThread):
    def __init__(self, store: RegistryStore, producer: Producer, topic: str, *,
                 interval_s: float = 1.0, batch: int = 100, flush_timeout_s: float = 30.0) -> None:
        super().__init__("registry-outbox-relay")
        self.store = store
        self.producer = producer
        self.topic = topic
        self.interval_s = interval_s
        self.batch = batch
        self.flush_timeout_s = flush_timeout_s
        self._wake = threading.Event()

    def wake(self) -> None:
        """Called after a write commits, so events go out at once instead of at the next tick
        (and by `stop`, so a stop does not wait for the tick either)."""
        self._wake.set()

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            self._wake.clear()
            try:
                if self.publish_pending():
                    backoff.reset()
                    continue  # there may be more than one batch waiting
                self._wake.wait(self.interval_s)
            except Exception:
                FAILURES.inc()
                log.exception("outbox relay failed; the rows stay unsent and will be retried")
                self.wait(backoff.next())
        # Last round on the way out, so a clean stop leaves nothing behind.
        try:
            while self.publish_pending():
                pass
        except Exception:
            log.exception("outbox relay could not drain on stop; rows will be sent on the next start")

    def publish_pending(self) -> int:
        """Publishes one batch of unsent rows; returns how many were delivered."""
        rows = self.store.unsent_events(self.batch)
        if rows:
            for row in rows:
                event = registry_pb2.RegistryEvent.FromString(row.payload)
                self.producer.produce(self.topic, event, key=row.model_name)
            self.producer.flush(self.flush_timeout_s)  # raises DeliveryError: nothing is marked
            self.store.mark_sent([row.seq for row in rows])
            PUBLISHED.inc(len(rows))
        UNSENT.set(self.store.count_unsent())
        return len(rows)
