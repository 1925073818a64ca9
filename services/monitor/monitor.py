"""The monitor's stream processing: records in, DriftReports and TrainingRequests out.

One consumer reads features (true labels), predictions and training results;
`DriftMonitor.handle` is its ConsumerWorker handler and everything it publishes
is flushed before the batch is committed. State lives in memory: a restarted
monitor starts its statistics afresh from its committed offsets.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from confluent_kafka import Message

from driftline.v1 import features_pb2, monitor_pb2, serving_pb2, training_pb2
from services.common.kafka import DecodeFailure, Producer, decode
from services.common.settings import Topics

from .joiner import Joined, Label, LabelJoin, Predicted
from .metrics import (
    CHANGES, FEATURE_PSI, JOIN_STATE, ROLLING_ACCURACY, SAMPLES, TRAINING_REQUESTS, UNDECODABLE,
)
from .policy import DriftPolicy
from .references import RegistryReferences
from .tracker import TrackerConfig, VersionTracker

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)


class DriftMonitor:
    def __init__(self, *, topics: Topics, stream: str, producer: Producer,
                 references: RegistryReferences, policy: DriftPolicy, join: LabelJoin,
                 tracker_config: TrackerConfig, report_every_samples: int, report_every_s: float,
                 training_min_rows: int, max_versions_per_model: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = topics
        self.stream = stream
        self.producer = producer
        self.references = references
        self.policy = policy
        self.join = join
        self.tracker_config = tracker_config
        self.report_every_samples = report_every_samples
        self.report_every_s = report_every_s
        self.training_min_rows = training_min_rows
        self.max_versions_per_model = max_versions_per_model
        self._clock = clock
        self._trackers: dict[Key, VersionTracker] = {}
        # What each tracker had and when, at its last report: only news is reported.
        self._last_report: dict[Key, tuple[int, int, float]] = {}
        self._requested_by: dict[str, Key] = {}  # training request id → the version that asked
        self._blocked_by: dict[Key, str] = {}  # the policy rule that last said "not yet"
        self._lock = threading.Lock()  # the worker writes, gRPC reads
        self._handlers = {
            topics.features: (features_pb2.FeatureRecord, self._on_features),
            topics.predictions: (serving_pb2.PredictionLog, self._on_predictions),
            topics.training_results: (training_pb2.TrainingResult, self._on_training_result),
        }

    # -- input ---------------------------------------------------------------------------

    def handle(self, messages: Sequence[Message]) -> None:
        with self._lock:
            for msg in messages:
                message_type, on_record = self._handlers[msg.topic()]
                try:
                    record = decode(msg.value(), message_type)
                except DecodeFailure as exc:
                    # A poison record must not stall the monitor; it is counted and skipped.
                    UNDECODABLE.labels(msg.topic()).inc()
                    log.warning("skipping an undecodable record", extra={
                        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                        "error": str(exc)})
                    continue
                on_record(record)
            self._housekeeping()
        self.producer.flush()

    def tick(self) -> None:
        """Called when no records came: time-based reports and join expiry still happen."""
        with self._lock:
            self._housekeeping()
        self.producer.flush()

    def _on_features(self, record: features_pb2.FeatureRecord) -> None:
        if not record.HasField("label"):
            return  # nothing to join: an unlabelled event
        joined = self.join.add_label(record.event_id, Label(record.label, record.event_time.ToMilliseconds()))
        if joined:
            self._on_outcome(joined)

    def _on_predictions(self, prediction_log: serving_pb2.PredictionLog) -> None:
        name, version = prediction_log.model_name, prediction_log.model_version
        tracker = self._tracker(name, version)
        for row in prediction_log.rows:
            tracker.add_prediction(row.features, row.scores)
            if row.event_id:
                joined = self.join.add_prediction(row.event_id, Predicted(name, version, row.label))
                if joined:
                    self._on_outcome(joined)

    def _on_training_result(self, result: training_pb2.TrainingResult) -> None:
        # A retrain that failed or was not promoted leaves the drifted version serving:
        # let it ask again once the cooldown has passed.
        key = self._requested_by.get(result.request_id)
        if key and (result.status != training_pb2.TrainingResult.SUCCEEDED or not result.promoted):
            self.policy.rearm(*key)
            log.info("re-armed after an unsuccessful retrain", extra={
                "model": key[0], "version": key[1], "request_id": result.request_id,
                "status": training_pb2.TrainingResult.Status.Name(result.status), "error": result.error})

    def _on_outcome(self, joined: Joined) -> None:
        tracker = self._tracker(joined.prediction.model_name, joined.prediction.model_version)
        change = tracker.add_outcome(joined)
        SAMPLES.labels(tracker.model_name).inc()
        if change is not None:
            direction = "worse" if change.worse else "better"
            CHANGES.labels(tracker.model_name, direction).inc()
            log.info("error rate changed", extra={
                "model": tracker.model_name, "version": tracker.version, "direction": direction,
                "error_before": round(change.error_before, 4), "error_after": round(change.error_after, 4),
                "change_sample": change.sample, "change_time_ms": change.event_time_ms})
        if tracker.drift is not None:
            self._maybe_request_training(tracker)

    # -- decisions and output ------------------------------------------------------------

    def _maybe_request_training(self, tracker: VersionTracker) -> None:
        key = (tracker.model_name, tracker.version)
        decision = self.policy.decide(tracker.model_name, tracker.version, tracker.samples)
        if not decision.retrain:
            if self._blocked_by.get(key) != decision.rule:  # once per rule, not once per sample
                log.info("drift detected; not retraining yet", extra={
                    "model": key[0], "version": key[1], "why": decision.why})
            self._blocked_by[key] = decision.rule
            return
        drift = tracker.drift
        request = training_pb2.TrainingRequest(
            request_id=str(uuid.uuid4()), model_name=tracker.model_name, stream=self.stream,
            min_rows=self.training_min_rows,
            reason=(f"concept drift in {tracker.model_name} v{tracker.version}: ADWIN saw the error rate "
                    f"go from {drift.error_before:.3f} to {drift.error_after:.3f} starting at labelled "
                    f"sample {drift.sample} (event time {_iso(drift.event_time_ms)}); rolling accuracy "
                    f"{tracker.accuracy.value:.3f} over {tracker.accuracy.count}"))
        request.window_start.FromMilliseconds(drift.event_time_ms)
        request.requested_at.GetCurrentTime()
        self.producer.produce(self.topics.training_requests, request, key=tracker.model_name)
        self.policy.requested(tracker.model_name, tracker.version)
        self._requested_by[request.request_id] = key
        TRAINING_REQUESTS.labels(tracker.model_name).inc()
        log.warning("drift confirmed; training requested", extra={
            "model": key[0], "version": key[1], "request_id": request.request_id, "reason": request.reason})
        self._publish_report(tracker, training_request_id=request.request_id)

    def _housekeeping(self) -> None:
        self.join.expire()
        for kind, count in self.join.counts().items():
            JOIN_STATE.labels(kind).set(count)
        now = self._clock()
        for key, tracker in self._trackers.items():
            samples, rows, at = self._last_report.get(key, (0, 0, float("-inf")))
            news = tracker.samples != samples or tracker.predicted_rows != rows
            if news and (tracker.samples - samples >= self.report_every_samples
                         or now - at >= self.report_every_s):
                self._publish_report(tracker)

    def _publish_report(self, tracker: VersionTracker, training_request_id: str = "") -> None:
        report = tracker.report(time.time_ns(), training_request_id)
        self.producer.produce(self.topics.monitor_stats, report, key=tracker.model_name)
        self._last_report[(tracker.model_name, tracker.version)] = (
            tracker.samples, tracker.predicted_rows, self._clock())
        version = str(tracker.version)
        ROLLING_ACCURACY.labels(tracker.model_name, version).set(report.rolling_accuracy)
        for feature in report.features:
            FEATURE_PSI.labels(tracker.model_name, version, feature.feature).set(feature.psi)

    # -- state ---------------------------------------------------------------------------

    def _tracker(self, model_name: str, version: int) -> VersionTracker:
        key = (model_name, version)
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = VersionTracker(model_name, version, self.tracker_config)
            log.info("tracking a new model version", extra={"model": model_name, "version": version})
            self._forget_old_versions(model_name)
        if tracker.reference is None:
            reference = self.references.get(model_name, version)  # cached; retried only now and then
            if reference is not None:
                tracker.set_reference(reference)
        return tracker

    def _forget_old_versions(self, model_name: str) -> None:
        versions = sorted(v for m, v in self._trackers if m == model_name)
        for version in versions[:-self.max_versions_per_model]:
            tracker = self._trackers.pop((model_name, version))
            self._last_report.pop((model_name, version), None)
            self._blocked_by.pop((model_name, version), None)
            _remove_gauges(tracker)

    def reports(self, model_name: str = "", version: int = 0) -> list[monitor_pb2.DriftReport]:
        """Current reports, for `model_name` (all when empty) and `version` (all when 0)."""
        now_ns = time.time_ns()
        with self._lock:
            return [tracker.report(now_ns) for (name, v), tracker in sorted(self._trackers.items())
                    if (not model_name or name == model_name) and (not version or v == version)]


def _remove_gauges(tracker: VersionTracker) -> None:
    """A forgotten version's gauges would otherwise be scraped forever at their last value."""
    labels = (tracker.model_name, str(tracker.version))
    series = [(ROLLING_ACCURACY, labels)] + [
        (FEATURE_PSI, (*labels, drift.feature)) for drift in tracker.feature_drift()]
    for gauge, values in series:
        try:
            gauge.remove(*values)
        except KeyError:  # never reported
            pass


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).isoformat(timespec="seconds")
