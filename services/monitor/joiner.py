"""Pairs each served prediction with its true label, by event_id.

Labels come from `driftline.labels` (a label known only later: a delayed label)
and from labelled `driftline.features` records; predictions from
`driftline.predictions`; in no particular order: whichever side arrives first
waits for the other. A label that arrives after its prediction is a *late*
label and joins; one whose prediction already left the join (past the
time-to-live) is *too late* and is counted and dropped; one that never meets a
prediction is *unmatched* once it expires. None of them is an error. Waiting is bounded twice — by time (`ttl_s`, on the
monitor's clock: a label that never gets predicted must not wait forever) and
by count (`max_pending` per side, oldest out first) — and everything that
leaves unmatched is counted, so a join that silently stops working shows up.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple


# Plain tuples: one is made per record on the monitor's hot path.


class Label(NamedTuple):
    value: int
    event_time_ms: int


class Predicted(NamedTuple):
    model_name: str
    model_version: int
    label: int
    served_at_ms: int = 0


class Joined(NamedTuple):
    event_id: str
    prediction: Predicted
    label: Label

    @property
    def correct(self) -> bool:
        return self.prediction.label == self.label.value


class _Waiting:
    """One side's pending entries in arrival order (dicts keep it), so the oldest are first out."""

    def __init__(self, remember_gone: int = 0) -> None:
        self.entries: dict[str, tuple[float, object]] = {}
        self.expired = 0
        self.evicted = 0
        # The ids that left unmatched most recently (bounded), to tell "too late" from "unknown".
        self.gone: dict[str, None] = {}
        self._remember_gone = remember_gone

    def _left(self, event_id: str) -> None:
        if self._remember_gone:
            gone = self.gone
            gone[event_id] = None
            if len(gone) > self._remember_gone * 1.1:  # trimmed in one pass, as in bound()
                for old in list(itertools.islice(gone, len(gone) - self._remember_gone)):
                    del gone[old]

    def expire(self, deadline: float) -> None:
        entries = self.entries
        victims = list(itertools.takewhile(lambda event_id: entries[event_id][0] <= deadline, entries))
        for event_id in victims:
            del entries[event_id]
            self._left(event_id)
        self.expired += len(victims)

    def bound(self, max_pending: int) -> None:
        """Evicts the oldest down to 90 % of `max_pending`, in one pass: a dict keeps deleted
        slots at its front until it resizes, so evicting one at a time would rescan them."""
        entries = self.entries
        if len(entries) <= max_pending:
            return
        victims = list(itertools.islice(entries, len(entries) - int(max_pending * 0.9)))
        for event_id in victims:
            del entries[event_id]
            self._left(event_id)
        self.evicted += len(victims)


class LabelJoin:
    """
    >>> now = [0.0]
    >>> join = LabelJoin(ttl_s=10, max_pending=2, clock=lambda: now[0])
    >>> join.add_prediction("e1", Predicted("m", 1, label=1)) is None
    True
    >>> join.add_label("e1", Label(1, event_time_ms=5)).correct
    True
    >>> join.add_label("e2", Label(0, 6)); now[0] = 11.0; join.expire()
    >>> join.counts()["pending_labels"], join.unmatched
    (0, 1)
    """

    def __init__(self, ttl_s: float = 600.0, max_pending: int = 100_000,
                 clock: Callable[[], float] = time.monotonic,
                 read_time: Callable[[object], int] | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._labels = _Waiting()
        self._predictions = _Waiting(remember_gone=max_pending)
        self._read_time = read_time  # (value, raw) pairs from add_labels: raw → event time ms
        self._recently_joined: dict[str, None] = {}  # bounded like the rest
        # Prediction logs seen within the time-to-live, by id (a log delivered twice: a producer's
        # retry, a spool replayed after a broker outage), bounded like the rest.
        self._logs = _Waiting()
        self.joined = 0
        self.late_labels = 0       # labels that found their prediction waiting
        self.too_late_labels = 0   # labels whose prediction had already expired or been evicted
        self.duplicate_labels = 0  # labels for an event already joined (a redelivery)
        self.duplicate_predictions = 0  # predictions for an event already joined (a repeated call)
        self.duplicate_logs = 0  # prediction logs already seen

    def add_label(self, event_id: str, label: Label) -> Joined | None:
        if event_id in self._recently_joined:
            self.duplicate_labels += 1
            return None
        if event_id in self._predictions.gone:
            del self._predictions.gone[event_id]
            self.too_late_labels += 1
            return None
        if event_id in self._predictions.entries:
            self.late_labels += 1
        prediction = self._take_or_wait(self._predictions, self._labels, event_id, label)
        return None if prediction is None else self._join(event_id, prediction, label)

    def add_labels(self, event_ids: list[str], labels: list) -> list | None:
        """Many labels at once, for the hot path: each a `Label` or a (value, raw) pair whose event
        time the join's `read_time(raw)` reads only if it ever joins (raw: the record's bytes,
        small and cheap to keep, where a parsed record would hold far more memory).
        When none of them meets a prediction, is a duplicate or too late — the usual case for
        labels that come with the event, before its prediction — they wait, in one dict update,
        and [] is returned. Otherwise nothing is done and None says "add them one by one"."""
        ids = set(event_ids)
        predictions = self._predictions
        # dict.keys().isdisjoint(set) walks the (small) set; set.isdisjoint(dict) would walk the dict.
        if (len(ids) != len(event_ids) or not predictions.entries.keys().isdisjoint(ids)
                or not self._recently_joined.keys().isdisjoint(ids) or not predictions.gone.keys().isdisjoint(ids)):
            return None
        entries = self._labels.entries
        now = self._clock()
        if entries.keys().isdisjoint(ids):  # the usual case: no redelivered label
            entries.update(zip(event_ids, zip(itertools.repeat(now), labels)))
        else:
            entries.update({event_id: (now, label) for event_id, label in zip(event_ids, labels)
                            if event_id not in entries})
        if len(entries) > self.max_pending:
            self._labels.bound(self.max_pending)
        return []

    def first_log(self, log_id: object) -> bool:
        """Whether a prediction log (`log_id`: its request id, model, version and variant) is new;
        a repeat within the time-to-live is counted and False.

        >>> join = LabelJoin(ttl_s=10, clock=lambda: 0.0)
        >>> join.first_log(("r1", "m", 1)), join.first_log(("r1", "m", 1)), join.duplicate_logs
        (True, False, 1)
        """
        entries = self._logs.entries
        if log_id in entries:
            self.duplicate_logs += 1
            return False
        entries[log_id] = (self._clock(), None)
        if len(entries) > self.max_pending:
            self._logs.bound(self.max_pending)
        return True

    def add_prediction(self, event_id: str, prediction: Predicted) -> Joined | None:
        if event_id in self._recently_joined:  # its label went to the prediction that came first
            self.duplicate_predictions += 1
            return None
        label = self._take_or_wait(self._labels, self._predictions, event_id, prediction)
        if label is None:
            return None
        if not isinstance(label, Label):
            label = Label(label[0], self._read_time(label[1]))
        return self._join(event_id, prediction, label)

    def add_predictions(self, event_ids: Sequence[str], labels: Sequence[int], model_name: str,
                        model_version: int, served_at_ms: int = 0) -> list[Joined]:
        """One log's predicted rows at once (rows without an event id are skipped); returns the
        rows that met their label, in row order. The same as `add_prediction` row by row.

        >>> join = LabelJoin(ttl_s=10, clock=lambda: 0.0)
        >>> join.add_label("e2", Label(1, 7))
        >>> [(j.event_id, j.correct) for j in join.add_predictions(["e1", "", "e2"], [0, 1, 1], "m", 1)]
        [('e2', True)]
        >>> join.counts()["pending_predictions"]
        1
        """
        joined: list[Joined] = []
        for event_id, label in zip(event_ids, labels):
            if event_id and (one := self.add_prediction(
                    event_id, Predicted(model_name, model_version, label, served_at_ms))) is not None:
                joined.append(one)
        return joined

    def _take_or_wait(self, other: _Waiting, mine: _Waiting, event_id: str, item: object):
        found = other.entries.pop(event_id, None)
        if found is not None:
            return found[1]
        # A redelivered duplicate keeps the first arrival's place (and deadline).
        entries = mine.entries
        if event_id not in entries:
            entries[event_id] = (self._clock(), item)
            if len(entries) > self.max_pending:
                mine.bound(self.max_pending)
        return None

    def _join(self, event_id: str, prediction: Predicted, label: Label) -> Joined:
        self.joined += 1
        recent = self._recently_joined
        recent[event_id] = None
        if len(recent) > self.max_pending * 1.1:  # trimmed in one pass, as in bound()
            for old in list(itertools.islice(recent, len(recent) - self.max_pending)):
                del recent[old]
        return Joined(event_id, prediction, label)

    def expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        self._labels.expire(deadline)
        self._predictions.expire(deadline)
        self._logs.expire(deadline)

    @property
    def unmatched(self) -> int:
        """Entries that left without a partner: expired or evicted, either side."""
        return (self._labels.expired + self._labels.evicted
                + self._predictions.expired + self._predictions.evicted)

    def counts(self) -> dict[str, int]:
        return {"joined": self.joined, "pending_labels": len(self._labels.entries),
                "pending_predictions": len(self._predictions.entries),
                "expired_labels": self._labels.expired, "expired_predictions": self._predictions.expired,
                "evicted_labels": self._labels.evicted, "evicted_predictions": self._predictions.evicted,
                "late_labels": self.late_labels, "too_late_labels": self.too_late_labels,
                "duplicate_labels": self.duplicate_labels, "duplicate_predictions": self.duplicate_predictions,
                "duplicate_logs": self.duplicate_logs}
