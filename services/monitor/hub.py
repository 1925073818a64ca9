"""Fan-out of what the monitor publishes to live watchers (gRPC WatchDriftStats, the
dashboard's server-sent events), each on its own asyncio loop. The worker thread never
blocks on a slow watcher: a full queue drops that watcher's oldest news."""

from __future__ import annotations

import asyncio
import threading


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue:
        """A queue on the calling loop that receives every published item from now on."""
        queue: asyncio.Queue = asyncio.Queue(maxsize)
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = {(loop, q) for loop, q in self._subscribers if q is not queue}

    def publish(self, item) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_put, queue, item)
            except RuntimeError:  # that loop is closed: its watcher is gone
                self.unsubscribe(queue)


def _put(queue: asyncio.Queue, item) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
