"""The monitor: its statistics as pure units, then the service as a real process
(`python -m services.monitor`) on the real broker and object store, fed FeatureRecords
and PredictionLogs with a concept drift in them. The registry is a small real gRPC
server inside the test (GetModelVersion from a dict), so nothing here depends on
services.registry."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftline.v1 import (
    features_pb2, monitor_pb2, monitor_pb2_grpc, registry_pb2_grpc, serving_pb2, training_pb2,
)
from services.common.kafka import Consumer, Producer
from services.common.settings import Topics
from services.monitor import joiner
from services.monitor.detectors import ErrorRateChange, RollingAccuracy
from services.monitor.joiner import Label, LabelJoin, Predicted
from services.monitor.policy import DriftPolicy
from services.monitor.psi import Bins, reference_bins
from services.monitor.signals import window_statistics
from services.monitor.tracker import Position, TrackerConfig, VersionTracker
from services.serving.prediction_log import ServedRequest, to_log
from registry_stand_in import RegistryStandIn, isolated
from support import GrpcThread, ServiceRun, free_port, unique_prefix, wait_for


# == the statistics, as units ================================================================

def _psi(reference: Bins, values) -> float:
    """PSI of `values` against `reference`, binned and computed as the monitor's windows do."""
    counts = np.bincount(reference.indices(values), minlength=len(reference.proportions))
    return float(window_statistics(counts, np.asarray(reference.proportions))[0])


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(1)
    reference = Bins.from_json(reference_bins(rng.uniform(0, 1, 5000)))
    assert sum(reference.proportions) == pytest.approx(1.0)
    assert _psi(reference, rng.uniform(0, 1, 1000)) < 0.05
    assert _psi(reference, rng.uniform(0.5, 1.5, 1000)) > 1.0


def test_psi_bins_hold_values_outside_the_training_range_at_the_ends():
    bins = Bins((0.0, 1.0, 2.0, 3.0), (0.3, 0.4, 0.3))
    assert [bins.index(v) for v in (-5, 0, 0.99, 1, 2.5, 3, 99)] == [0, 0, 0, 1, 2, 2, 2]
    with pytest.raises(ValueError):
        Bins((0.0, 1.0), (0.5, 0.5))


def test_reference_bins_with_repeated_edges_keep_every_value():
    ref = reference_bins([0] * 50 + [1] * 30 + [2] * 20)  # an integer feature: deciles repeat
    assert sum(ref["proportions"]) == pytest.approx(1.0)
    assert _psi(Bins.from_json(ref), [0] * 50 + [1] * 30 + [2] * 20) == pytest.approx(0.0, abs=1e-9)


def test_adwin_stays_quiet_on_a_stationary_error_stream():
    rng = random.Random(3)
    detector = ErrorRateChange()
    assert [c for i in range(5000) if (c := detector.update([rng.random() < 0.15], [i]))] == []


def test_adwin_maps_a_change_back_to_the_event_time_it_started_at():
    rng = random.Random(5)
    detector = ErrorRateChange()
    start = 1_700_000_000_000
    changes = [c for i in range(1500)
               for c in detector.update([rng.random() < (0.1 if i < 800 else 0.6)], [start + 1000 * i])]
    worse = changes[0]
    assert worse.worse and worse.error_after > worse.error_before
    assert abs(worse.event_time_ms - (start + 800_000)) <= 30_000  # within 30 samples
    recovered = [c for i in range(1500, 3000) for c in detector.update([rng.random() < 0.1], [start + 1000 * i])]
    assert recovered and not recovered[0].worse


def test_rolling_accuracy_forgets_what_left_the_window():
    accuracy = RollingAccuracy(window=3)
    for correct in (False, False, False, True, True, True):
        accuracy.add(correct)
    assert (accuracy.value, accuracy.count) == (1.0, 3)


def test_the_join_pairs_either_order_and_counts_what_never_pairs():
    now = [0.0]
    join = LabelJoin(ttl_s=5, max_pending=3, clock=lambda: now[0])
    assert join.add_label("a", Label(1, 10)) is None
    assert join.add_prediction("a", Predicted("m", 1, 0)).correct is False
    assert join.add_prediction("b", Predicted("m", 1, 1)) is None
    assert join.add_prediction("b", Predicted("m", 1, 0)) is None  # a redelivery keeps the first
    assert join.add_label("b", Label(1, 11)).correct is True
    for i in range(5):  # five labels nobody predicted: two are evicted by the bound
        join.add_label(f"x{i}", Label(0, i))
    assert join.counts()["evicted_labels"] == 2 and join.counts()["pending_labels"] == 3
    now[0] = 6.0
    join.expire()
    counts = join.counts()
    assert counts["expired_labels"] == 3 and counts["pending_labels"] == counts["pending_predictions"] == 0
    assert (join.joined, join.unmatched) == (2, 5)


def test_the_policy_asks_once_per_version_until_rearmed():
    now = [100.0]
    rules = DriftPolicy(min_samples=10, cooldown_s=30, clock=lambda: now[0])
    assert rules.decide("m", 1, 9).rule == "min_samples"
    assert rules.decide("m", 1, 10).retrain
    rules.requested("m", 1)
    now[0] = 500.0
    assert rules.decide("m", 1, 999).rule == "once_per_version"
    rules.rearm("m", 1)
    assert rules.decide("m", 1, 999).retrain
    rules.requested("m", 1)
    assert rules.decide("m", 2, 999).rule == "cooldown"  # another version of the same model waits too
    assert rules.decide("other", 1, 999).retrain  # other models do not


def test_a_rearmed_version_asks_again_after_the_retry_pause_not_the_whole_cooldown():
    now = [0.0]
    rules = DriftPolicy(min_samples=1, cooldown_s=600, clock=lambda: now[0], retry_s=15)
    rules.requested("m", 1)
    now[0] = 20.0  # the retrain landed and was not promoted
    rules.rearm("m", 1)
    assert rules.decide("m", 1, 99).rule == "cooldown"
    now[0] = 35.0
    assert rules.decide("m", 1, 99).retrain
    rules.requested("m", 1)
    rules.landed("m")  # promoted: v2 need not wait out v1's cooldown
    assert rules.decide("m", 2, 99).retrain


def test_a_version_tracker_clears_drift_when_errors_recover():
    tracker = VersionTracker("m", 1, TrackerConfig(accuracy_window=100, expected_run_length=20_000,
                                                   calibration_streams=128))
    rng = random.Random(11)

    def feed(n: int, p_wrong: float, offset: int) -> None:
        for i in range(n):
            wrong = rng.random() < p_wrong
            tracker.add_outcome(joiner.Joined(f"e{offset + i}", Predicted("m", 1, int(wrong)),
                                              Label(0, offset + i)))

    feed(600, 0.05, 0)
    assert tracker.drift is None
    feed(600, 0.7, 600)
    assert tracker.drift is not None and tracker.report(0).concept_drift
    feed(1500, 0.05, 1200)
    assert tracker.drift is None and not tracker.report(0).concept_drift


class _FixedReferences:
    def __init__(self, reference) -> None:
        self.reference = reference

    def get(self, model_name: str, version: int):
        return self.reference

    def close(self) -> None:
        pass


def test_columnar_and_row_wise_prediction_logs_feed_the_join_and_windows_alike(kafka_bootstrap):
    from services.monitor.codec import event_time_ms
    from services.monitor.monitor import DriftMonitor
    from services.monitor.references import ModelReference

    rng = np.random.default_rng(5)
    reference = ModelReference(
        feature_names=tuple(FEATURES),
        features={n: Bins.from_json(reference_bins(rng.uniform(0, 1, 2000))) for n in FEATURES},
        scores=Bins.from_json(reference_bins(rng.uniform(0, 1, 2000))), eval_error=0.1, eval_rows=1000,
        reference_rows=2000)
    monitor = DriftMonitor(
        topics=Topics(unique_prefix()), stream=STREAM, producer=Producer(kafka_bootstrap),
        references=_FixedReferences(reference), policy=DriftPolicy(10_000, 600),
        join=LabelJoin(600, 10_000, read_time=event_time_ms),
        tracker_config=TrackerConfig(psi_window=200, window_step=50, error_reference_samples=50,
                                     expected_run_length=20_000, calibration_streams=16),
        report_every_samples=10**9, report_every_s=1e9, training_min_rows=10**9)
    at = Position("predictions", 0, 0)
    stream = {form: samples(form, 120, 120, 0.8, 0.8, False, seed=3) for form in ("columnar", "rows")}
    # The shadow's answer comes first and says the opposite: it must not take the served row's label.
    shadow = [Sample(s.event_id, s.event_time_ms, s.label, 1 - s.predicted, s.features) for s in stream["columnar"]]
    monitor._on_predictions(_prediction_log("columnar", 2, shadow, columnar=True, variant="shadow"), at)
    for form, made in stream.items():
        for start in range(0, len(made), 40):
            monitor._on_predictions(_prediction_log(form, 1, made[start:start + 40], columnar=form == "columnar"), at)
    # A ModelInfer log: no event ids, so rows for the windows and nothing to join.
    monitor._on_predictions(to_log(ServedRequest("i", "columnar", 1, np.zeros((7, 3), np.float32),
                                                 np.full((7, 2), 0.5, np.float32), np.zeros(7), 0)), at)

    trackers = {form: monitor._trackers[(form, 1)] for form in stream}
    assert trackers["columnar"].predicted_rows == 127 and trackers["rows"].predicted_rows == 120
    assert monitor._trackers[("columnar", 2)].predicted_rows == 120  # the shadow's rows count, apart
    windows = {form: tracker.window for form, tracker in trackers.items()}
    assert windows["columnar"].rows == 127 and windows["rows"].rows == 120
    # The same rows land in the same bins of the data- and prediction-drift windows.
    assert np.array_equal(windows["columnar"]._ring[:120], windows["rows"]._ring[:120])
    assert monitor.join.counts()["pending_predictions"] == 240  # the shadow's rows never wait
    for form, made in stream.items():
        for s in made:
            joined = monitor.join.add_label(s.event_id, Label(s.label, s.event_time_ms))
            assert joined is not None, s.event_id
            assert (joined.prediction.model_name, joined.prediction.model_version) == (form, 1)
            assert joined.correct == (s.label == s.predicted)
    assert monitor.join.counts()["pending_labels"] == monitor.join.counts()["pending_predictions"] == 0


# == the service, as a process ================================================================

T0_MS = 1_700_000_000_000  # event time of sample 0; samples are one second apart
SAMPLES, CHANGE = 1200, 600  # "drifting": right 90 % before sample 600, wrong 80 % after
EARLY_SAMPLES, EARLY_CHANGE = 260, 40  # "early": drifts before the policy's 300 samples
MIN_SAMPLES, MIN_ROWS, STREAM = 300, 123, "agrawal-test"
FEATURES = ["f0", "f1", "f2"]


@dataclass
class Sample:
    event_id: str
    event_time_ms: int
    label: int
    predicted: int
    features: list[float]


def samples(model: str, n: int, change: int, right_before: float, right_after: float,
            shift_f0: bool, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    made = []
    for i in range(n):
        label = int(rng.integers(2))
        right = rng.random() < (right_before if i < change else right_after)
        f0 = rng.uniform(0.6, 1.6) if shift_f0 and i >= change else rng.uniform(0, 1)
        made.append(Sample(f"{model}-{i}", T0_MS + 1000 * i, label, label if right else 1 - label,
                           [f0, rng.uniform(0, 1), rng.uniform(0, 1)]))
    return made


def send(producer: Producer, topics: Topics, model: str, version: int, stream: list[Sample]) -> None:
    """Predictions and labels in chunks, alternating which side comes first, as a real loop would."""
    for start in range(0, len(stream), 50):
        chunk = stream[start:start + 50]
        # Both forms of log: columnar (what serving writes) and a message per row (older logs).
        predictions = [_prediction_log(model, version, chunk[i:i + 10], columnar=(i // 10) % 2 == 0)
                       for i in range(0, len(chunk), 10)]
        labels = [_feature_record(s) for s in chunk]
        first, then = (predictions, labels) if (start // 50) % 2 == 0 else (labels, predictions)
        for message in first + then:
            topic = topics.predictions if isinstance(message, serving_pb2.PredictionLog) else topics.features
            producer.produce(topic, message, key=model)
    producer.flush()


def _prediction_log(model: str, version: int, rows: list[Sample], columnar: bool = True,
                    variant: str = "production") -> serving_pb2.PredictionLog:
    if columnar:  # as serving writes it
        scores = np.array([[0.2, 0.8] if s.predicted else [0.8, 0.2] for s in rows])
        return to_log(ServedRequest(
            uuid.uuid4().hex, model, version, [serving_pb2.Row(values=s.features, event_id=s.event_id) for s in rows],
            scores, np.array([s.predicted for s in rows]), time.time_ns(), variant,
            features=np.array([s.features for s in rows], np.float32)))
    log = serving_pb2.PredictionLog(request_id=uuid.uuid4().hex, model_name=model, model_version=version,
                                    variant=variant)
    for s in rows:
        score = 0.8 if s.predicted else 0.2
        log.rows.add(event_id=s.event_id, features=s.features, scores=[1 - score, score], label=s.predicted)
    return log


def _feature_record(s: Sample) -> features_pb2.FeatureRecord:
    record = features_pb2.FeatureRecord(event_id=s.event_id, entity_id="u1", feature_set=STREAM,
                                        values=s.features, label=s.label)
    record.event_time.FromMilliseconds(s.event_time_ms)
    return record


@dataclass
class Scenario:
    requests: list[training_pb2.TrainingRequest]
    stats: list[monitor_pb2.DriftReport]
    drifting: monitor_pb2.DriftReport
    early: monitor_pb2.DriftReport
    unknown: monitor_pb2.GetDriftReportResponse
    log_path: Path
    after_rearm: list[training_pb2.TrainingRequest]


@pytest.fixture(scope="module")
def scenario(kafka_bootstrap, s3, tmp_path_factory) -> Scenario:
    """One monitor process, two models: "drifting" (with a training reference) drifts after
    enough samples; "early" (no metadata.json anywhere) drifts before the policy allows a request."""
    own = isolated(kafka_bootstrap, s3)
    prefix, bucket, topics = own.prefix, own.bucket, own.topics
    training = np.random.default_rng(0).uniform(0, 1, (2000, len(FEATURES)))
    registry_servicer = RegistryStandIn()
    registry_servicer.with_reference(own.store, "drifting", 1, FEATURES, training,
                                     reference_bins([0.2] * 500 + [0.8] * 500, bins=2))
    registry = GrpcThread(registry_servicer, registry_pb2_grpc.add_RegistryServicer_to_server)

    port = free_port()
    log_path = tmp_path_factory.mktemp("monitor") / "monitor.log"
    env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_TOPIC_PREFIX": prefix,
           "DRIFTLINE_BUCKET": bucket, "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
           "DRIFTLINE_GRPC_PORT": str(port), "DRIFTLINE_STREAM": STREAM, "DRIFTLINE_LOG_JSON": "false",
           "DRIFTLINE_POLICY_MIN_SAMPLES": str(MIN_SAMPLES), "DRIFTLINE_POLICY_COOLDOWN_S": "1",
           "DRIFTLINE_MONITOR_RETRAIN_MIN_ROWS": str(MIN_ROWS), "DRIFTLINE_ACCURACY_WINDOW": "200",
           "DRIFTLINE_PSI_WINDOW": "400",
           "DRIFTLINE_REPORT_EVERY_SAMPLES": "200", "DRIFTLINE_REPORT_EVERY_S": "0.5",
           "DRIFTLINE_ERROR_REFERENCE_SAMPLES": str(MIN_SAMPLES), "DRIFTLINE_WINDOW_STEP": "100",
           "DRIFTLINE_DASHBOARD_PORT": "0"}
    run = ServiceRun("monitor", env, log_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = monitor_pb2_grpc.MonitorStub(channel)
    requests_in = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.training_requests])
    stats_in = Consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", [topics.monitor_stats])
    try:
        def report(model: str) -> monitor_pb2.DriftReport | None:
            run.assert_running()
            try:
                found = stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(model_name=model), timeout=2)
            except grpc.RpcError:
                return None
            return found.reports[0] if found.reports else None

        def answers() -> bool:
            run.assert_running()
            try:
                return stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(), timeout=1) is not None
            except grpc.RpcError:
                return False

        wait_for(answers, 30, f"the monitor to answer (log: {log_path})", every=0.2)
        producer = Producer(kafka_bootstrap)
        send(producer, topics, "drifting", 1, samples("drifting", SAMPLES, CHANGE, 0.9, 0.2, True, seed=1))
        send(producer, topics, "early", 1,
             samples("early", EARLY_SAMPLES, EARLY_CHANGE, 0.95, 0.1, False, seed=2))

        drifting = wait_for(lambda: (r := report("drifting")) and r.samples == SAMPLES and r, 60,
                            "every drifting sample to be joined", every=0.2)
        early = wait_for(lambda: (r := report("early")) and r.samples == EARLY_SAMPLES and r, 60,
                         "every early sample to be joined", every=0.2)
        unknown = stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(model_name="never-seen"), timeout=2)

        requests: list[training_pb2.TrainingRequest] = []
        stats: list[monitor_pb2.DriftReport] = []

        def drain_until(deadline: float) -> None:
            while time.monotonic() < deadline:
                requests.extend(r.value for r in requests_in.poll_batch(training_pb2.TrainingRequest, timeout=0.2))
                stats.extend(r.value for r in stats_in.poll_batch(monitor_pb2.DriftReport, timeout=0.2))

        # Everything is processed; wait a little more so a second request would have time to appear.
        wait_for(lambda: drain_until(time.monotonic() + 0.5) or requests, 30, "a training request", every=0)
        drain_until(time.monotonic() + 3)
        first_requests = list(requests)

        # The retrain failed: the policy re-arms the drifted version, whose next samples ask again.
        failed = training_pb2.TrainingResult(request_id=requests[0].request_id, model_name="drifting",
                                             status=training_pb2.TrainingResult.FAILED, error="no GPU today")
        producer.produce(topics.training_results, failed, key="drifting")
        producer.flush()
        wait_for(lambda: "re-armed" in run.log_text(), 60, "the failed result to re-arm the policy", every=0.2)
        more = samples("drifting", SAMPLES + 50, CHANGE, 0.9, 0.2, True, seed=1)[SAMPLES:]
        send(producer, topics, "drifting", 1, more)
        wait_for(lambda: drain_until(time.monotonic() + 0.5) or len(requests) > len(first_requests), 30,
                 "a training request after the re-arm", every=0)
        return Scenario(first_requests, stats, drifting, early, unknown, log_path, requests[len(first_requests):])
    finally:
        requests_in.close()
        stats_in.close()
        channel.close()
        exit_code = run.stop(timeout=20)
        registry.stop()
        assert exit_code == 0, f"monitor did not exit cleanly (log: {log_path})"


def test_concept_drift_asks_for_training_once_starting_at_the_change(scenario):
    assert len(scenario.requests) == 1, scenario.requests
    request = scenario.requests[0]
    assert (request.model_name, request.stream, request.min_rows) == ("drifting", STREAM, MIN_ROWS)
    assert uuid.UUID(request.request_id)
    # The alert is named: signal, statistic and calibrated threshold, the change's offsets.
    assert "concept drift" in request.reason and "CUSUM" in request.reason and "> threshold" in request.reason
    assert "offset" in request.reason and "labelled sample" in request.reason
    change_ms = T0_MS + 1000 * CHANGE
    # ADWIN places the change within a few of its 32-sample checks of the truth.
    assert abs(request.window_start.ToMilliseconds() - change_ms) <= 100_000, \
        (request.window_start.ToMilliseconds() - change_ms) / 1000
    assert request.requested_at.seconds > 0 and not request.HasField("window_end")


def test_the_report_that_asked_carries_the_change_and_enough_samples(scenario):
    request = scenario.requests[0]
    asked = [r for r in scenario.stats if r.training_request_id == request.request_id]
    assert len(asked) == 1
    report = asked[0]
    assert report.model_name == "drifting" and report.model_version == 1 and report.concept_drift
    assert report.samples >= MIN_SAMPLES
    assert report.change_time == request.window_start and report.change_sample > 0
    # Periodic reports were published too, for both models.
    assert {r.model_name for r in scenario.stats} == {"drifting", "early"}


def test_no_request_before_the_policys_minimum_samples(scenario):
    early = scenario.early
    assert early.concept_drift and early.samples < MIN_SAMPLES
    assert all(r.model_name != "early" for r in scenario.requests)


def test_psi_is_high_for_the_shifted_feature_only(scenario):
    psi_of = {f.feature: f for f in scenario.drifting.features}
    assert psi_of["f0"].psi > 0.5 and psi_of["f0"].drifted
    for name in ("f1", "f2"):
        assert psi_of[name].psi < 0.1 and not psi_of[name].drifted
    assert "_score" in psi_of  # the positive-class score is compared like a feature
    # A version without metadata.json is tolerated: monitored, without PSI.
    assert list(scenario.early.features) == []


def test_get_drift_report_over_grpc(scenario):
    drifting = scenario.drifting
    assert (drifting.model_name, drifting.model_version, drifting.samples) == ("drifting", 1, SAMPLES)
    assert drifting.rolling_accuracy < 0.4  # the window holds only post-change samples
    assert drifting.concept_drift and drifting.computed_at.seconds > 0
    assert list(scenario.unknown.reports) == []


def test_a_failed_retrain_rearms_the_version_to_ask_again(scenario):
    assert len(scenario.after_rearm) == 1
    again, first = scenario.after_rearm[0], scenario.requests[0]
    assert again.request_id != first.request_id
    # The same change, still unanswered (ADWIN may refine where it puts it).
    assert abs(again.window_start.ToMilliseconds() - first.window_start.ToMilliseconds()) <= 100_000
