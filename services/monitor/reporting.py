"""What the monitor tells: DriftReports (a version's numbers and its active alerts, with the
label join's counts), when they are due, and where each goes besides the stats topic —
Prometheus gauges, the dashboard's bounded history and timeline markers (alerts, requests,
versions, promotions), and live watchers through the `Hub`."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from driftline.v1 import monitor_pb2

from .hub import Hub
from .joiner import LabelJoin
from .metrics import (
    ACTIVE_ALERTS, ALERTS, CONCEPT_DRIFT, ERROR_CUSUM, ERROR_CUSUM_THRESHOLD, ERROR_RATE, FEATURE_DRIFTED,
    FEATURE_JS, FEATURE_KS, FEATURE_PSI, FEATURE_THRESHOLD, JOIN_STATE, PREDICTION_DRIFT, REFERENCE_ERROR_RATE,
    ROLLING_ACCURACY,
)
from .tracker import CONCEPT, DATA, PREDICTION, Alert, VersionTracker

log = logging.getLogger(__name__)

SIGNALS = (CONCEPT, DATA, PREDICTION)


class Reports:
    def __init__(self, join: LabelJoin, *, every_samples: int, every_s: float, hub: Hub | None = None,
                 history: int = 2000, clock: Callable[[], float] = time.monotonic) -> None:
        self.join = join
        self.every_samples = every_samples
        self.every_s = every_s
        self.hub = hub or Hub()
        self._clock = clock
        # What the dashboard draws: compact reports and markers, bounded.
        self.history: deque[dict] = deque(maxlen=history)
        self.markers: deque[dict] = deque(maxlen=history)
        # What each tracker had and when, at its last report: only news is reported.
        self._last: dict[tuple[str, int], tuple[int, int, float]] = {}

    def report(self, tracker: VersionTracker, now_ns: int, training_request_id: str = "") -> monitor_pb2.DriftReport:
        report = tracker.report(now_ns, training_request_id)
        report.join.CopyFrom(self._join_counts())
        return report

    def _join_counts(self) -> monitor_pb2.JoinCounts:
        c = self.join.counts()
        return monitor_pb2.JoinCounts(
            joined=c["joined"], pending_labels=c["pending_labels"], pending_predictions=c["pending_predictions"],
            late_labels=c["late_labels"], too_late_labels=c["too_late_labels"],
            unmatched_labels=c["expired_labels"] + c["evicted_labels"],
            unmatched_predictions=c["expired_predictions"] + c["evicted_predictions"])

    def due(self, trackers: Iterable[VersionTracker]) -> list[VersionTracker]:
        """The trackers with news (labelled samples, served rows or the stream's events) whose report
        is due: `every_samples` more labelled samples, or `every_s` since their last report."""
        now = self._clock()
        found = []
        for tracker in trackers:
            samples, rows, at = self._last.get((tracker.model_name, tracker.version), (0, 0, float("-inf")))
            news = tracker.samples != samples or _rows(tracker) != rows
            if news and (tracker.samples - samples >= self.every_samples or now - at >= self.every_s):
                found.append(tracker)
        return found

    def published(self, tracker: VersionTracker, report: monitor_pb2.DriftReport) -> None:
        """A report went to the stats topic: gauges, history and watchers get it too."""
        self._last[(tracker.model_name, tracker.version)] = (tracker.samples, _rows(tracker), self._clock())
        export_gauges(tracker, report)
        self.history.append(compact(report))
        self.hub.publish(("report", report))

    def alerted(self, tracker: VersionTracker, alert: Alert) -> None:
        """A new alert: counted, logged and marked on the timeline."""
        ALERTS.labels(tracker.model_name, alert.signal, alert.statistic).inc()
        log.warning("alert", extra={"model": tracker.model_name, "version": tracker.version, "signal": alert.signal,
                                    "statistic": alert.statistic, "features": alert.features,
                                    "value": round(alert.value, 4), "threshold": round(alert.threshold, 4),
                                    "change_sample": alert.change_sample, "detected_sample": alert.detected_sample,
                                    "detected_offset": alert.detected_at.offset})
        self.mark("alert", tracker.model_name, tracker.version, alert.description, int(alert.detected_wall * 1000),
                  signal=alert.signal, statistic=alert.statistic, features=alert.features)

    def mark(self, kind: str, model: str, version: int, text: str, at_ms: int, **extra) -> None:
        marker = {"kind": kind, "model": model, "version": version, "text": text, "at_ms": at_ms, **extra}
        self.markers.append(marker)
        self.hub.publish(("marker", marker))

    def export_join(self) -> None:
        for kind, count in self.join.counts().items():
            JOIN_STATE.labels(kind).set(count)
        JOIN_STATE.labels("unmatched").set(self.join.unmatched)

    def forget(self, tracker: VersionTracker) -> None:
        """A version no longer tracked: its gauges go too."""
        self._last.pop((tracker.model_name, tracker.version), None)
        remove_gauges(tracker)


def _rows(tracker: VersionTracker) -> int:
    """Rows a tracker has compared: served rows and the stream's events (news for a report)."""
    return tracker.predicted_rows + tracker.stream_rows + tracker.prefilled_rows


def export_gauges(tracker: VersionTracker, report: monitor_pb2.DriftReport) -> None:
    """A published report's numbers as the version's Prometheus gauges."""
    name, version = tracker.model_name, str(tracker.version)
    ROLLING_ACCURACY.labels(name, version).set(report.rolling_accuracy)
    CONCEPT_DRIFT.labels(name, version).set(int(report.concept_drift))
    PREDICTION_DRIFT.labels(name, version).set(int(report.prediction_drift))
    ERROR_RATE.labels(name, version).set(tracker.error_rate)
    if tracker.calibrated:
        ERROR_CUSUM.labels(name, version).set(report.error_cusum)
        ERROR_CUSUM_THRESHOLD.labels(name, version).set(report.error_cusum_threshold)
        REFERENCE_ERROR_RATE.labels(name, version).set(report.reference_error_rate)
    for feature in report.features:
        FEATURE_PSI.labels(name, version, feature.feature).set(feature.psi)
        if feature.categorical:  # its distance is JS, not KS
            FEATURE_JS.labels(name, version, feature.feature).set(feature.js)
            FEATURE_THRESHOLD.labels(name, version, feature.feature, "js").set(feature.js_threshold)
        else:
            FEATURE_KS.labels(name, version, feature.feature).set(feature.ks)
            FEATURE_THRESHOLD.labels(name, version, feature.feature, "ks").set(feature.ks_threshold)
        FEATURE_DRIFTED.labels(name, version, feature.feature).set(int(feature.drifted))
        FEATURE_THRESHOLD.labels(name, version, feature.feature, "psi").set(feature.psi_threshold)
    for signal in SIGNALS:
        ACTIVE_ALERTS.labels(name, version, signal).set(sum(a.signal == signal for a in report.alerts))


def compact(report: monitor_pb2.DriftReport) -> dict:
    """A DriftReport as the dashboard draws it (JSON-friendly, short keys)."""
    return {
        "t": report.computed_at.ToMilliseconds(), "model": report.model_name, "version": report.model_version,
        "samples": report.samples, "rows": report.predicted_rows, "accuracy": round(report.rolling_accuracy, 4),
        "concept": report.concept_drift, "prediction_drift": report.prediction_drift,
        "cusum": round(report.error_cusum, 3), "cusum_threshold": round(report.error_cusum_threshold, 3),
        "production": report.production, "request": report.training_request_id,
        "features": {f.feature: {"ks": round(f.ks, 4), "psi": round(f.psi, 4), "ks_thr": round(f.ks_threshold, 4),
                                 "psi_thr": round(f.psi_threshold, 4), "drifted": f.drifted,
                                 **({"js": round(f.js, 4), "js_thr": round(f.js_threshold, 4), "categorical": True}
                                    if f.categorical else {})}
                     for f in report.features},
        "alerts": [{"signal": a.signal, "statistic": a.statistic, "features": list(a.features),
                    "value": round(a.value, 4), "threshold": round(a.threshold, 4), "confirmed": a.confirmed,
                    "change_offset": a.change_offset, "detected_offset": a.detected_offset,
                    "description": a.description} for a in report.alerts],
        "join": {"joined": report.join.joined, "late": report.join.late_labels,
                 "too_late": report.join.too_late_labels, "unmatched": report.join.unmatched_labels},
    }


def remove_gauges(tracker: VersionTracker) -> None:
    """A forgotten version's gauges would otherwise be scraped forever at their last value."""
    labels = (tracker.model_name, str(tracker.version))
    series = [(g, labels) for g in (ROLLING_ACCURACY, CONCEPT_DRIFT, PREDICTION_DRIFT, ERROR_RATE, ERROR_CUSUM,
                                     ERROR_CUSUM_THRESHOLD, REFERENCE_ERROR_RATE)]
    series += [(ACTIVE_ALERTS, (*labels, s)) for s in SIGNALS]
    for drift in tracker.feature_drift():
        distance = (FEATURE_JS, "js") if drift.categorical else (FEATURE_KS, "ks")
        series += [(g, (*labels, drift.feature)) for g in (FEATURE_PSI, distance[0], FEATURE_DRIFTED)]
        series += [(FEATURE_THRESHOLD, (*labels, drift.feature, s)) for s in (distance[1], "psi")]
    for gauge, values in series:
        try:
            gauge.remove(*values)
        except KeyError:  # never reported
            pass
