"""Streaming statistics over a model's labelled predictions.

`RollingAccuracy` is the number people look at; `ErrorRateChange` is the one
that decides. It runs river's ADWIN over the 0/1 error stream: ADWIN keeps a
window whose mean is consistent and signals when it is not, which answers
*whether* and *when* the error rate changed. ADWIN's own cut is a poor answer
to *where*: it drops only as much of the old data as it must, so the window it
keeps can reach hundreds of samples back into the old regime. The change point
is therefore located within the window ADWIN held at detection, at the split
that best separates two error rates (the two-sample statistic
|mean_a - mean_b|·sqrt(n_a·n_b/n)); a ring buffer of the samples' event times
turns that position into the time a new model's training data should start.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from river import drift

from .alarms import Alarm


class RollingAccuracy:
    """Accuracy over the last `window` labelled predictions.

    >>> acc = RollingAccuracy(window=4)
    >>> for correct in (True, True, False, True, False):
    ...     acc.add(correct)
    >>> acc.value, acc.count
    (0.5, 4)
    """

    def __init__(self, window: int) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._correct = 0

    @property
    def count(self) -> int:
        return len(self._recent)

    @property
    def value(self) -> float:
        return self._correct / len(self._recent) if self._recent else 0.0

    def add(self, correct: bool) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._correct -= self._recent[0]
        self._recent.append(correct)
        self._correct += correct


@dataclass(frozen=True)
class ChangePoint:
    """Where the error rate changed: the first sample of the new regime."""

    sample: int           # 1-based position in this detector's stream
    event_time_ms: int    # that sample's event time
    error_before: float   # the error rate before it (within ADWIN's window)
    error_after: float    # ... and from it on


@dataclass(kw_only=True)
class ChangeAlarm(Alarm):
    """A change ADWIN detected, either way: value is the rise of the error rate (negative when it
    fell), threshold ADWIN's delta; change_sample the first sample of the new regime."""
    statistic: str = "adwin"
    event_time_ms: int    # the change's first sample's event time
    error_before: float   # the error rate before it (within ADWIN's window) ...
    error_after: float    # ... and from it on

    @property
    def worse(self) -> bool:
        return self.error_after > self.error_before

    @property
    def point(self) -> ChangePoint:
        return ChangePoint(self.change_sample, self.event_time_ms, self.error_before, self.error_after)


def best_split(errors: Sequence[int]) -> int:
    """The index that best separates `errors` into two runs of different rates.

    >>> best_split([0, 0, 0, 0, 1, 1, 1])
    4
    >>> best_split([1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    7
    """
    n, total = len(errors), sum(errors)
    best, best_score, before = 1, -1.0, 0
    for k in range(1, n):
        before += errors[k - 1]
        rate_a, rate_b = before / k, (total - before) / (n - k)
        score = abs(rate_a - rate_b) * math.sqrt(k * (n - k) / n)
        if score > best_score:
            best, best_score = k, score
    return best


class ErrorRateChange:
    """ADWIN over errors (1 = wrong), reporting each change with where it started.

    >>> import random
    >>> rng = random.Random(7)
    >>> detector = ErrorRateChange()
    >>> errors = [rng.random() < (0.1 if i < 1000 else 0.5) for i in range(2000)]
    >>> change = detector.update(errors, [1000 * i for i in range(2000)])[0]
    >>> change.worse, abs(change.change_sample - 1001) <= 20, change.event_time_ms == 1000 * (change.change_sample - 1)
    (True, True, True)
    """

    def __init__(self, delta: float = 0.002, history: int = 50_000) -> None:
        self.delta = delta
        # (event time, error) of the most recent samples; a window longer than this is cut to it.
        self._recent: deque[tuple[int, int]] = deque(maxlen=history)
        self.samples = 0
        self.reset()

    def reset(self) -> None:
        """A new ADWIN: the window and the samples it kept are forgotten (samples keep counting)."""
        self._adwin = drift.ADWIN(delta=self.delta)
        self._recent.clear()

    @property
    def error_rate(self) -> float:
        return self._adwin.estimation

    def update(self, errors: Iterable[bool], event_times_ms: Iterable[int] | None = None) -> list[ChangeAlarm]:
        """Adds errors (1 = wrong), with their event times (0 when not given); returns the changes."""
        changes = []
        for error, event_time_ms in zip(errors, itertools.repeat(0) if event_times_ms is None else event_times_ms):
            self._recent.append((event_time_ms, int(error)))
            self.samples += 1
            held = int(self._adwin.width) + 1  # ADWIN's window once this sample is in, before any cut
            self._adwin.update(int(error))  # returns None in river 0.26; the flag says it all
            if self._adwin.drift_detected:
                changes.append(self._located(held))
        return changes

    def _located(self, held: int) -> ChangeAlarm:
        window = list(itertools.islice(self._recent, max(0, len(self._recent) - held), None))
        errors = [e for _, e in window]
        split = best_split(errors)
        before, after = sum(errors[:split]) / split, sum(errors[split:]) / (len(errors) - split)
        return ChangeAlarm(value=after - before, threshold=self.delta,
                           change_sample=self.samples - len(window) + split + 1, detected_sample=self.samples,
                           event_time_ms=window[split][0], error_before=before, error_after=after)
