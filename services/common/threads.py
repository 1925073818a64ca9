"""The background threads of a service: a loop that runs until `stop()`, and how long it waits
after a failure.

A subclass's `run` loops `while not self.stopping`, sleeps with `self.wait(s)` (which a stop
cuts short) and does whatever its shutdown needs (a last drain or flush) after the loop;
`stop(timeout)` asks it to finish and waits for it. `ServiceProcess` stops its workers this way.
"""

from __future__ import annotations

import threading


class Backoff:
    """Seconds to wait after each consecutive failure, doubling up to a ceiling; `reset()` on success.

    >>> backoff = Backoff()
    >>> [backoff.next() for _ in range(7)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    >>> backoff.reset(); backoff.next()
    0.5
    """

    def __init__(self, first_s: float = 0.5, most_s: float = 10.0) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self._next = first_s

    def next(self) -> float:
        wait, self._next = self._next, min(self._next * 2, self.most_s)
        return wait

    def reset(self) -> None:
        self._next = self.first_s


class StoppableThread(threading.Thread):
    """A daemon thread that runs until asked to stop.

    >>> import time
    >>> class Ticker(StoppableThread):
    ...     ticks = 0
    ...     def run(self):
    ...         while not self.stopping:
    ...             self.ticks += 1
    ...             self.wait(0.01)
    >>> ticker = Ticker("ticker"); ticker.start(); time.sleep(0.05); ticker.stop(5)
    >>> ticker.is_alive(), ticker.ticks > 0
    (False, True)
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_requested = threading.Event()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stop_requested.is_set()

    def wait(self, seconds: float | None = None) -> bool:
        """Sleeps `seconds` (None: until the stop); returns early, True, when the thread is stopped."""
        return self._stop_requested.wait(seconds)

    def wake(self) -> None:
        """Called by `stop()` after the flag is set: for a thread that also sleeps on something else."""

    def stop(self, timeout: float = 30.0) -> None:
        """Asks the loop to finish and waits up to `timeout` for it (and its shutdown work)."""
        self._stop_requested.set()
        self.wake()
        if self.is_alive():
            self.join(timeout)
