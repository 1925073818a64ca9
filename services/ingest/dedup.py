"""The ids of published events, so a re-sent event is published once.

An id is the bytes of `dedup_key(stream, event_id)`, since event ids are unique within a
stream only; it is also the record key of the published-ids topic (idlog.py), so the ids
read back from that topic need no parsing.

Bounded (least recently seen ids are forgotten first), so memory stays flat: a duplicate
that arrives after `capacity` newer ids is published again (downstream consumers
de-duplicate by event_id as well).

An id is *claimed* while the batch holding it is in an open transaction and *confirmed*
when the transaction commits; an aborted batch *releases* its claims so the retry is not
mistaken for a duplicate. Claims make the check atomic between the Kafka worker thread and
concurrent gRPC batches of one process. Ids *seen* on the published-ids topic (this
process's before a restart, other replicas' all along) are confirmed ones.

>>> recent = RecentIds(capacity=2)
>>> recent.claim(dedup_key("sea", "e-1")), recent.claim(dedup_key("sea", "e-1"))
(True, False)
>>> recent.claim(dedup_key("hyper", "e-1"))  # another stream's e-1
True
>>> recent.seen([dedup_key("sea", "e-2")]); dedup_key("sea", "e-1") in recent
False
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

# Between the stream and the event id: a stream's name never holds a NUL, an id may hold anything.
SEPARATOR = b"\x00"


def dedup_key(stream: str, event_id: str) -> bytes:
    """The id of an event: its stream and its event_id.

    >>> dedup_key("sea", "e/1")
    b'sea\\x00e/1'
    """
    return stream.encode() + SEPARATOR + event_id.encode()


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[bytes, bool] = OrderedDict()  # id -> confirmed
        self._lock = threading.Lock()

    def claim(self, key: bytes) -> bool:
        """True if the id is new (and is now claimed); False if seen or claimed before."""
        with self._lock:
            if key in self._ids:
                self._ids.move_to_end(key)
                return False
            self._ids[key] = False
            self._evict()
            return True

    def confirm(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                if key in self._ids:
                    self._ids[key] = True

    def release(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                if self._ids.get(key) is False:
                    del self._ids[key]

    def seen(self, keys: Iterable[bytes]) -> None:
        """Ids published and committed (read back from the published-ids topic)."""
        with self._lock:
            ids = self._ids
            for key in keys:
                ids[key] = True
                ids.move_to_end(key)
            self._evict()

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def _evict(self) -> None:
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
