"""The monitor's stream processing: records in, DriftReports and TrainingRequests out.

One consumer reads features (labels carried by feature records), labels (delayed
labels on `driftline.labels`), predictions, training results and the registry's
events; `DriftMonitor.handle` is its ConsumerWorker handler and everything it
publishes is flushed before the batch is committed. State lives in memory and is
bounded: a restarted monitor starts its statistics afresh from its committed offsets.
Reports and markers (alerts, requests, promotions) also go to live watchers through
a `Hub`, and into a bounded history the dashboard draws.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import numpy as np
from confluent_kafka import Message
from google.protobuf.message import DecodeError
from driftline.v1 import events_pb2, features_pb2, monitor_pb2, registry_pb2, serving_pb2, training_pb2
from services.common.kafka import DecodeFailure, Producer, decode
from services.common.settings import Topics

from .hub import Hub
from .joiner import Joined, Label, LabelJoin, prediction_columns
from .metrics import (
    ACTIVE_ALERTS, ALERTS, CHANGES, CONCEPT_DRIFT, ERROR_CUSUM, ERROR_CUSUM_THRESHOLD, ERROR_RATE,
    FEATURE_DRIFTED, FEATURE_JS, FEATURE_KS, FEATURE_PSI, FEATURE_THRESHOLD, JOIN_STATE, POLICY_BLOCKED,
    PREDICTED_ROWS, PREDICTION_DRIFT, PROMOTIONS, RECORDS, REFERENCE_ERROR_RATE, ROLLING_ACCURACY,
    SAMPLES, TRAINING_REQUESTS, UNDECODABLE,
)
from .policy import DriftPolicy
from .references import RegistryReferences
from .detectors import ChangePoint
from .tracker import CONCEPT, DATA, PREDICTION, Position, TrackerConfig, VersionTracker

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)
SIGNALS = (CONCEPT, DATA, PREDICTION)


class DriftMonitor:
    def __init__(self, *, topics: Topics, stream: str, producer: Producer,
                 references: RegistryReferences, policy: DriftPolicy, join: LabelJoin,
                 tracker_config: TrackerConfig, report_every_samples: int, report_every_s: float,
                 training_min_rows: int, max_versions_per_model: int = 5,
                 clock: Callable[[], float] = time.monotonic, hub: Hub | None = None,
                 history: int = 2000) -> None:
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
        self._lock = threading.Lock()  # the worker writes, gRPC and the dashboard read
        self.hub = hub or Hub()
        # What the dashboard draws: compact reports and markers, bounded.
        self.history: deque[dict] = deque(maxlen=history)
        self.markers: deque[dict] = deque(maxlen=history)
        self._production: dict[str, int] = {}  # model → version the `production` alias points at
        self._touched: set[Key] = set()
        self._samples: dict[str, object] = {}  # SAMPLES per model, looked up once
        self._produced = False  # anything published since the last flush
        self._handlers = {
            topics.features: (features_pb2.FeatureRecord, self._on_features, "features"),
            topics.labels: (events_pb2.Label, self._on_label, "labels"),
            topics.predictions: (serving_pb2.PredictionLog, self._on_predictions, "predictions"),
            topics.training_results: (training_pb2.TrainingResult, self._on_training_result, "training_results"),
            topics.registry_events: (registry_pb2.RegistryEvent, self._on_registry_event, "registry_events"),
        }

    @property
    def inputs(self) -> list[str]:
        return list(self._handlers)

    # -- input ---------------------------------------------------------------------------

    def handle(self, messages: Sequence[Message]) -> None:
        handlers = self._handlers
        counts: dict[str, int] = {}
        with self._lock:
            # Runs of records from one topic, in order: the feature records (one per event, the
            # bulk of the input) are decoded and their labels joined a run at a time.
            for topic, run in itertools.groupby(messages, key=_topic):
                run = list(run)
                counts[topic] = counts.get(topic, 0) + len(run)
                if topic == self.topics.features:
                    self._on_feature_run(run)
                    continue
                message_type, on_record, _ = handlers[topic]
                for msg in run:
                    try:
                        record = decode(msg.value(), message_type)
                    except DecodeFailure as exc:
                        self._undecodable(msg, exc)
                        continue
                    on_record(record, Position(topic, msg.partition(), msg.offset()))
            for topic, n in counts.items():
                RECORDS.labels(handlers[topic][2]).inc(n)
            self._after_batch()
            self._housekeeping()
        if self._produced:  # a batch that published nothing has nothing to wait for
            self._produced = False
            self.producer.flush()

    def _produce(self, topic: str, message, key: str) -> None:
        """Everything the monitor publishes goes through here, so `handle` knows whether to flush."""
        self.producer.produce(topic, message, key=key)
        self._produced = True

    def _on_feature_run(self, run: list[Message]) -> None:
        values = [m.value() or b"" for m in run]
        found = labelled_records(values)
        if found is None:  # a record outside the usual layout, or a damaged one: record by record
            self._on_feature_records(run, values)
            return
        rows, ids, labels = found
        if not ids:
            return  # nothing labelled
        # (label, the record's bytes): its event time is read only if it ever joins
        pending = list(zip(labels, values if len(ids) == len(values) else [values[i] for i in rows]))
        if self.join.add_labels(ids, pending) is None:
            self._join_one_by_one(run, rows, ids, pending)

    def _on_feature_records(self, run: list[Message], values: list[bytes]) -> None:
        # One record at a time, each dropped as soon as its fields are read: the allocator reuses
        # its memory (a list of a batch's parsed records costs several times the parsing).
        parse = features_pb2.FeatureRecord.FromString
        ids: list[str] = []
        pending: list[tuple[int, bytes]] = []  # (label, the record's bytes: its event time is read only on a join)
        where: list[int] = []
        add_id, add_pending, add_where = ids.append, pending.append, where.append
        for i, value in enumerate(values):
            try:
                record = parse(value)
            except DecodeError as exc:
                self._undecodable(run[i], exc)
                continue
            if record.HasField("label"):  # unlabelled events have nothing to join
                add_id(record.event_id)
                add_pending((record.label, value))
                add_where(i)
        if not ids or self.join.add_labels(ids, pending) is not None:
            return  # nothing labelled, or they all wait for their predictions
        self._join_one_by_one(run, where, ids, pending)

    def _join_one_by_one(self, run: list[Message], where: Sequence[int], ids: list[str],
                         pending: list[tuple[int, bytes]]) -> None:
        for i, event_id, (label, raw) in zip(where, ids, pending):
            joined = self.join.add_label(event_id, Label(label, event_time_ms(raw)))
            if joined:
                m = run[i]
                self._on_outcome(joined, Position(m.topic(), m.partition(), m.offset()))

    def _undecodable(self, msg: Message, exc: Exception) -> None:
        # A poison record must not stall the monitor; it is counted and skipped.
        UNDECODABLE.labels(msg.topic()).inc()
        log.warning("skipping an undecodable record", extra={
            "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "error": str(exc)})

    def tick(self) -> None:
        """Called when no records came: time-based reports and join expiry still happen."""
        with self._lock:
            self._housekeeping()
        self.producer.flush()

    def _on_features(self, record: features_pb2.FeatureRecord, at: Position) -> None:
        if not record.HasField("label"):
            return  # nothing to join: an unlabelled event
        joined = self.join.add_label(record.event_id, Label(record.label, record.event_time.ToMilliseconds()))
        if joined:
            self._on_outcome(joined, at)

    def _on_label(self, record: events_pb2.Label, at: Position) -> None:
        """A delayed label: joins a waiting prediction, waits for one, or is counted as too late."""
        event_ms = record.event_time.ToMilliseconds() if record.HasField("event_time") else 0
        joined = self.join.add_label(record.event_id, Label(record.label, event_ms))
        if joined:
            self._on_outcome(joined, at)

    def _on_predictions(self, prediction_log: serving_pb2.PredictionLog, at: Position) -> None:
        name, version = prediction_log.model_name, prediction_log.model_version
        tracker = self._tracker(name, version)
        # Either form of the log (columnar buffers, or a message per row), read as arrays.
        try:
            columns = prediction_columns(prediction_log)
        except ValueError as exc:
            where = at or Position()
            UNDECODABLE.labels(where.topic).inc()
            log.warning("skipping a prediction log whose columns disagree", extra={
                "topic": where.topic, "partition": where.partition, "offset": where.offset, "error": str(exc)})
            return
        n = len(columns.labels)
        if not n:
            return
        PREDICTED_ROWS.labels(name).inc(n)
        served_ms = prediction_log.served_at.ToMilliseconds() if prediction_log.HasField("served_at") else 0
        if tracker.window is not None:  # only then are the values needed, as one (n, F) array
            features = columns.features.astype(np.float64)
            scores = (columns.scores[:, 1].astype(np.float64) if columns.scores.shape[1] >= 2
                      else np.full(n, np.nan))
        else:
            features, scores = np.empty((n, 0)), np.empty(0)
        tracker.add_predictions(features, scores, served_ms, at)
        self._touched.add((name, version))
        if prediction_log.variant == "shadow" or not columns.event_ids:
            # A mirrored answer no caller saw; it repeats the served row's event id, so joining
            # it to the label would take the label from the answer that was actually served.
            return
        for joined in self.join.add_predictions(columns.event_ids, columns.labels.tolist(), name, version,
                                                served_ms):
            self._on_outcome(joined, at)

    def _on_registry_event(self, event: registry_pb2.RegistryEvent, at: Position) -> None:
        """Promotions and registrations: markers on the dashboard's timeline."""
        version = event.model_version.version
        when = event.occurred_at.ToMilliseconds() if event.HasField("occurred_at") else int(time.time() * 1000)
        if event.kind == registry_pb2.RegistryEvent.ALIAS_MOVED:
            PROMOTIONS.labels(event.model_name, event.alias).inc()
            if event.alias == "production":
                self._production[event.model_name] = version
                for (name, v), tracker in self._trackers.items():
                    if name == event.model_name:
                        tracker.production = v == version
            text = f"{event.alias} → v{version}" + (f" (was v{event.previous_version})" if event.previous_version else "")
            self._mark("promotion", event.model_name, version, text, when)
        elif event.kind == registry_pb2.RegistryEvent.VERSION_REGISTERED:
            self._mark("registered", event.model_name, version, f"v{version} registered", when)
        elif event.kind == registry_pb2.RegistryEvent.GATE_DECIDED:
            d = event.decision
            self._mark("gate", event.model_name, version,
                       f"gate: {'promoted' if d.promoted else 'kept'} v{d.candidate_version} "
                       f"({d.candidate_accuracy:.3f} vs {d.baseline_accuracy:.3f}) {d.reason}",
                       when)

    def _on_training_result(self, result: training_pb2.TrainingResult, at: Position) -> None:
        # A promoted retrain ends the model's cooldown (its new version starts its own count); one
        # that failed or was not promoted leaves the drifted version serving: it may ask again soon.
        key = self._requested_by.get(result.request_id)
        if key and result.status == training_pb2.TrainingResult.SUCCEEDED and result.promoted:
            self.policy.landed(key[0])
        elif key:
            self.policy.rearm(*key)
            log.info("re-armed after an unsuccessful retrain", extra={
                "model": key[0], "version": key[1], "request_id": result.request_id,
                "status": training_pb2.TrainingResult.Status.Name(result.status), "error": result.error})

    def _on_outcome(self, joined: Joined, at: Position) -> None:
        tracker = self._tracker(joined.prediction.model_name, joined.prediction.model_version)
        change = tracker.add_outcome(joined, at)
        self._touched.add((tracker.model_name, tracker.version))
        counter = self._samples.get(tracker.model_name)
        if counter is None:  # `.labels()` per labelled row cost more than the rest of this method
            counter = self._samples[tracker.model_name] = SAMPLES.labels(tracker.model_name)
        counter.inc()
        if change is not None:
            direction = "worse" if change.worse else "better"
            CHANGES.labels(tracker.model_name, direction).inc()
            log.info("error rate changed", extra={
                "model": tracker.model_name, "version": tracker.version, "direction": direction,
                "error_before": round(change.error_before, 4), "error_after": round(change.error_after, 4),
                "change_sample": change.change_sample, "change_time_ms": change.event_time_ms})

    # -- decisions and output ------------------------------------------------------------

    def _after_batch(self) -> None:
        """Vectorised statistics over the batch, then alerts, then the policy."""
        touched, self._touched = self._touched, set()
        for key in touched:
            tracker = self._trackers.get(key)
            if tracker is None:
                continue
            tracker.flush()
            for alert in tracker.new_alerts:
                ALERTS.labels(tracker.model_name, alert.signal, alert.statistic).inc()
                log.warning("alert", extra={"model": key[0], "version": key[1], "signal": alert.signal,
                                            "statistic": alert.statistic, "features": alert.features,
                                            "value": round(alert.value, 4), "threshold": round(alert.threshold, 4),
                                            "change_sample": alert.change_sample,
                                            "detected_sample": alert.detected_sample,
                                            "detected_offset": alert.detected_at.offset})
                self._mark("alert", key[0], key[1], alert.description, int(alert.detected_wall * 1000),
                           signal=alert.signal, statistic=alert.statistic, features=alert.features)
            tracker.new_alerts.clear()
            self._maybe_request_training(tracker)

    def _maybe_request_training(self, tracker: VersionTracker) -> None:
        key = (tracker.model_name, tracker.version)
        candidates = [a for a in tracker.active_alerts() if self.policy.allows(a.signal, a.statistic)]
        if not candidates:
            return
        alert = min(candidates, key=lambda a: (a.signal != CONCEPT, a.change_time_ms or 1 << 62))
        count = tracker.samples if alert.signal == CONCEPT else tracker.predicted_rows
        decision = self.policy.decide(tracker.model_name, tracker.version, count)
        if not decision.retrain:
            if self._blocked_by.get(key) != decision.rule:  # once per rule, not once per sample
                POLICY_BLOCKED.labels(key[0], decision.rule).inc()
                log.info("drift detected; not retraining yet", extra={
                    "model": key[0], "version": key[1], "why": decision.why})
            self._blocked_by[key] = decision.rule
            return
        self._blocked_by.pop(key, None)
        if alert.signal == CONCEPT and alert.change_time_ms and (
                tracker.drift is None or tracker.drift.sample != alert.change_sample):
            # The training window starts where the alert that asked located the change.
            tracker.drift = ChangePoint(alert.change_sample, alert.change_time_ms,
                                        tracker.cusum.p0 if tracker.cusum else 0.0,
                                        tracker.error_rate_since(alert.change_sample))
        drift = tracker.drift
        if alert.signal == CONCEPT and drift is not None:
            start_ms, where = drift.event_time_ms, (
                f"the error rate went from {drift.error_before:.3f} to {drift.error_after:.3f} starting at "
                f"labelled sample {drift.sample}")
        else:
            start_ms, where = alert.change_time_ms, f"the change began at row {alert.change_sample}"
        features = f" in {', '.join(alert.features)}" if alert.features else ""
        request = training_pb2.TrainingRequest(
            request_id=str(uuid.uuid4()), model_name=tracker.model_name, stream=self.stream,
            min_rows=self.training_min_rows,
            reason=(f"{alert.signal.replace('_', ' ')}{features} [alert {alert.alert_id}] in {tracker.model_name} v{tracker.version}: "
                    f"{alert.statistic.upper()} {alert.value:.4g} > threshold {alert.threshold:.4g}; {where} "
                    f"(event time {_iso(start_ms)}, offset {alert.change_at.offset} of {alert.change_at.topic or '-'}"
                    f"/{alert.change_at.partition}; detected at offset {alert.detected_at.offset}); rolling accuracy "
                    f"{tracker.accuracy.value:.3f} over {tracker.accuracy.count}"))
        # (params are the trainer's hyperparameters: the alert is named in the reason, not there)
        if start_ms:
            request.window_start.FromMilliseconds(start_ms)
        request.requested_at.GetCurrentTime()
        self._produce(self.topics.training_requests, request, key=tracker.model_name)
        self.policy.requested(tracker.model_name, tracker.version)
        self._requested_by[request.request_id] = key
        alert.confirmed, alert.training_request_id = True, request.request_id
        alert.requested_refires = alert.refires
        TRAINING_REQUESTS.labels(tracker.model_name).inc()
        log.warning("drift confirmed; training requested", extra={
            "model": key[0], "version": key[1], "request_id": request.request_id, "reason": request.reason})
        self._mark("training_request", key[0], key[1], request.reason, int(time.time() * 1000),
                   request_id=request.request_id, signal=alert.signal)
        self._publish_report(tracker, training_request_id=request.request_id)

    def _mark(self, kind: str, model: str, version: int, text: str, at_ms: int, **extra) -> None:
        marker = {"kind": kind, "model": model, "version": version, "text": text, "at_ms": at_ms, **extra}
        self.markers.append(marker)
        self.hub.publish(("marker", marker))

    def _housekeeping(self) -> None:
        self.join.expire()
        for kind, count in self.join.counts().items():
            JOIN_STATE.labels(kind).set(count)
        JOIN_STATE.labels("unmatched").set(self.join.unmatched)
        now = self._clock()
        for key, tracker in self._trackers.items():
            samples, rows, at = self._last_report.get(key, (0, 0, float("-inf")))
            news = tracker.samples != samples or tracker.predicted_rows != rows
            if news and (tracker.samples - samples >= self.report_every_samples
                         or now - at >= self.report_every_s):
                self._publish_report(tracker)

    def _join_counts(self) -> monitor_pb2.JoinCounts:
        c = self.join.counts()
        return monitor_pb2.JoinCounts(
            joined=c["joined"], pending_labels=c["pending_labels"], pending_predictions=c["pending_predictions"],
            late_labels=c["late_labels"], too_late_labels=c["too_late_labels"],
            unmatched_labels=c["expired_labels"] + c["evicted_labels"],
            unmatched_predictions=c["expired_predictions"] + c["evicted_predictions"])

    def _report(self, tracker: VersionTracker, now_ns: int, training_request_id: str = "") -> monitor_pb2.DriftReport:
        report = tracker.report(now_ns, training_request_id)
        report.join.CopyFrom(self._join_counts())
        return report

    def _publish_report(self, tracker: VersionTracker, training_request_id: str = "") -> None:
        report = self._report(tracker, time.time_ns(), training_request_id)
        self._produce(self.topics.monitor_stats, report, key=tracker.model_name)
        self._last_report[(tracker.model_name, tracker.version)] = (
            tracker.samples, tracker.predicted_rows, self._clock())
        self._export(tracker, report)
        self.history.append(compact(report))
        self.hub.publish(("report", report))

    def _export(self, tracker: VersionTracker, report: monitor_pb2.DriftReport) -> None:
        name, version = tracker.model_name, str(tracker.version)
        ROLLING_ACCURACY.labels(name, version).set(report.rolling_accuracy)
        CONCEPT_DRIFT.labels(name, version).set(int(report.concept_drift))
        PREDICTION_DRIFT.labels(name, version).set(int(report.prediction_drift))
        ERROR_RATE.labels(name, version).set(tracker.errors.error_rate)
        if tracker.cusum is not None:
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

    # -- state ---------------------------------------------------------------------------

    def _tracker(self, model_name: str, version: int) -> VersionTracker:
        key = (model_name, version)
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = VersionTracker(model_name, version, self.tracker_config)
            tracker.production = self._production.get(model_name) == version
            log.info("tracking a new model version", extra={"model": model_name, "version": version})
            self._mark("version", model_name, version, f"v{version} first seen", int(time.time() * 1000))
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
            return [self._report(tracker, now_ns) for (name, v), tracker in sorted(self._trackers.items())
                    if (not model_name or name == model_name) and (not version or v == version)]

    def snapshot(self) -> dict:
        """What the dashboard loads first: the history so far and the current reports."""
        with self._lock:
            return {"history": list(self.history), "markers": list(self.markers),
                    "current": [compact(self._report(t, time.time_ns())) for _, t in sorted(self._trackers.items())]}


_topic = operator.methodcaller("topic")


def event_time_ms(raw: bytes) -> int:
    """The event time of a feature record's bytes (the join keeps bytes, not parsed records);
    0 (unknown) when a field `labelled_records` does not parse turns out to be damaged."""
    try:
        ts = features_pb2.FeatureRecord.FromString(raw).event_time
    except DecodeError:
        return 0
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def labelled_records(values: Sequence[bytes]) -> tuple[list[int], list[str], list[int]] | None:
    """The labelled feature records of a batch — (their positions, event ids, labels) — read in
    one numpy pass over the batch's bytes instead of a parsed message per record.

    The pass reads FeatureRecord's wire format as serializers write it: fields in field-number
    order, each at most once, lengths of at most two bytes, a label of 0–127. It checks every
    record's framing (each field inside the record, a whole number of doubles, nothing after the
    label) and the event ids' UTF-8; the fields the monitor does not read (entity, feature set,
    event time, values) are not parsed. None when any record is outside that layout (another
    field order, unknown fields, a negative label, damage): the caller then parses the batch
    record by record, which also finds the undecodable ones.

    >>> from driftline.v1 import features_pb2
    >>> records = [features_pb2.FeatureRecord(event_id="e1", values=[0.5, 1.0], label=1),
    ...            features_pb2.FeatureRecord(event_id="e2", entity_id="u", values=[2.0]),
    ...            features_pb2.FeatureRecord(event_id="é3", feature_set="s", label=0)]
    >>> labelled_records([r.SerializeToString() for r in records])
    ([0, 2], ['e1', 'é3'], [1, 0])
    >>> labelled_records([features_pb2.FeatureRecord(event_id="e4", label=-1).SerializeToString()]) is None
    True
    >>> labelled_records([b"\\x0a\\x05e1"]) is None  # an event id longer than its record
    True
    """
    n = len(values)
    lengths = np.fromiter(map(len, values), np.int64, n)
    buf = np.frombuffer(b"".join(values) + b"\0\0\0", np.uint8)  # padded: reads run 2 bytes ahead
    end = np.cumsum(lengths)
    pos = end - lengths
    ok = np.ones(n, bool)
    has_id, id_start, id_length, pos = _length_delimited(buf, pos, end, ok, 0x0A)  # 1 event_id
    for tag in (0x12, 0x1A, 0x22):  # 2 entity_id, 3 feature_set, 4 event_time
        pos = _length_delimited(buf, pos, end, ok, tag)[3]
    has_values, _, values_length, pos = _length_delimited(buf, pos, end, ok, 0x2A)  # 5 values, packed
    ok &= ~has_values | (values_length % 8 == 0)
    has_label = (pos < end) & (buf[pos] == 0x30)  # 6 label, a one-byte varint
    label = buf[pos + 1]
    ok &= (np.where(has_label, pos + 2, pos) == end) & ~(has_label & (label >= 0x80))
    if not ok.all():
        return None
    rows = np.flatnonzero(has_label)
    m = len(rows)
    if not m:
        return [], [], []
    # The event ids, gathered into one buffer with a separator after each, decoded and split at once.
    id_length = np.where(has_id, id_length, 0)[rows]
    total = int(id_length.sum())
    chars = buf[np.arange(total) + np.repeat(id_start[rows] - (np.cumsum(id_length) - id_length), id_length)]
    if (chars == 0x1F).any():
        return None
    joined = np.full(total + m, 0x1F, np.uint8)
    joined[np.arange(total) + np.repeat(np.arange(m), id_length)] = chars
    try:
        ids = joined[:-1].tobytes().decode("utf-8").split("\x1f")
    except UnicodeDecodeError:
        return None
    return rows.tolist(), ids, label[rows].tolist()


def _length_delimited(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray, tag: int):
    """Reads, where present, the length-delimited field `tag` at `pos`; marks `ok` false where its
    length takes more than two bytes or overruns the record. (present, data start, length, next pos)."""
    present = (pos < end) & (buf[pos] == tag)
    b1, b2 = buf[pos + 1].astype(np.int64), buf[pos + 2].astype(np.int64)
    two = b1 >= 0x80
    length = np.where(two, (b1 & 0x7F) | (b2 << 7), b1)
    after = pos + 2 + two + length
    ok &= ~present | ((after <= end) & ~(two & (b2 >= 0x80)))
    return present, pos + 2 + two, length, np.where(present, np.minimum(after, end), pos)  # stays in its record




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


def _remove_gauges(tracker: VersionTracker) -> None:
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


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).isoformat(timespec="seconds")
