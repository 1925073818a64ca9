"""Everything the monitor knows about one model version, its alerts and its DriftReport.

Signals per version:

* concept drift on the 0/1 error stream of labelled predictions — a bank of
  Bernoulli CUSUMs against the error rate of the version's first
  `error_reference_samples` labelled predictions, refined from the later ones
  (but the latest `error_guard_samples`) until an alarm, after which it is learnt
  again (numpy, per batch), with its threshold bootstrapped for the expected run
  length and the in-control count; and river's ADWIN, whose
  delta is bootstrapped on the same reference. ADWIN is the river detector of
  choice because it assumes nothing about the error rate's level or trend (DDM
  assumes a learner whose error only falls and misfires on a fixed, deployed
  model; HDDM's bounds need the same warm-up and add nothing to a calibrated
  CUSUM) and because the window it keeps locates the change and tells when the
  error rate is back down, which clears the drift;
* data drift per feature and prediction (score) drift: sliding-window PSI and
  KS against the reference bins in metadata.json (`signals.WindowDrift`); for a
  categorical feature (its reference lists categories) Jensen–Shannon distance
  takes KS's place (`categorical.py`).

Data drift has one source per version. Served rows (prediction logs) feed `window`: the
features and the score, as long as nothing else feeds the features. The production version of a
stream sees that stream's events themselves (`add_stream_rows`, from the feature records): from
their first row on, the features are compared in `stream_window` and `window` keeps the score
only, so an event that was also served is never counted twice; `stop_stream` (the version left
production) gives the features back to the served rows. `prefill_stream` opens the stream window
with the stream's latest events from before (the monitor keeps them while no version is fed).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import monitor_pb2

from .alarms import Alarm
from .calibration import calibrate_adwin, calibrate_windows, cusum_bootstrap_level, refined_cusum
from .detectors import ChangeAlarm, ChangePoint, ErrorRateChange, RollingAccuracy
from .joiner import Joined
from .references import ModelReference
from .settings import TrackerConfig
from .signals import ErrorCusum, WindowDrift, glr_change

log = logging.getLogger(__name__)

# The positive-class score is compared like a feature, under this name.
SCORE = "_score"
CONCEPT, DATA, PREDICTION = "concept_drift", "data_drift", "prediction_drift"


def error_cusum(reference_errors, config: TrackerConfig, floor: float = 0.0) -> ErrorCusum:
    """A version's concept-drift CUSUMs, calibrated on its first labelled predictions and
    refined from the rest (`calibration.refined_cusum`); bench/drift.py runs this too.
    After an alarm they learn the new regime from `error_reference_samples` more; the version's
    alert stays up (ADWIN clears it), and a further rise fires again."""
    return refined_cusum(reference_errors, config.expected_run_length, config.cusum_shifts,
                         guard=config.error_guard_samples, relearn=config.error_reference_samples,
                         streams=config.calibration_streams, floor=floor)


class Position(NamedTuple):
    """Where a record was read from."""
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass
class Alert:
    signal: str
    statistic: str
    features: list[str]
    value: float
    threshold: float
    change_sample: int
    detected_sample: int
    change_time_ms: int
    change_at: Position
    detected_at: Position
    description: str
    alert_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    detected_wall: float = field(default_factory=time.time)
    confirmed: bool = False
    training_request_id: str = ""
    active: bool = True
    refires: int = 0
    requested_refires: int = -1  # `refires` when its training request went out
    # The CUSUM bank's member that fired (its error-rate rise over the reference); 0 for other statistics.
    member: float = 0.0

    @classmethod
    def from_alarm(cls, signal: str, alarm: Alarm, *, change_time_ms: int, change_at: Position,
                   detected_at: Position, description: str, features: Sequence[str] = ()) -> Alert:
        """The alert for a detector's alarm: its statistic, value, threshold and positions."""
        return cls(signal=signal, statistic=alarm.statistic, features=list(features), value=alarm.value,
                   threshold=alarm.threshold, change_sample=alarm.change_sample,
                   detected_sample=alarm.detected_sample, change_time_ms=change_time_ms, change_at=change_at,
                   detected_at=detected_at, description=description, member=getattr(alarm, "shift", 0.0))

    def fired_again(self, alert: Alert) -> None:
        """A later firing of the same signal: its statistic's value, threshold and member replace
        the earlier firing's together. A refined CUSUM's threshold moves between firings (it is
        bootstrapped again as its reference grows, and after an alarm for the new regime's), so a
        value kept beside an older threshold would read "17.72 > threshold 18.13"."""
        self.refires += 1
        self.value, self.threshold, self.member = alert.value, alert.threshold, alert.member

    def statistic_text(self) -> str:
        """What fired, in the alert's own numbers: "CUSUM 24.1 > threshold 24 (member +0.05)".
        ADWIN's value is the rise of the error rate and its threshold the confidence delta, which
        no ">" relates.

        >>> Alert("concept_drift", "cusum", [], 24.1, 24.0, 1, 2, 0, Position(), Position(), "", member=0.05).statistic_text()
        'CUSUM 24.1 > threshold 24 (member +0.05)'
        >>> Alert("concept_drift", "adwin", [], 0.31, 0.002, 1, 2, 0, Position(), Position(), "").statistic_text()
        'ADWIN error rate up 0.31 (delta 0.002)'
        """
        if self.statistic == "adwin":
            return f"ADWIN error rate up {self.value:.4g} (delta {self.threshold:.4g})"
        member = f" (member +{self.member:g})" if self.member else ""
        return f"{self.statistic.upper()} {self.value:.4g} > threshold {self.threshold:.4g}{member}"

    def requested(self, request_id: str) -> None:
        """Its training request went out."""
        self.confirmed, self.training_request_id = True, request_id
        self.requested_refires = self.refires

    def to_proto(self) -> monitor_pb2.Alert:
        out = monitor_pb2.Alert(
            alert_id=self.alert_id, signal=self.signal, statistic=self.statistic, features=self.features,
            value=self.value, threshold=self.threshold, change_sample=self.change_sample,
            detected_sample=self.detected_sample, topic=self.detected_at.topic,
            partition=self.detected_at.partition, change_offset=self.change_at.offset,
            detected_offset=self.detected_at.offset, confirmed=self.confirmed,
            training_request_id=self.training_request_id, description=self.description)
        if self.change_time_ms:
            out.change_time.FromMilliseconds(self.change_time_ms)
        out.detected_at.FromNanoseconds(int(self.detected_wall * 1e9))
        return out


class VersionTracker:
    def __init__(self, model_name: str, version: int, config: TrackerConfig) -> None:
        self.model_name = model_name
        self.version = version
        self.config = config
        self.samples = 0  # labelled predictions joined
        self.predicted_rows = 0  # every served row, labelled or not
        self.accuracy = RollingAccuracy(config.accuracy_window)
        self.errors = ErrorRateChange(config.adwin_delta)
        self.adwin_delta = config.adwin_delta
        # The latest change that made errors worse, until the error rate is seen back down.
        self.drift: ChangePoint | None = None
        self.reference: ModelReference | None = None
        self.production = False
        self.cusum: ErrorCusum | None = None
        self._reference_errors: list[int] = []
        self._pending_errors: list[int] = []
        # The reference's errors against the held-out error, until the reference is complete.
        self._deployment: ErrorCusum | None = None
        self._deployment_checked = False
        # (event time, position, error) of recent labelled samples, to name where a change began.
        self._sample_at: deque[tuple[int, Position, int]] = deque(maxlen=50_000)
        # (first row, served-at ms, position) of recent prediction logs, for data-drift alerts.
        self._logs: deque[tuple[int, int, Position]] = deque(maxlen=10_000)
        # Served rows: the features and the score, or only the score while the stream feeds the features.
        self.window: WindowDrift | None = None
        self._served: list[int] = []  # per column of `window`: the served row's column, or -1 (the score)
        # The stream's own events (production version only), from the feature records.
        self.stream_window: WindowDrift | None = None
        self.stream_rows = 0  # rows of the stream's events seen since it feeds this version
        self.prefilled_rows = 0  # the stream's latest events from before, that opened its window (`prefill_stream`)
        self._prefilled_through = 0  # the stream window's last row of those
        # (first row of `stream_window`, event ms, position) per input batch
        self._stream_at: deque[tuple[int, int, Position]] = deque(maxlen=10_000)
        self.alerts: list[Alert] = []  # newest last; bounded
        self._new_alerts: list[Alert] = []  # raised since `take_new_alerts`

    # -- the reference -------------------------------------------------------------------

    def set_reference(self, reference: ModelReference) -> None:
        self.reference = reference
        names = [n for n in reference.feature_names if n in reference.features]
        # The compared features' columns in a feature vector (the model's feature order).
        self._columns = [reference.feature_names.index(n) for n in names]
        self._with_score = reference.scores is not None
        self._serve(features=True)

    def _serve(self, *, features: bool) -> None:
        """(Re)builds the served rows' window: the compared features (unless the stream feeds them)
        and the score."""
        ref = self.reference
        columns = self._columns if features else []
        self._served = [*columns, *([-1] if self._with_score else [])]
        names = [ref.feature_names[c] for c in columns] + ([SCORE] if self._with_score else [])
        old, self.window = self.window, self._calibrated(names, "served rows")
        if old is not None and self.window is not None:
            self.window.carry(old)  # the score's rows so far stay in its window

    def _calibrated(self, names: list[str], source: str) -> WindowDrift | None:
        """A window over `names` (features, and SCORE for the score) against the reference's bins,
        its thresholds bootstrapped for the expected run length (`calibrate_windows`); None for
        no names."""
        ref = self.reference
        bins = [ref.scores if n == SCORE else ref.features[n] for n in names]
        if not bins:
            return None
        # A categorical feature's bins are its categories and one more, unseen (reference share 0).
        k = max(len(b.proportions) + b.categorical for b in bins)
        proportions = np.zeros((len(bins), k))
        for i, b in enumerate(bins):
            proportions[i, :len(b.proportions)] = b.proportions
        categorical = np.array([b.categorical for b in bins])
        started = time.perf_counter()
        c = self.config
        calibration = calibrate_windows(proportions, c.psi_window, c.window_step, c.expected_run_length,
                                        c.window_confirm, streams=c.calibration_streams,
                                        reference_rows=ref.reference_rows, categorical=categorical)
        window = WindowDrift(names, [np.asarray(b.edges) for b in bins], proportions,
                             window=c.psi_window, step=c.window_step, psi_threshold=calibration.psi,
                             ks_threshold=calibration.ks, confirm=c.window_confirm,
                             clear_ratio=c.window_clear_ratio,
                             categories=[np.asarray(b.categories) if b.categorical else None for b in bins],
                             js_threshold=calibration.js)
        log.info("data-drift thresholds calibrated", extra={
            "model": self.model_name, "version": self.version, "source": source, "features": len(names),
            "categorical": [n for n, cat in zip(names, categorical) if cat],
            "ert": c.expected_run_length, "seconds": round(time.perf_counter() - started, 3)})
        return window

    # -- the data-drift source -------------------------------------------------------------

    @property
    def compares_stream(self) -> bool:
        """Whether the stream's events can be compared here: a reference with feature bins."""
        return self.reference is not None and bool(self._columns)

    def _use_stream(self) -> bool:
        """The stream's events feed the features from now on; the served rows keep the score."""
        if not self.compares_stream:
            return False
        names = [self.reference.feature_names[c] for c in self._columns]
        self.stream_window = self._calibrated(names, "stream")
        self._stream_at.clear()  # rows are numbered as the new window numbers them
        self._prefilled_through = 0
        self._serve(features=False)
        log.info("data drift from the stream's events; served rows feed prediction drift only", extra={
            "model": self.model_name, "version": self.version, "features": names})
        return True

    def stop_stream(self) -> None:
        """The stream no longer feeds this version (it left production): served rows feed its data
        drift again, from an empty window."""
        if self.stream_window is None:
            return
        self.stream_window = None
        self._serve(features=True)
        log.info("data drift from served rows again", extra={"model": self.model_name, "version": self.version})

    # -- input ---------------------------------------------------------------------------

    def add_predictions(self, features: np.ndarray, scores: np.ndarray, served_at_ms: int,
                        at: Position) -> None:
        """Served rows (n, F) and their positive-class scores (n,): they feed the prediction-drift
        window, and the data-drift one unless the stream's events feed it, whether or not labels
        ever come."""
        n = len(features)
        if not n:
            return
        self._logs.append((self.predicted_rows + 1, served_at_ms, at or Position()))
        self.predicted_rows += n
        if self.window is None:
            return
        matrix = np.empty((n, len(self.window.names)))
        width = features.shape[1] if features.ndim == 2 else 0
        for i, column in enumerate(self._served):
            if column < 0:
                matrix[:, i] = scores if len(scores) == n else np.nan
            else:
                matrix[:, i] = features[:, column] if column < width else np.nan
        self._compare(self.window, matrix, self._logs, "rows")

    def add_stream_rows(self, values: np.ndarray, event_time_ms: int, at: Position) -> None:
        """Rows (m, F) of the stream's events, F values each in the model's feature order (the
        monitor has checked the stream's feature names against the version's): from the first
        of them on they feed this version's data drift instead of the served rows."""
        m = len(values)
        if not m or (self.stream_window is None and not self._use_stream()):
            return
        self._stream_at.append((self.stream_window.rows + 1, event_time_ms, at or Position()))
        self.stream_rows += m
        self._compare(self.stream_window, values[:, self._columns], self._stream_at, "events of the stream")

    def prefill_stream(self, values: np.ndarray, at: Sequence[tuple[int, int, Position]]) -> bool:
        """The stream's latest events from before it fed this version (m, F), oldest first, open its
        window — the rows it has not been fed yet: a version promoted after a one-shot replay has a full
        window at once. `at`: (first row, event ms, position) of the batches they came in, rows
        numbered from 1 in `values`. Same calibrated window and tests as `add_stream_rows` (an alarm
        is located at those records); counted in `prefilled_rows`, not `stream_rows`. False when
        nothing was added (no rows, a window already open, or no feature bins)."""
        m = len(values)
        if not m or self.stream_window is not None or not self._use_stream():
            return False
        base = self.stream_window.rows
        self._stream_at.extend((base + first, ms, where) for first, ms, where in at)
        self.prefilled_rows += m
        self._prefilled_through = base + m
        self._compare(self.stream_window, values[:, self._columns], self._stream_at, "events of the stream")
        return True

    def _compare(self, window: WindowDrift, matrix: np.ndarray, positions: deque, what: str) -> None:
        """Rows into `window`; its alarms are alerts (positions: (first row, ms, position) per input
        record), and an alert of its features clears once the window no longer alarms."""
        for alarm in window.update(matrix):
            start_ms, change_at = _row_at(positions, alarm.change_sample)
            _, detected_at = _row_at(positions, alarm.detected_sample)
            self._raise(Alert.from_alarm(
                PREDICTION if alarm.feature == SCORE else DATA, alarm, features=[alarm.feature],
                change_time_ms=start_ms, change_at=change_at, detected_at=detected_at, description=(
                    f"{alarm.statistic.upper()} of {alarm.feature} over the last {window.window} {what} "
                    f"is {alarm.value:.4f} > {alarm.threshold:.4f} (calibrated for one false alarm per "
                    f"{self.config.expected_run_length:.0f} rows) on {window.confirm} consecutive tests"
                    + self._prefill_note(window, alarm.change_sample))))
        for alert in self.alerts:
            if alert.active and alert.signal in (DATA, PREDICTION) and alert.features[0] in window.names:
                if not window.alarmed[window.names.index(alert.features[0])]:
                    alert.active = False

    def _prefill_note(self, window: WindowDrift, change_sample: int) -> str:
        """Says so when an alarmed window reaches back into the events that opened it (they came
        before the stream fed this version; the alert's change is located at them all the same)."""
        if window is not self.stream_window or change_sample > self._prefilled_through:
            return ""
        return (f"; the window opened with the stream's {self._prefilled_through} latest events from "
                f"before it fed this version")

    def rows_for(self, signal: str) -> int:
        """What a policy's minimum counts for an alert of `signal`: labelled samples for concept
        drift, else the rows of the window that raised it."""
        if signal == CONCEPT:
            return self.samples
        if signal == DATA and self.stream_window is not None:
            return self.stream_rows + self.prefilled_rows
        return self.predicted_rows

    def add_outcome(self, joined: Joined, at: Position | None = None) -> ChangeAlarm | None:
        """A prediction with its true label; returns a change when ADWIN detects one.
        CUSUM statistics are brought up to date by `flush()` (once per batch)."""
        self.samples += 1
        error = int(not joined.correct)
        event_ms = joined.label.event_time_ms or joined.prediction.served_at_ms
        self._sample_at.append((event_ms, at or Position(), error))
        self.accuracy.add(joined.correct)
        if self.cusum is None:
            self._reference_errors.append(error)
        else:
            self._pending_errors.append(error)
        changes = self.errors.update((error,), (event_ms,))
        change = changes[0] if changes else None
        if change is not None:
            if change.worse:
                self.drift = change.point
                _, change_at = self._sample(change.change_sample)
                self._raise(Alert.from_alarm(
                    CONCEPT, change, change_time_ms=change.event_time_ms, change_at=change_at,
                    detected_at=at or Position(), description=(
                        f"ADWIN (delta {self.adwin_delta:g}) saw the error rate go from {change.error_before:.3f} "
                        f"to {change.error_after:.3f} starting at labelled sample {change.change_sample}")))
            else:
                self.drift = None
                for alert in self.alerts:
                    if alert.signal == CONCEPT:
                        alert.active = False
        if self.cusum is None and len(self._reference_errors) >= self.config.error_reference_samples:
            self._calibrate_errors()
        return change

    def _calibrate_errors(self) -> None:
        c = self.config
        started = time.perf_counter()
        floor = (self.reference.eval_error or 0.0) if self.reference is not None else 0.0
        self._check_against_evaluation()
        self._deployment_checked, self._deployment = True, None
        self.cusum = error_cusum(self._reference_errors, c, floor)
        self.cusum.samples = self.samples
        self.cusum.reset()
        if c.calibrate_adwin:
            self.adwin_delta = calibrate_adwin(self._reference_errors, c.expected_run_length)
            self.errors = ErrorRateChange(self.adwin_delta)
            self.errors.samples = self.samples
        log.info("error-stream thresholds calibrated", extra={
            "model": self.model_name, "version": self.version, "reference_error_rate": round(self.cusum.p0, 4),
            "cusum_threshold": round(self.cusum.threshold, 3), "adwin_delta": self.adwin_delta,
            "ert": c.expected_run_length, "seconds": round(time.perf_counter() - started, 3)})

    def _check_against_evaluation(self) -> None:
        """Concept drift already there when the version went live: its reference (first labelled
        samples) is what the CUSUMs learn as normal, so a drift that began around the deployment
        would never be seen by them. While the reference fills, its errors also run through a
        CUSUM bank against the error rate of the version's held-out evaluation, at the same
        expected run length, its level bootstrapped for a rate estimated from `eval_rows` samples."""
        ref = self.reference
        if self._deployment_checked or ref is None or ref.eval_error is None or ref.eval_rows < 20:
            return
        c = self.config
        p0 = float(np.clip(ref.eval_error, 0.005, 0.995))
        if self._deployment is None:
            level = cusum_bootstrap_level(p0, ref.eval_rows, c.expected_run_length, c.cusum_shifts,
                                          streams=c.calibration_streams)
            self._deployment = ErrorCusum(p0, level, c.cusum_shifts)
        alarms = self._deployment.update(np.asarray(self._reference_errors[self._deployment.samples:],
                                                    dtype=np.float64))
        if not alarms:
            return
        self._deployment_checked = True
        alarm = alarms[0]
        errors = np.asarray(self._reference_errors, dtype=np.float64)
        start = alarm.change_sample - 1 + glr_change(errors[alarm.change_sample - 1:alarm.detected_sample], p0)
        first = self.samples - errors.size + 1  # the reference's first labelled sample
        change_sample, detected_sample = first + start, first + alarm.detected_sample - 1
        change_ms, change_at = self._sample(change_sample)
        _, detected_at = self._sample(detected_sample)
        after = float(errors[start:].mean())
        self.drift = ChangePoint(change_sample, change_ms, p0, after)
        self._raise(Alert.from_alarm(
            CONCEPT, dataclasses.replace(alarm, change_sample=change_sample, detected_sample=detected_sample),
            change_time_ms=change_ms, change_at=change_at, detected_at=detected_at, description=(
                f"the error rate since deployment, {after:.3f} from labelled sample {change_sample}, is above the "
                f"version's held-out error {ref.eval_error:.3f} ({ref.eval_rows} rows): CUSUM reached "
                f"{alarm.value:.2f} > {alarm.threshold:.2f} (calibrated for one false alarm per "
                f"{c.expected_run_length:.0f} samples)")))

    def _sample(self, sample: int) -> tuple[int, Position]:
        back = self.samples - sample
        if not self._sample_at:
            return 0, Position()
        event_ms, at, _ = self._sample_at[-1 - back] if 0 <= back < len(self._sample_at) else self._sample_at[0]
        return event_ms, at

    def flush(self) -> None:
        """Runs the CUSUMs over the errors added since the last flush, in one numpy pass."""
        if self.cusum is None:
            self._check_against_evaluation()
        if self.cusum is None or not self._pending_errors:
            return
        errors, self._pending_errors = self._pending_errors, []
        alarms = self.cusum.update(errors)
        if not alarms:
            return
        alarm = alarms[0]
        kept = self._kept_errors(alarm.change_sample, alarm.detected_sample + 1)
        if kept is not None:
            alarm.change_sample += glr_change(kept, alarm.p0)
        change_ms, change_at = self._sample(alarm.change_sample)
        _, detected_at = self._sample(alarm.detected_sample)
        after = self.error_rate_since(alarm.change_sample)
        if self.drift is None:  # a CUSUM that fires again during the same drift does not move its start
            self.drift = ChangePoint(alarm.change_sample, change_ms, alarm.p0, after)
        self._raise(Alert.from_alarm(
            CONCEPT, alarm, change_time_ms=change_ms, change_at=change_at, detected_at=detected_at, description=(
                f"CUSUM for an error-rate rise of {alarm.shift:g} over the reference {alarm.p0:.3f} reached "
                f"{alarm.value:.2f} > {alarm.threshold:.2f} (calibrated for one false alarm per "
                f"{self.config.expected_run_length:.0f} samples); the change began at labelled sample "
                f"{alarm.change_sample}")))

    def error_rate_since(self, sample: int) -> float:
        """The error rate from labelled sample `sample` on (from the oldest kept, if it is older)."""
        oldest = self.samples - len(self._sample_at) + 1
        kept = self._kept_errors(max(sample, oldest), self.samples + 1)
        return float(kept.mean()) if kept is not None else 0.0

    def _changed_again(self, existing: Alert, refire: Alert) -> bool:
        """Whether a refiring concept alert marks a second change rather than the same one.

        A CUSUM restarts after it fires, so during one lasting drift its next firing places the
        change where it restarted, not where the errors rose. The later point is a new change only
        if the error rate after it is higher than between the two points (one-sided two-proportion
        z-test at z > 3); data-drift alerts and changes older than the kept samples move as found."""
        if existing.signal != CONCEPT or refire.change_sample <= existing.change_sample:
            return True
        between = self._kept_errors(existing.change_sample, refire.change_sample)
        after = self._kept_errors(refire.change_sample, self.samples + 1)
        if between is None or after is None:
            return True
        (e1, n1), (e2, n2) = (float(between.sum()), between.size), (float(after.sum()), after.size)
        pooled = (e1 + e2) / (n1 + n2)
        if pooled in (0.0, 1.0):
            return False
        z = (e2 / n2 - e1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        return z > 3.0

    def _kept_errors(self, first: int, end: int) -> np.ndarray | None:
        """The 0/1 errors of labelled samples first..end-1, or None when not all are kept."""
        oldest = self.samples - len(self._sample_at) + 1
        if first < oldest or end <= first or end > self.samples + 1:
            return None
        window = itertools.islice(self._sample_at, first - oldest, end - oldest)
        return np.fromiter((e for *_, e in window), dtype=np.float64, count=end - first)

    def _raise(self, alert: Alert | None) -> None:
        if alert is None:
            return
        # A signal that keeps firing while its alert is active refreshes it; it is not a new alert.
        for existing in self.alerts:
            if (existing.active and existing.signal == alert.signal and existing.statistic == alert.statistic
                    and existing.features == alert.features):
                if (existing.confirmed and existing.refires == existing.requested_refires
                        and self._changed_again(existing, alert)):
                    # The first firing since its training request, at a second change: should that retrain
                    # not be promoted (its window reached back to the earlier, smaller change), the next
                    # request starts from here.
                    existing.change_sample, existing.change_time_ms = alert.change_sample, alert.change_time_ms
                    existing.change_at, existing.detected_sample = alert.change_at, alert.detected_sample
                    existing.detected_at, existing.description = alert.detected_at, alert.description
                existing.fired_again(alert)
                return
        self.alerts.append(alert)
        self._new_alerts.append(alert)
        del self.alerts[:-50]

    # -- what the monitor asks ------------------------------------------------------------

    def take_new_alerts(self) -> list[Alert]:
        """The alerts raised since the last call (a refiring one is not new), oldest first."""
        new, self._new_alerts = self._new_alerts, []
        return new

    def relocate_drift(self, alert: Alert) -> ChangePoint | None:
        """Where a training request for `alert` starts: for a concept alert the version's drift,
        moved first to where that alert located the change (the request's window starts there);
        None for data and prediction alerts (their own change row is the start)."""
        if alert.signal != CONCEPT:
            return None
        if alert.change_time_ms and (self.drift is None or self.drift.sample != alert.change_sample):
            self.drift = ChangePoint(alert.change_sample, alert.change_time_ms,
                                     self.cusum.p0 if self.cusum else 0.0, self.error_rate_since(alert.change_sample))
        return self.drift

    @property
    def compares_rows(self) -> bool:
        """Whether served rows' values are compared (the version's reference has bins for them)."""
        return self.window is not None

    @property
    def error_rate(self) -> float:
        """ADWIN's estimate of the current error rate."""
        return self.errors.error_rate

    @property
    def calibrated(self) -> bool:
        """Whether the error-stream reference is complete (and the CUSUMs run)."""
        return self.cusum is not None

    # -- output --------------------------------------------------------------------------

    def feature_drift(self) -> list[monitor_pb2.FeatureDrift]:
        """Per compared column of each full window: the stream's features (when the stream feeds
        them), then the served rows' (the features otherwise, and the score)."""
        return [drift for w in (self.stream_window, self.window) if w is not None and w.count >= w.window
                for drift in _drift(w)]

    def active_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.active]

    def report(self, now_ns: int, training_request_id: str = "") -> monitor_pb2.DriftReport:
        computed_at = Timestamp()
        computed_at.FromNanoseconds(now_ns)
        features = self.feature_drift()
        report = monitor_pb2.DriftReport(
            model_name=self.model_name, model_version=self.version, samples=self.samples,
            rolling_accuracy=self.accuracy.value, concept_drift=self.drift is not None,
            features=features, computed_at=computed_at, training_request_id=training_request_id,
            predicted_rows=self.predicted_rows,
            alerts=[a.to_proto() for a in self.alerts if a.active or a.training_request_id == training_request_id
                    and training_request_id],
            adwin_delta=self.adwin_delta, expected_run_length=self.config.expected_run_length,
            prediction_drift=any(f.feature == SCORE and f.drifted for f in features),
            production=self.production)
        if self.cusum is not None:
            report.error_cusum = self.cusum.value
            report.error_cusum_threshold = self.cusum.threshold
            report.reference_error_rate = self.cusum.p0
        if self.drift is not None:
            report.change_time.FromMilliseconds(self.drift.event_time_ms)
            report.change_sample = self.drift.sample
        return report


def _drift(w: WindowDrift) -> list[monitor_pb2.FeatureDrift]:
    return [monitor_pb2.FeatureDrift(
        feature=name, psi=float(w.psi[i]), ks=float(w.ks[i]), drifted=bool(w.alarmed[i]),
        psi_threshold=float(w.psi_threshold[i]), ks_threshold=float(w.ks_threshold[i]), window=w.count,
        js=float(w.js[i]), js_threshold=float(w.js_threshold[i]), categorical=bool(w.categorical[i]))
        for i, name in enumerate(w.names)]


def _row_at(positions: deque[tuple[int, int, Position]], row: int) -> tuple[int, Position]:
    """The (ms, position) of the input record that brought 1-based row `row` (the oldest kept, if older)."""
    found = (0, Position())
    for first, ms, at in reversed(positions):
        if first <= row:
            return ms, at
        found = (ms, at)
    return found
