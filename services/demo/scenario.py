"""The closed loop, run and watched from the outside.

A replayer writes a labelled stream with a known concept drift to
`driftline.events.raw` at a steady rate; a client keeps calling
`Predictor.Predict` with the feature vectors the feature service publishes; a
watcher follows the registry, trainer and monitor topics. Together they tell
the story a person wants: the platform asked for its first model, model v1
promoted, drift injected at event N, drift detected at event M, v2 trained on
dataset D, the gate's decision, `production` → v2, serving answered with v2,
and the time it took. The demo asks for nothing itself: the first model is
the monitor's own request (a stream with enough labelled rows and no
production version), observed on `driftline.training.requests`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from driftline.v1 import (
    features_pb2, monitor_pb2, registry_pb2, serving_pb2, serving_pb2_grpc, training_pb2,
)
from services.common import channels
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.settings import CommonSettings, Topics

from .stream import DriftingStream, index_of


@dataclass
class Options:
    rate: float = 400.0             # events per second
    drift_at: int = 8000            # stream position of the abrupt drift
    seed: int = 42
    bootstrap_rows: int = 2000      # labelled rows the platform's first model waits for (the monitor's first_model_min_rows)
    retrain_rows: int = 600         # post-drift rows the first retrain asks for (refreshes train on more)
    recovery_rows: int = 1000       # rows scored by the new model before the run ends
    timeout_s: float = 300.0
    model_name: str = "driftline-model"
    stream: str = "default"
    predict_batch: int = 16         # rows per Predict call at most


@dataclass
class Milestone:
    t: float          # seconds since the run started
    what: str
    event: int | None = None


@dataclass
class Scored:
    version: int
    correct: int = 0
    total: int = 0


@dataclass
class Result:
    milestones: list[Milestone] = field(default_factory=list)
    drift_injected_s: float | None = None
    detected_s: float | None = None
    detected_event: int | None = None
    recovered_s: float | None = None
    first_model_requested_s: float | None = None  # when the platform's own first-model request appeared
    first_version: int | None = None
    new_version: int | None = None
    new_dataset: str | None = None
    gate: dict | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)
    predict_calls: int = 0
    predict_failures: int = 0
    failures: list[str] = field(default_factory=list)
    events_sent: int = 0

    @property
    def time_to_recover_s(self) -> float | None:
        if self.recovered_s is None or self.drift_injected_s is None:
            return None
        return self.recovered_s - self.drift_injected_s

    @property
    def detection_delay_s(self) -> float | None:
        if self.detected_s is None or self.drift_injected_s is None:
            return None
        return self.detected_s - self.drift_injected_s

    def summary(self, drift_at: int) -> dict:
        return {
            "time_to_recover_s": _round(self.time_to_recover_s),
            "first_model_requested_s": _round(self.first_model_requested_s),
            "detection_delay_s": _round(self.detection_delay_s),
            "detection_delay_events": None if self.detected_event is None else self.detected_event - drift_at,
            "drift_at_event": drift_at,
            "detected_at_event": self.detected_event,
            "first_version": self.first_version,
            "new_version": self.new_version,
            "new_dataset": self.new_dataset,
            "accuracy_before_drift": _round(self.accuracy.get("before")),
            "accuracy_after_drift": _round(self.accuracy.get("after_drift")),
            "accuracy_after_recovery": _round(self.accuracy.get("recovered")),
            "predict_calls": self.predict_calls,
            "predict_failures": self.predict_failures,
            "events_sent": self.events_sent,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class LoopObserver:
    """Runs the replayer, the Predict client and the watcher; collects the Result."""

    def __init__(self, options: Options, kafka_bootstrap: str, topics: Topics, serving_address: str,
                 say: Callable[[str], None] = print, kafka_config: dict[str, str] | None = None,
                 channel_settings: CommonSettings | None = None) -> None:
        self.options = options
        self.bootstrap = kafka_bootstrap
        # The security keys of the demo's Kafka clients (the operator's principal on a secure stack).
        self.kafka_config = kafka_config or {}
        # Its gRPC channel's (on a secure loop the operator's CA, certificate and token).
        self.channel_settings = channel_settings
        self.topics = topics
        self.serving_address = serving_address
        self.say = say
        self.result = Result()
        self.started = time.monotonic()
        self.stream = DriftingStream(options.drift_at, options.seed)
        self.done = threading.Event()
        self.v1_serving = threading.Event()
        self.v1_waiting_logged = False
        self.sent = 0
        self.last_scored_event = -1
        self.scores: dict[tuple[str, int], Scored] = {}
        self.versions_promoted: list[int] = []
        # The monitor may retrain on a change of its own before the injected one (the entity features
        # settle as their history grows), and that version may reach serving after the drift: only a
        # version trained for a request published after the drift is its recovery.
        self.post_drift_requests: set[str] = set()
        self.first_model_requests: list[str] = []  # the platform's requests while nothing was in production
        self.recovery_versions: set[int] = set()
        self.drift_window_ms: int | None = None  # where the retrain after the drift starts its window
        # Per recovery version, its dataset and the gate's decision that promoted it: the summary
        # names those of the version that recovered (the first to answer), not of later refreshes.
        self.datasets: dict[int, str] = {}
        self.gates: dict[int, dict] = {}
        self.drift_injected_ms: int | None = None  # wall clock, as the monitor stamps its requests
        self.lock = threading.Lock()

    # -- timeline -------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.started

    def mark(self, what: str, event: int | None = None) -> Milestone:
        milestone = Milestone(round(self.now(), 2), what, event)
        self.result.milestones.append(milestone)
        at = f" (event {event:,})" if event is not None else ""
        self.say(f"[t+{milestone.t:6.1f}s] {what}{at}")
        return milestone

    # -- the three actors -------------------------------------------------------
    def replay(self) -> None:
        """Writes the stream at a steady rate; holds the drift until v1 serves, so
        v1 is always trained on the concept before the drift."""
        producer = Producer(self.bootstrap, config=self.kafka_config)
        interval = 1.0 / self.options.rate
        next_at = time.monotonic()
        for event in self.stream.take():
            if self.done.is_set():
                break
            index = index_of(event["event_id"])
            if index == self.options.drift_at:
                if not self.v1_serving.is_set():
                    self.say(f"           holding the drift at event {index:,} until v1 serves…")
                    while not self.v1_serving.wait(0.5) and not self.done.is_set():
                        pass
                    next_at = time.monotonic()
                self.result.drift_injected_s = self.now()
                self.drift_injected_ms = int(time.time() * 1000)
                self.mark(f"drift injected: concept {self.stream.concept_of(index - 1)} → "
                          f"{self.stream.concept_of(index)}", index)
            event["event_time"] = int(time.time() * 1000)
            producer.produce_raw(self.topics.events_raw, json.dumps(event).encode(), event["entity_id"],
                                 [("content-type", b"application/json")])
            self.sent = index + 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        self.result.events_sent = self.sent

    def predict(self) -> None:
        """Scores every labelled feature vector through Predict, in small batches."""
        consumer = Consumer(self.bootstrap, f"{self.topics.prefix}driftline-demo-client-{uuid.uuid4().hex[:8]}",
                            [self.topics.features], read_committed=True, config=self.kafka_config)
        channel = channels.channel(self.serving_address, self.channel_settings)
        stub = serving_pb2_grpc.PredictorStub(channel)
        try:
            while not self.done.is_set():
                records = consumer.poll_batch(features_pb2.FeatureRecord, self.options.predict_batch, 0.1)
                records = [r.value for r in records if r.value.HasField("label")]
                if records:
                    self.predict_until_answered(stub, records)
        finally:
            consumer.close()
            channel.close()

    def predict_until_answered(self, stub: serving_pb2_grpc.PredictorStub, records) -> None:
        """Calls Predict once; before serving's first answer, "no model yet" is expected and
        the same rows are retried, so the rows that arrive before v1 are scored by v1."""
        request = serving_pb2.PredictRequest(model_name=self.options.model_name, rows=[
            serving_pb2.Row(values=r.values, event_id=r.event_id) for r in records])
        while not self.done.is_set():
            try:
                reply = stub.Predict(request, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and self.result.first_version is None:
                    if not self.v1_waiting_logged:
                        self.say("           serving has no model yet; waiting for v1…")
                        self.v1_waiting_logged = True
                    self.done.wait(0.2)
                    continue
                self.result.predict_failures += 1
                self.result.failures.append(f"{exc.code().name}: {exc.details()}")
                return
            self.result.predict_calls += 1
            self.score(records, reply)
            return

    def score(self, records, reply: serving_pb2.PredictResponse) -> None:
        version = reply.model_version
        if self.result.first_version is None:
            self.result.first_version = version
            self.mark(f"serving answered with v{version}")
            self.v1_serving.set()
        old_model = version not in self.recovery_versions
        for record, prediction in zip(records, reply.predictions):
            index = index_of(record.event_id)
            self.last_scored_event = max(self.last_scored_event, index)
            if old_model:
                phase = "before" if index < self.options.drift_at else "after_drift"
            else:
                phase = "recovered"
            scored = self.scores.setdefault((phase, version), Scored(version))
            scored.total += 1
            scored.correct += int(prediction.label == record.label)
        if not old_model and self.result.recovered_s is None:
            self.result.recovered_s = self.now()
            self.result.new_version = version
            self.mark(f"serving answered with v{version} — recovered")
        recovered = sum(s.total for (p, _), s in self.scores.items() if p == "recovered")
        if recovered >= self.options.recovery_rows:
            self.done.set()

    def watch(self) -> None:
        """Follows what the services announce on their topics."""
        types = {self.topics.registry_events: registry_pb2.RegistryEvent,
                 self.topics.training_requests: training_pb2.TrainingRequest,
                 self.topics.training_results: training_pb2.TrainingResult,
                 self.topics.monitor_stats: monitor_pb2.DriftReport}
        consumer = Consumer(self.bootstrap, f"{self.topics.prefix}driftline-demo-watch-{uuid.uuid4().hex[:8]}",
                            list(types), read_committed=True, config=self.kafka_config)
        try:
            while not self.done.is_set():
                for msg in consumer.poll_messages(100, 0.2):
                    value = types[msg.topic()]()
                    value.ParseFromString(msg.value())
                    self.on_announcement(value)
        finally:
            consumer.close()

    def after_drift(self, request: training_pb2.TrainingRequest) -> bool:
        """Whether the monitor asked after the drift was injected (not merely announced after it)."""
        if self.drift_injected_ms is None:
            return False
        return not request.HasField("requested_at") or request.requested_at.ToMilliseconds() >= self.drift_injected_ms

    def on_announcement(self, message) -> None:
        R = registry_pb2.RegistryEvent
        if isinstance(message, training_pb2.TrainingRequest):
            if not self.versions_promoted and not self.after_drift(message):
                self.on_first_model_request(message)
                return
            if not self.after_drift(message):
                return
            if message.trigger == training_pb2.TrainingRequest.REFRESH:
                # A refresh trains the new concept only if it refreshes the retrain the drift asked for.
                if self.drift_window_ms is not None and message.window_start.ToMilliseconds() >= self.drift_window_ms:
                    self.post_drift_requests.add(message.request_id)
                return
            self.post_drift_requests.add(message.request_id)
            if self.drift_window_ms is None:
                self.drift_window_ms = message.window_start.ToMilliseconds()
            if self.result.detected_s is None:
                self.result.detected_s = self.now()
                self.result.detected_event = self.last_scored_event
                self.mark(f"drift detected by the monitor: {message.reason}", self.last_scored_event)
                self.say(f"           training requested from {message.window_start.ToJsonString()} "
                         f"(request {message.request_id[:8]})")
        elif isinstance(message, training_pb2.TrainingResult):
            if message.status == training_pb2.TrainingResult.SUCCEEDED:
                metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(message.metrics.items()))
                self.mark(f"trainer: v{message.version} trained on dataset {message.dataset_id[:12]} ({metrics})")
                if message.request_id in self.post_drift_requests:
                    self.datasets[message.version] = message.dataset_id
                    if message.promoted and message.reused:  # an earlier version, registered for another request
                        self.recovery_versions.add(message.version)
            else:
                self.mark(f"trainer: request {message.request_id[:8]} failed: {message.error}")
        elif isinstance(message, R):
            if (message.kind in (R.VERSION_REGISTERED, R.ALIAS_MOVED)
                    and message.model_version.params.get("request_id") in self.post_drift_requests):
                self.recovery_versions.add(message.model_version.version)  # before serving can have it
            if message.kind == R.GATE_DECIDED:
                d = message.decision
                verdict = "promote" if d.promoted else "refuse"
                baseline = f"v{d.baseline_version} {d.baseline_accuracy:.3f}" if d.baseline_version else "none"
                self.mark(f"gate: {verdict} v{d.candidate_version} (accuracy {d.candidate_accuracy:.3f} vs "
                          f"production {baseline} on {d.eval_rows} recent rows) — {d.reason}")
                if d.candidate_version in self.recovery_versions and d.promoted:
                    self.gates[d.candidate_version] = {"candidate_version": d.candidate_version,
                                        "candidate_accuracy": round(d.candidate_accuracy, 4),
                                        "baseline_version": d.baseline_version,
                                        "baseline_accuracy": round(d.baseline_accuracy, 4),
                                        "eval_rows": d.eval_rows, "reason": d.reason}
            elif message.kind == R.ALIAS_MOVED and message.alias == "production":
                self.versions_promoted.append(message.model_version.version)
                previous = f"v{message.previous_version}" if message.previous_version else "nothing"
                self.mark(f"registry: production {previous} → v{message.model_version.version}")

    def on_first_model_request(self, message: training_pb2.TrainingRequest) -> None:
        """A request published while no version is in production: the platform asking for its first
        model (the monitor, once the stream has its labelled rows); a second one is its retry."""
        if message.request_id in self.first_model_requests:
            return
        self.first_model_requests.append(message.request_id)
        if self.result.first_model_requested_s is None:
            self.result.first_model_requested_s = self.now()
            self.mark(f"the platform asked for its first model ({message.min_rows:,} labelled rows)")
        else:
            self.mark(f"the platform asked again for its first model: {message.reason}")
        self.say(f"           {message.model_name} on stream {message.stream!r} (request {message.request_id[:20]})")

    # -- the run ---------------------------------------------------------------
    def run(self) -> Result:
        ensure_topics(self.bootstrap, self.topics.all(), client_config=self.kafka_config)
        actors = [threading.Thread(target=self._guard(f), name=f.__name__, daemon=True)
                  for f in (self.watch, self.predict, self.replay)]
        for actor in actors:
            actor.start()
        try:
            self._wait_until_recovered()
        finally:
            # Also on Ctrl-C: close the actors' Kafka clients before the stack goes away.
            self.done.set()
            for actor in actors:
                actor.join(15)
        self.result.events_sent = self.sent
        self.result.new_dataset = self.datasets.get(self.result.new_version)
        self.result.gate = self.gates.get(self.result.new_version)
        for phase in ("before", "after_drift", "recovered"):
            buckets = [s for (p, _), s in self.scores.items() if p == phase]
            total = sum(s.total for s in buckets)
            self.result.accuracy[phase] = sum(s.correct for s in buckets) / total if total else None
        return self.result

    def _wait_until_recovered(self) -> None:
        last_progress = 0.0
        while not self.done.wait(1.0):
            if self.now() > self.options.timeout_s:
                self.result.failures.append(f"the loop did not recover within {self.options.timeout_s:.0f}s")
                if self.result.first_model_requested_s is None:
                    self.result.failures.append("the platform never asked for its first model (monitor log: "
                                                "first_model_min_rows, the registry's production lookups)")
                return
            if self.now() - last_progress >= 10:
                last_progress = self.now()
                production = f"v{self.versions_promoted[-1]}" if self.versions_promoted else "none"
                self.say(f"           … {self.sent:,} events sent, {self.result.predict_calls:,} Predict calls, "
                         f"production: {production}")

    def _guard(self, actor: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                actor()
            except Exception as exc:  # an actor's crash ends the run with a reason, not a hang
                self.result.failures.append(f"{actor.__name__}: {exc!r}")
                self.done.set()
        return guarded
