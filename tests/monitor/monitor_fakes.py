"""What the monitor's unit tests hand `DriftMonitor.handle` instead of Kafka (records, a producer
that keeps what it was given), and the clean stop every live monitor fixture checks."""

from __future__ import annotations

import itertools


_OFFSETS = itertools.count()


class Message:
    """A consumed record as `DriftMonitor.handle` reads it (confluent_kafka.Message's getters).
    Without an offset it gets the next of one growing sequence: the monitor applies a record only
    past its partition's position, as a consumer's records come."""

    def __init__(self, topic: str, value: bytes | None, offset: int | None = None) -> None:
        self._topic, self._value = topic, value
        self._offset = next(_OFFSETS) if offset is None else offset

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class RecordingProducer:
    """Keeps every (topic, message, key) produced and counts the flushes."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, object, str | None]] = []
        self.flushes = 0

    def produce(self, topic, message, key=None) -> None:
        self.produced.append((topic, message, key))

    def flush(self, timeout: float = 30.0) -> None:
        self.flushes += 1

    def on(self, topic: str) -> list:
        """The messages produced to `topic`, in order."""
        return [message for t, message, _ in self.produced if t == topic]


def stop_cleanly(run, *others) -> None:
    """SIGTERM to a live monitor (a tests/support.ServiceRun), then stops `others` (stand-ins);
    the monitor must exit 0."""
    exit_code = run.stop(timeout=20)
    for other in others:
        other.stop()
    assert exit_code == 0, f"monitor did not exit cleanly:\n{run.log_tail()}"
