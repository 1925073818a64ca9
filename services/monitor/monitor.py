"""The monitor's stream processing: records in, DriftReports and TrainingRequests out.

One consumer reads features (labels carried by feature records), labels (delayed
labels on `driftline.labels`), predictions, training results and the registry's
events; `DriftMonitor.handle` is its ConsumerWorker handler and everything it
publishes is flushed before the batch is committed. State lives in memory and is
bounded; it is saved with the input positions it reflects (per partition, the next offset
to apply) and restored after a restart (checkpoint.py). A record at or before its
partition's position is not applied again, so a batch handed over twice (a retry, a replay
after a restore) counts once. A record that does not decode goes to the monitor's
dead-letter topic.
Reports and markers (alerts, requests, promotions) also go to live watchers through
a `Hub`, and into a bounded history the dashboard draws.

With a stream catalogue, every stream of it is served: a drift request names its model's own
stream, and a stream whose model has no production version asks for its first model
(`first_model.FirstModels`: the labelled feature records are counted per stream). A stream whose
model has a production version with a training reference feeds that version's data drift with
its own events (the feature records' values, `_StreamFeed`), whether or not anyone calls Predict;
its window opens with the stream's latest events, kept per stream (`_Recent`) until then.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message
from google.protobuf.message import DecodeError
from driftline.v1 import events_pb2, features_pb2, monitor_pb2, registry_pb2, serving_pb2, training_pb2
from services.common.deadletter import DECODE, DeadLetterQueue
from services.common.kafka import DecodeFailure, DeliveryError, Producer, decode
from services.common.settings import Topics
from services.common.streams import StreamCatalog

from .codec import FeatureScan, event_time_ms, prediction_columns
from .first_model import FirstModels
from .hub import Hub
from .joiner import Joined, Label, LabelJoin
from .metrics import CHANGES, DEAD_LETTERS, DUPLICATES, PREDICTED_ROWS, PROMOTIONS, RECORDS, SAMPLES, UNDECODABLE
from .policy import DriftPolicy
from .references import RegistryReferences
from .reporting import Reports, compact
from .refresh import Refreshes
from .retraining import RetrainingTrigger
from .tracker import Position, TrackerConfig, VersionTracker

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)

FEEDS_CHECK_S = 1.0  # how often the streams' feeds are looked at again (the catalogue, a missing reference)
FLUSH_TIMEOUT_S = 10.0  # a broker that does not take the output by then is tried again after the next batch

# What a snapshot holds: the DriftMonitor's attributes that are state (checkpoint.py pickles them;
# the objects they reach that are the process's own, `environment()`, are named, not copied).
STATE = ("_trackers", "_production", "_feeds", "_refused", "_recent", "_positions", "join", "retraining",
         "first_models", "reporting")


@dataclass
class _StreamFeed:
    """A stream whose events feed its model's production version's data drift."""
    stream: str
    tracker: VersionTracker
    width: int      # values per feature vector: the stream's (= the version's) feature names
    name: bytes     # the stream's name as FeatureRecord.feature_set carries it
    default: bool   # the default stream: a record that names no feature set is one of its events
    skipped: int = 0  # records of another width, not compared


class _Recent:
    """A stream's latest feature vectors, kept so that a version fed from now on does not start from
    an empty window (a one-shot replay sends all its events before the first model is served): a
    ring of the last `size` vectors (float64, the stream's feature order) and, per batch they came
    in, (its first row, the event time and position of its first record), as the tracker locates
    alerts. Rows are numbered from 1 as they were added."""

    def __init__(self, stream: str, names: list[str], size: int, default: bool) -> None:
        self.stream, self.names, self.width = stream, names, len(names)
        self.name, self.default = stream.encode(), default
        self.ring = np.empty((size, len(names)), np.float64)
        self.rows = 0
        self.at: deque[tuple[int, int, Position]] = deque()

    def add(self, matrix: np.ndarray, event_ms: int, at: Position) -> None:
        """Rows (m, width) of one batch, oldest first (only the last `size` of them are kept)."""
        size = len(self.ring)
        kept = matrix[-size:]
        first = self.rows + len(matrix) - len(kept)  # 0-based number of the first row kept
        self.ring[np.arange(first, first + len(kept)) % size] = kept
        self.at.append((first + 1, event_ms, at))
        self.rows = first + len(kept)
        oldest = self.rows - size + 1
        while len(self.at) > 1 and self.at[1][0] <= oldest:  # a batch wholly overwritten
            self.at.popleft()

    def latest(self) -> tuple[np.ndarray, list[tuple[int, int, Position]]]:
        """The rows kept, oldest first, and their batches (first rows numbered from 1 in them)."""
        n = min(self.rows, len(self.ring))
        start = self.rows - n  # 0-based number of the oldest row kept
        values = self.ring[np.arange(start, self.rows) % len(self.ring)]
        return values, [(max(first - start, 1), ms, at) for first, ms, at in self.at]


class DriftMonitor:
    def __init__(self, *, topics: Topics, stream: str, producer: Producer,
                 references: RegistryReferences, policy: DriftPolicy, join: LabelJoin,
                 tracker_config: TrackerConfig, report_every_samples: int, report_every_s: float,
                 training_min_rows: int, max_versions_per_model: int = 5,
                 clock: Callable[[], float] = time.monotonic, hub: Hub | None = None,
                 history: int = 2000, streams: StreamCatalog | None = None,
                 first_model_min_rows: int = 0, dead_letters: DeadLetterQueue | None = None,
                 refreshes: Refreshes | None = None, reuse_candidates: int = 0) -> None:
        self.topics = topics
        self.producer = producer
        self.dead_letters = dead_letters  # None: an undecodable record is counted and skipped
        self.references = references
        self.join = join
        self.tracker_config = tracker_config
        self.max_versions_per_model = max_versions_per_model
        # Its parts: when alerts become training requests, when a stream asks for its first model,
        # and what is reported where.
        self.streams = streams
        self.retraining = RetrainingTrigger(policy, stream, training_min_rows, stream_of=self._stream_of,
                                            refreshes=refreshes, reuse_candidates=reuse_candidates)
        self.first_models = (FirstModels(streams, first_model_min_rows)
                             if streams is not None and first_model_min_rows > 0 else None)
        self.reporting = Reports(join, every_samples=report_every_samples, every_s=report_every_s, hub=hub,
                           history=history, clock=clock)
        self.hub = self.reporting.hub
        self._trackers: dict[Key, VersionTracker] = {}
        self._lock = threading.Lock()  # the worker writes, gRPC and the dashboard read
        self._production: dict[str, int] = {}  # model → version the `production` alias points at
        self._touched: set[Key] = set()
        self._samples: dict[str, object] = {}  # SAMPLES per model, looked up once
        self._produced = False  # anything published since the last flush that succeeded
        self.undelivered = False  # the last flush failed: what it held may not be on the broker yet
        self._requests_published = 0
        self.requests_delivered = 0  # training requests the broker has taken (a snapshot follows each)
        # Per input partition, the next offset to apply: what is before it is in the state.
        self._positions: dict[tuple[str, int], int] = {}
        self._clock = clock
        # Per stream, the production version its events feed (`_stream_feeds`), looked at again
        # when a production version changes and every FEEDS_CHECK_S.
        self._feeds: dict[str, _StreamFeed] = {}
        self._feeds_checked = float("-inf")
        self._refused: set[tuple[str, int, str]] = set()  # (model, version, stream) whose features differ: logged
        # Per stream of the catalogue, its latest `psi_window` feature vectors (`_Recent`): they open
        # the window of a version its events start to feed. Decoded for that alone only while no
        # version is fed; a fed stream's are the rows its version got.
        self._recent: dict[str, _Recent] = {}
        # Per input topic, the kind its records are counted under. Feature records are read a
        # run at a time (`_on_feature_run`); every other topic's a record at a time.
        self._kinds = {topics.features: "features", topics.labels: "labels", topics.predictions: "predictions",
                       topics.training_results: "training_results", topics.registry_events: "registry_events"}
        self._handlers = {
            topics.labels: (events_pb2.Label, self._on_label),
            topics.predictions: (serving_pb2.PredictionLog, self._on_predictions),
            topics.training_results: (training_pb2.TrainingResult, self._on_training_result),
            topics.registry_events: (registry_pb2.RegistryEvent, self._on_registry_event),
        }

    @property
    def inputs(self) -> list[str]:
        return list(self._kinds)

    # -- input ---------------------------------------------------------------------------

    def handle(self, messages: Sequence[Message]) -> None:
        handlers = self._handlers
        counts: dict[str, int] = {}
        positions = self._positions
        with self._lock:
            # Records the state already holds (a batch handed over again after a failure, a replay
            # from a snapshot's positions) are not applied twice.
            fresh = [m for m in messages if m.offset() >= positions.get((m.topic(), m.partition()), -1)]
            if len(fresh) < len(messages):
                DUPLICATES.labels("replayed").inc(len(messages) - len(fresh))
            # Runs of records from one topic, in order: the feature records (one per event, the
            # bulk of the input) are decoded and their labels joined a run at a time.
            for topic, run in itertools.groupby(fresh, key=_topic):
                run = list(run)
                counts[topic] = counts.get(topic, 0) + len(run)
                if topic == self.topics.features:
                    self._on_feature_run(run)
                    for msg in run:
                        positions[(topic, msg.partition())] = msg.offset() + 1
                    continue
                message_type, on_record = handlers[topic]
                for msg in run:
                    try:
                        on_record(decode(msg.value(), message_type), Position(topic, msg.partition(), msg.offset()))
                    except DecodeFailure as exc:
                        self._undecodable(msg, exc)
                    positions[(topic, msg.partition())] = msg.offset() + 1
            for topic, n in counts.items():
                RECORDS.labels(self._kinds[topic]).inc(n)
            self._stream_feeds()  # a production version learnt in this batch is fed (and prefilled) now
            self._after_batch()
            self._housekeeping()
        self._flush()

    def _produce(self, topic: str, message, key: str) -> None:
        """Everything the monitor publishes goes through here, so `handle` knows whether to flush."""
        self.producer.produce(topic, message, key=key)
        self._produced = True

    def _flush(self) -> None:
        """Waits for what was published. A broker that does not take it does not fail the batch (its
        records are applied; failing it would only hand them over again): the producer keeps
        retrying, the next batch or idle poll flushes again, and no snapshot is taken meanwhile."""
        if not self._produced:  # a batch that published nothing has nothing to wait for
            return
        try:
            self.producer.flush(FLUSH_TIMEOUT_S)
        except DeliveryError as exc:
            if not self.undelivered:
                log.warning("the broker has not taken the monitor's output yet; flushing again after the next "
                            "batch", extra={"error": str(exc)})
            self.undelivered = True
            return
        self._produced = self.undelivered = False
        self.requests_delivered = self._requests_published

    def _on_feature_run(self, run: list[Message]) -> None:
        values = [m.value() or b"" for m in run]
        # Streams are read only while one still waits for its first model.
        counting = self.first_models is not None and self.first_models.counting
        feeds = self._stream_feeds()
        scan = FeatureScan.of(values)
        found = scan.labelled(feature_sets=counting) if scan is not None else None
        if found is None:  # a record outside the usual layout, or a damaged one: record by record
            self._on_feature_records(run, values, feeds)
            return
        for feed in feeds.values():  # the events' values, only for a stream whose production version compares them
            rows = np.flatnonzero(scan.in_set(feed.name, or_empty=feed.default))
            if len(rows):
                matrix, taken = scan.vectors(rows, feed.width)
                self._stream_rows(feed, matrix, taken.tolist(), len(rows), run, values)
        for recent in self._recent.values():  # a stream no version is fed with: its latest vectors only
            if recent.stream not in feeds:
                rows = np.flatnonzero(scan.in_set(recent.name, or_empty=recent.default))[-len(recent.ring):]
                if len(rows):
                    matrix, taken = scan.vectors(rows, recent.width)
                    self._keep_recent(recent, matrix, taken.tolist(), run, values)
        rows, ids, labels = found[:3]
        if not ids:
            return  # nothing labelled
        if counting:
            self._count_labelled(found[3], [values[i] for i in rows])
        # (label, the record's bytes): its event time is read only if it ever joins
        pending = list(zip(labels, values if len(ids) == len(values) else [values[i] for i in rows]))
        if self.join.add_labels(ids, pending) is None:
            self._join_one_by_one(run, rows, ids, pending)

    def _on_feature_records(self, run: list[Message], values: list[bytes], feeds: dict[str, _StreamFeed]) -> None:
        # One record at a time, each dropped as soon as its fields are read: the allocator reuses
        # its memory (a list of a batch's parsed records costs several times the parsing).
        parse = features_pb2.FeatureRecord.FromString
        ids: list[str] = []
        pending: list[tuple[int, bytes]] = []  # (label, the record's bytes: its event time is read only on a join)
        where: list[int] = []
        streams: list[str] = []
        add_id, add_pending, add_where = ids.append, pending.append, where.append
        default = self.streams.default if self.streams is not None else ""
        # Per stream, (position, vector) of its events: every one for a fed stream, the latest
        # `psi_window` for one only kept (`_Recent`).
        fed: dict[str, deque] = {stream: deque() for stream in feeds}
        fed.update((stream, deque(maxlen=len(recent.ring))) for stream, recent in self._recent.items()
                   if stream not in feeds)
        for i, value in enumerate(values):
            try:
                record = parse(value)
            except DecodeError as exc:
                self._undecodable(run[i], DecodeFailure(f"not a {features_pb2.FeatureRecord.DESCRIPTOR.full_name}: {exc}"))
                continue
            if fed and (into := fed.get(record.feature_set or default)) is not None:
                into.append((i, record.values))
            if record.HasField("label"):  # unlabelled events have nothing to join
                add_id(record.event_id)
                add_pending((record.label, value))
                add_where(i)
                streams.append(record.feature_set)
        for stream, events in fed.items():
            feed, recent = feeds.get(stream), self._recent.get(stream)
            width = feed.width if feed is not None else recent.width
            kept = [(i, v) for i, v in events if len(v) == width]
            matrix = np.array([v for _, v in kept], np.float64).reshape(len(kept), width)
            if feed is not None:
                self._stream_rows(feed, matrix, [i for i, _ in kept], len(events), run, values)
            else:
                self._keep_recent(recent, matrix, [i for i, _ in kept], run, values)
        if ids and self.first_models is not None and self.first_models.counting:
            self._count_labelled(streams, [raw for _, raw in pending])
        if not ids or self.join.add_labels(ids, pending) is not None:
            return  # nothing labelled, or they all wait for their predictions
        self._join_one_by_one(run, where, ids, pending)

    def _stream_rows(self, feed: _StreamFeed, matrix: np.ndarray, taken: list[int], seen: int,
                     run: list[Message], values: list[bytes]) -> None:
        """A batch's events of `feed`'s stream, `matrix` (m, width) the vectors of those at positions
        `taken` (`seen` in all; the others hold another number of values, and are not compared)."""
        if len(taken) < seen:
            if not feed.skipped:
                log.warning("feature records with another number of values than the stream's features; not "
                            "compared", extra={"stream": feed.stream, "model": feed.tracker.model_name,
                                               "features": feed.width})
            feed.skipped += seen - len(taken)
        if not taken:
            return
        event_ms, at = _located(run, values, taken[0])
        feed.tracker.add_stream_rows(matrix, event_ms, at)
        self._touched.add((feed.tracker.model_name, feed.tracker.version))
        recent = self._recent.get(feed.stream)
        if recent is not None and recent.width == feed.width:  # the stream's latest, for a next version
            size = len(recent.ring)
            if len(taken) > size:
                event_ms, at = _located(run, values, taken[-size])
            recent.add(matrix[-size:], event_ms, at)

    def _keep_recent(self, recent: _Recent, matrix: np.ndarray, taken: list[int], run: list[Message],
                     values: list[bytes]) -> None:
        """The latest events of a stream no version is fed with (`matrix` (m, width), the vectors
        of the records at positions `taken`, at most `psi_window` of them) into its ring."""
        if taken:
            recent.add(matrix, *_located(run, values, taken[0]))

    def _stream_feeds(self) -> dict[str, _StreamFeed]:
        """Per stream, the production version its events feed: a stream of the catalogue whose model
        has a production version whose reference has feature bins, under the same feature names in
        the same order (a version whose differ is not compared, logged once). A version no
        longer fed (it left production) goes back to its served rows."""
        if self.streams is None:
            return self._feeds
        now = self._clock()
        if now - self._feeds_checked < FEEDS_CHECK_S:
            return self._feeds
        self._feeds_checked = now
        self.streams.refresh()
        feeds: dict[str, _StreamFeed] = {}
        recents: dict[str, _Recent] = {}
        for schema in self.streams:
            names = list(schema.feature_names)
            recent = self._recent.get(schema.stream)
            if names and (recent is None or recent.names != names):
                recent = _Recent(schema.stream, names, self.tracker_config.psi_window,
                                 schema.stream == self.streams.default)
            if names:
                recents[schema.stream] = recent
            version = self._production.get(schema.model_name)
            if not version:
                continue
            tracker = self._tracker(schema.model_name, version)  # asks for its reference while it has none
            if not tracker.compares_stream:
                continue
            if list(tracker.reference.feature_names) != names:
                refused = (schema.model_name, version, schema.stream)
                if refused not in self._refused:
                    self._refused.add(refused)
                    log.warning("the stream's features are not the version's: its data drift is not compared "
                                "with the stream's events", extra={
                                    "stream": schema.stream, "model": schema.model_name, "version": version,
                                    "stream_features": names, "version_features": list(tracker.reference.feature_names)})
                continue
            known = self._feeds.get(schema.stream)
            if known is not None and known.tracker is tracker:
                feeds[schema.stream] = known
                continue
            feeds[schema.stream] = _StreamFeed(schema.stream, tracker, len(names), schema.stream.encode(),
                                               schema.stream == self.streams.default)
            if recent is not None and recent.rows and tracker.stream_window is None:
                # The stream's latest events (before production, or those the previous version got)
                # open the window: a one-shot replay's version is compared at once.
                if tracker.prefill_stream(*recent.latest()):
                    self._touched.add((tracker.model_name, tracker.version))
        still = {id(feed.tracker) for feed in feeds.values()}
        for feed in self._feeds.values():
            if id(feed.tracker) not in still:
                feed.tracker.stop_stream()
        self._feeds, self._recent = feeds, recents
        return feeds

    def _production_is(self, model_name: str, version: int) -> None:
        """`model_name`'s production alias points at `version`: the trackers' flags and the feeds follow."""
        self._production[model_name] = version
        for (name, v), tracker in self._trackers.items():
            if name == model_name:
                tracker.production = v == version
        self._feeds_checked = float("-inf")  # the stream's events feed the new one from the next batch

    def _count_labelled(self, streams: list[str], raws: list[bytes]) -> None:
        """Labelled feature records per stream, towards the first models (`raws[i]` is the record of
        `streams[i]`: a stream's first record gives the training window's start)."""
        for stream, n in Counter(streams).items():
            first = streams.index(stream)
            self.first_models.add(stream, n, lambda first=first: event_time_ms(raws[first]))

    def _join_one_by_one(self, run: list[Message], where: Sequence[int], ids: list[str],
                         pending: list[tuple[int, bytes]]) -> None:
        for i, event_id, (label, raw) in zip(where, ids, pending):
            joined = self.join.add_label(event_id, Label(label, event_time_ms(raw)))
            if joined:
                m = run[i]
                self._on_outcome(joined, Position(m.topic(), m.partition(), m.offset()))

    def _undecodable(self, msg: Message, exc: Exception) -> None:
        # A poison record must not stall the monitor: counted, dead-lettered, and the partition moves on.
        UNDECODABLE.labels(msg.topic()).inc()
        if self.dead_letters is None:
            log.warning("skipping an undecodable record", extra={
                "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "error": str(exc)})
            return
        self.dead_letters.send(msg, str(exc), stage=DECODE)
        DEAD_LETTERS.labels(msg.topic(), DECODE).inc()

    def tick(self) -> None:
        """Called when no records came: time-based reports and join expiry still happen."""
        with self._lock:
            self._stream_feeds()  # production learnt from a lookup, or a reference that came late
            self._after_batch()
            self._housekeeping()
        self._flush()

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
        except ValueError as exc:  # not a PredictionLog in all but name: a poison record
            raise DecodeFailure(f"a PredictionLog whose columns disagree: {exc}") from exc
        n = len(columns.labels)
        if not n:
            return
        if prediction_log.request_id and not self.join.first_log(
                (prediction_log.request_id, name, version, prediction_log.variant)):
            DUPLICATES.labels("prediction_log").inc()
            return
        PREDICTED_ROWS.labels(name).inc(n)
        served_ms = prediction_log.served_at.ToMilliseconds() if prediction_log.HasField("served_at") else 0
        # Only a version that compares rows needs their values, as one (n, F) array.
        features, scores = columns.values() if tracker.compares_rows else (np.empty((n, 0)), np.empty(0))
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
            if event.alias == "production" and version:
                self._production_is(event.model_name, version)
                if self.first_models is not None:
                    self.first_models.production(event.model_name, version)
            text = f"{event.alias} → v{version}" + (f" (was v{event.previous_version})" if event.previous_version else "")
            self.reporting.mark("promotion", event.model_name, version, text, when)
        elif event.kind == registry_pb2.RegistryEvent.VERSION_REGISTERED:
            self.reporting.mark("registered", event.model_name, version, f"v{version} registered", when)
        elif event.kind == registry_pb2.RegistryEvent.GATE_DECIDED:
            d = event.decision
            self.reporting.mark("gate", event.model_name, version,
                       f"gate: {'promoted' if d.promoted else 'kept'} v{d.candidate_version} "
                       f"({d.candidate_accuracy:.3f} vs {d.baseline_accuracy:.3f}) {d.reason}",
                       when)

    def _on_training_result(self, result: training_pb2.TrainingResult, at: Position) -> None:
        self.retraining.on_result(result)  # also a first model's: its refreshes follow from it
        if self.first_models is not None:
            self.first_models.on_result(result)

    def _on_outcome(self, joined: Joined, at: Position) -> None:
        tracker = self._tracker(joined.prediction.model_name, joined.prediction.model_version)
        change = tracker.add_outcome(joined, at)
        self._touched.add((tracker.model_name, tracker.version))
        counter = self._samples.get(tracker.model_name)
        if counter is None:  # `.labels()` per labelled row cost more than the rest of this method
            counter = self._samples[tracker.model_name] = SAMPLES.labels(tracker.model_name)
        counter.inc()
        self.retraining.refreshes.count(tracker.model_name, joined.label.event_time_ms or joined.prediction.served_at_ms)
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
            for alert in tracker.take_new_alerts():
                self.reporting.alerted(tracker, alert)
            asked = self.retraining.consider(tracker)
            if asked is not None:
                alert, request = asked
                self._request_training(request, tracker.version, signal=alert.signal)
                self._publish_report(tracker, training_request_id=request.request_id)
        for request in self.retraining.refreshes.due():
            self._request_training(request, self._production.get(request.model_name, 0), signal="refresh")

    def _housekeeping(self) -> None:
        self.join.expire()
        self.reporting.export_join()
        for tracker in self.reporting.due(self._trackers.values()):
            self._publish_report(tracker)
        if self.first_models is not None:
            self.first_models.refresh()
            for request in self.first_models.due():
                self._request_training(request, 0, signal="first_model", stream=request.stream)
                self.retraining.refreshes.follow(request, counted=request.min_rows)

    def _request_training(self, request: training_pb2.TrainingRequest, version: int, **extra) -> None:
        """A training request out, and on the timeline (`version`: the one that asked; 0 for a first model)."""
        self._produce(self.topics.training_requests, request, key=request.model_name)
        self._requests_published += 1
        self.reporting.mark("training_request", request.model_name, version, request.reason, int(time.time() * 1000),
                            request_id=request.request_id, **extra)

    def _publish_report(self, tracker: VersionTracker, training_request_id: str = "") -> None:
        report = self.reporting.report(tracker, time.time_ns(), training_request_id)
        self._produce(self.topics.monitor_stats, report, key=tracker.model_name)
        self.reporting.published(tracker, report)

    # -- state ---------------------------------------------------------------------------

    def _stream_of(self, model_name: str) -> str | None:
        """The catalogue's stream of a model (None: not in the catalogue; the default is used)."""
        schema = self.streams.model_stream(model_name) if self.streams is not None else None
        return schema.stream if schema is not None else None

    def models_without_production(self) -> list[str]:
        """The catalogue's models with no known production version (what `ProductionLookups` asks about)."""
        with self._lock:
            return self.first_models.waiting() if self.first_models is not None else []

    def production_looked_up(self, model_name: str, version: int | None) -> None:
        """The registry's answer: `model_name`'s production version, or None when it points nowhere.
        A registry event that moved the alias since wins over a lookup."""
        with self._lock:
            if version and model_name not in self._production:
                self._production_is(model_name, version)
            if self.first_models is None:
                return
            if version:
                self.first_models.production(model_name, version)
            else:
                self.first_models.absent(model_name)

    def _tracker(self, model_name: str, version: int) -> VersionTracker:
        key = (model_name, version)
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = VersionTracker(model_name, version, self.tracker_config)
            tracker.production = self._production.get(model_name) == version
            log.info("tracking a new model version", extra={"model": model_name, "version": version})
            self.reporting.mark("version", model_name, version, f"v{version} first seen", int(time.time() * 1000))
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
            self._feeds_checked = float("-inf")
            self.retraining.forget((model_name, version))
            self.reporting.forget(tracker)

    def reports(self, model_name: str = "", version: int = 0) -> list[monitor_pb2.DriftReport]:
        """Current reports, for `model_name` (all when empty) and `version` (all when 0)."""
        now_ns = time.time_ns()
        with self._lock:
            return [self.reporting.report(tracker, now_ns) for (name, v), tracker in sorted(self._trackers.items())
                    if (not model_name or name == model_name) and (not version or v == version)]

    # -- snapshots (checkpoint.py) ---------------------------------------------------------

    def environment(self) -> dict[str, object]:
        """The objects the state reaches that are this process's own: a snapshot names them, and
        loading it gives the new process's (the same settings made them)."""
        return {"monitor": self, "producer": self.producer, "references": self.references, "hub": self.hub,
                "lock": self._lock, "streams": self.streams, "clock": self._clock, "dead_letters": self.dead_letters,
                "tracker_config": self.tracker_config}

    def saved_state(self, dump: Callable[[dict, dict, dict], bytes]) -> bytes:
        """`dump(state, environment, positions)` under the lock: the state and the positions it reflects."""
        with self._lock:
            return dump({name: getattr(self, name) for name in STATE}, self.environment(), dict(self._positions))

    def restore_state(self, state: dict, positions: dict[tuple[str, int], int], *, clock: float, wall_s: float) -> None:
        """A snapshot's state in place of this one's (before any record is handled); the clock goes on from
        the snapshot's reading plus the wall time since."""
        with self._lock:
            for name in STATE:
                setattr(self, name, state[name])
            self._positions = dict(positions)
            resume = getattr(self._clock, "resume", None)
            if resume is not None:
                resume(clock, wall_s)
            self._feeds_checked = float("-inf")

    def clock_reading(self) -> float:
        return self._clock()

    def positions(self) -> dict[tuple[str, int], int]:
        """The live positions (the consumer's assignment reads and records them on the worker's thread)."""
        return self._positions

    def snapshot(self) -> dict:
        """What the dashboard loads first: the history so far and the current reports."""
        with self._lock:
            return {"history": list(self.reporting.history), "markers": list(self.reporting.markers),
                    "current": [compact(self.reporting.report(t, time.time_ns())) for _, t in sorted(self._trackers.items())],
                    "streams": self.first_models.status() if self.first_models is not None else []}


_topic = operator.methodcaller("topic")


def _located(run: list[Message], values: list[bytes], i: int) -> tuple[int, Position]:
    """The event time and position of the batch's feature record `i` (where a run of its rows begins)."""
    m = run[i]
    return event_time_ms(values[i]), Position(m.topic(), m.partition(), m.offset())
