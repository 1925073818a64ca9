"""The ids of recently published events, so a re-sent event is published once.

An id is whatever hashable key the caller uses: ingest uses (stream, event_id),
since ids are unique within a stream only.

Bounded (least recently seen ids are forgotten first), so memory stays flat;
a duplicate that arrives after `capacity` newer ids, or after a restart, is
published again — downstream consumers de-duplicate by event_id as well
(delivery is at least once everywhere but inside a transaction).

An id is *claimed* while the batch holding it is in an open transaction and
*confirmed* when the transaction commits; an aborted batch *releases* its
claims so the retry is not mistaken for a duplicate. Claims make the check
atomic between the Kafka worker thread and concurrent gRPC batches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[Hashable, bool] = OrderedDict()  # id -> confirmed
        self._lock = threading.Lock()

    def claim(self, event_id: Hashable) -> bool:
        """True if the id is new (and is now claimed); False if seen or claimed before."""
        with self._lock:
            if event_id in self._ids:
                self._ids.move_to_end(event_id)
                return False
            self._ids[event_id] = False
            self._evict()
            return True

    def confirm(self, event_ids: Iterable[Hashable]) -> None:
        with self._lock:
            for event_id in event_ids:
                if event_id in self._ids:
                    self._ids[event_id] = True

    def release(self, event_ids: Iterable[Hashable]) -> None:
        with self._lock:
            for event_id in event_ids:
                if self._ids.get(event_id) is False:
                    del self._ids[event_id]

    def __contains__(self, event_id: Hashable) -> bool:
        with self._lock:
            return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def _evict(self) -> None:
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
