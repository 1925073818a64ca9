"""The one interface every drift detector of the monitor shares (as river's detectors share
`update` and `drift_detected`): `update(batch)` takes the next events — 0/1 errors for the
concept-drift detectors (`signals.ErrorCusum`, `detectors.ErrorRateChange`), rows (n, F) for
the window detectors (`signals.WindowDrift`) — and returns the alarms among them, oldest
first; `reset()` forgets the evidence gathered so far, while positions keep counting from
the start of the stream. Every alarm is an `Alarm`: which statistic, its value and
threshold, and the 1-based positions (labelled sample, or served row) where the change
began and where it was detected; a detector's own alarm type adds what only it knows.
tests/monitor/test_detectors.py runs one check suite over every implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(kw_only=True)
class Alarm:
    statistic: str        # cusum, adwin (concept drift); ks, js, psi (windows)
    value: float
    threshold: float
    change_sample: int    # 1-based position where the change most likely began ...
    detected_sample: int  # ... and where it was detected


@runtime_checkable
class Detector(Protocol):
    def update(self, batch) -> Sequence[Alarm]:
        """Adds the next events; returns the alarms among them, oldest first."""

    def reset(self) -> None:
        """Forgets the evidence gathered so far; positions keep counting."""
