"""Pairs each served prediction with its true label, by event_id.

Labels come from `driftline.features` and predictions from
`driftline.predictions`, in no particular order: whichever side arrives first
waits for the other. Waiting is bounded twice — by time (`ttl_s`, on the
monitor's clock: a label that never gets predicted must not wait forever) and
by count (`max_pending` per side, oldest out first) — and everything that
leaves unmatched is counted, so a join that silently stops working shows up.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Label:
    value: int
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class Predicted:
    model_name: str
    model_version: int
    label: int


@dataclass(frozen=True, slots=True)
class Joined:
    event_id: str
    prediction: Predicted
    label: Label

    @property
    def correct(self) -> bool:
        return self.prediction.label == self.label.value


class _Waiting:
    """One side's pending entries in arrival order, so the oldest are first out."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self.expired = 0
        self.evicted = 0

    def expire(self, deadline: float) -> None:
        while self.entries:
            event_id, (arrived, _) = next(iter(self.entries.items()))
            if arrived > deadline:
                break
            del self.entries[event_id]
            self.expired += 1

    def bound(self, max_pending: int) -> None:
        while len(self.entries) > max_pending:
            self.entries.popitem(last=False)
            self.evicted += 1


class LabelJoin:
    """
    >>> now = [0.0]
    >>> join = LabelJoin(ttl_s=10, max_pending=2, clock=lambda: now[0])
    >>> join.add_prediction("e1", Predicted("m", 1, label=1)) is None
    True
    >>> join.add_label("e1", Label(1, event_time_ms=5)).correct
    True
    >>> join.add_label("e2", Label(0, 6)); now[0] = 11.0; join.expire()
    >>> join.pending, join.unmatched
    (0, 1)
    """

    def __init__(self, ttl_s: float = 600.0, max_pending: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._labels = _Waiting()
        self._predictions = _Waiting()
        self.joined = 0

    def add_label(self, event_id: str, label: Label) -> Joined | None:
        prediction = self._take_or_wait(self._predictions, self._labels, event_id, label)
        return None if prediction is None else self._join(event_id, prediction, label)

    def add_prediction(self, event_id: str, prediction: Predicted) -> Joined | None:
        label = self._take_or_wait(self._labels, self._predictions, event_id, prediction)
        return None if label is None else self._join(event_id, prediction, label)

    def _take_or_wait(self, other: _Waiting, mine: _Waiting, event_id: str, item: object):
        found = other.entries.pop(event_id, None)
        if found is not None:
            return found[1]
        # A redelivered duplicate keeps the first arrival's place (and deadline).
        mine.entries.setdefault(event_id, (self._clock(), item))
        mine.bound(self.max_pending)
        return None

    def _join(self, event_id: str, prediction: Predicted, label: Label) -> Joined:
        self.joined += 1
        return Joined(event_id, prediction, label)

    def expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        self._labels.expire(deadline)
        self._predictions.expire(deadline)

    @property
    def pending(self) -> int:
        return len(self._labels.entries) + len(self._predictions.entries)

    @property
    def unmatched(self) -> int:
        """Entries that left without a partner: expired or evicted, either side."""
        return (self._labels.expired + self._labels.evicted
                + self._predictions.expired + self._predictions.evicted)

    def counts(self) -> dict[str, int]:
        return {"joined": self.joined, "pending_labels": len(self._labels.entries),
                "pending_predictions": len(self._predictions.entries),
                "expired_labels": self._labels.expired, "expired_predictions": self._predictions.expired,
                "evicted_labels": self._labels.evicted, "evicted_predictions": self._predictions.evicted}
