"""Everything the monitor knows about one model version, and its DriftReport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import monitor_pb2

from .detectors import ChangePoint, ErrorRateChange, RollingAccuracy
from .joiner import Joined
from .psi import RollingHistogram
from .references import ModelReference

# The positive-class score is compared like a feature, under this name.
SCORE = "_score"


@dataclass(frozen=True)
class TrackerConfig:
    accuracy_window: int = 500
    adwin_delta: float = 0.002
    psi_window: int = 1000
    psi_min_samples: int = 200
    psi_threshold: float = 0.25


class VersionTracker:
    def __init__(self, model_name: str, version: int, config: TrackerConfig) -> None:
        self.model_name = model_name
        self.version = version
        self.config = config
        self.samples = 0  # labelled predictions joined
        self.predicted_rows = 0  # every served row, labelled or not
        self.accuracy = RollingAccuracy(config.accuracy_window)
        self.errors = ErrorRateChange(config.adwin_delta)
        # The latest change that made errors worse, until a later change makes them better.
        self.drift: ChangePoint | None = None
        self.reference: ModelReference | None = None
        self._histograms: list[tuple[int, RollingHistogram]] = []  # (position in the row, histogram)
        self._score_histogram: RollingHistogram | None = None

    def set_reference(self, reference: ModelReference) -> None:
        self.reference = reference
        window = self.config.psi_window
        self._histograms = [(i, RollingHistogram(reference.features[name], window))
                            for i, name in enumerate(reference.feature_names) if name in reference.features]
        self._score_histogram = RollingHistogram(reference.scores, window) if reference.scores else None

    def add_prediction(self, features: Sequence[float], scores: Sequence[float]) -> None:
        """A served row: its inputs (and score) feed PSI, whether or not a label ever comes."""
        self.predicted_rows += 1
        for position, histogram in self._histograms:
            if position < len(features):
                histogram.add(features[position])
        if self._score_histogram is not None and len(scores) >= 2:
            self._score_histogram.add(scores[1])

    def add_outcome(self, joined: Joined) -> ChangePoint | None:
        """A prediction with its true label; returns a change when ADWIN detects one."""
        self.samples += 1
        self.accuracy.add(joined.correct)
        change = self.errors.add(not joined.correct, joined.label.event_time_ms)
        if change is not None:
            self.drift = change if change.worse else None
        return change

    def feature_drift(self) -> list[monitor_pb2.FeatureDrift]:
        named = [(self.reference.feature_names[i], h) for i, h in self._histograms] if self.reference else []
        if self._score_histogram is not None:
            named.append((SCORE, self._score_histogram))
        result = []
        for name, histogram in named:
            if histogram.count == 0:
                continue
            value = histogram.psi()
            drifted = histogram.count >= self.config.psi_min_samples and value > self.config.psi_threshold
            result.append(monitor_pb2.FeatureDrift(feature=name, psi=value, drifted=drifted))
        return result

    def report(self, now_ns: int, training_request_id: str = "") -> monitor_pb2.DriftReport:
        computed_at = Timestamp()
        computed_at.FromNanoseconds(now_ns)
        report = monitor_pb2.DriftReport(
            model_name=self.model_name, model_version=self.version, samples=self.samples,
            rolling_accuracy=self.accuracy.value, concept_drift=self.drift is not None,
            features=self.feature_drift(), computed_at=computed_at,
            training_request_id=training_request_id)
        if self.drift is not None:
            report.change_time.FromMilliseconds(self.drift.event_time_ms)
            report.change_sample = self.drift.sample
        return report
