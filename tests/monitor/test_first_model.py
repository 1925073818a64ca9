"""The platform starts itself: the first-model rule (`services/monitor/first_model.py`) as a unit,
then inside `DriftMonitor.handle` on feature records, and several streams each with its own model:
a drift in one asks for training of that one only, on its own stream."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from driftline.v1 import features_pb2, registry_pb2, serving_pb2, training_pb2
from services.common.settings import Topics
from services.common.streams import StreamCatalog
from services.monitor.codec import event_time_ms
from services.monitor.first_model import REQUEST_PREFIX, FirstModels
from services.monitor.joiner import LabelJoin
from services.monitor.monitor import DriftMonitor
from services.monitor.policy import DriftPolicy
from services.monitor.tracker import TrackerConfig
from monitor_fakes import Message, RecordingProducer

T0_MS = 1_700_000_000_000
MIN_ROWS = 100
Result = training_pb2.TrainingResult


def _catalog(folder: Path, streams: dict[str, str], default: str = "") -> StreamCatalog:
    """A streams folder with one schema file per stream (stream → its model)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stream, model in streams.items():
        (folder / f"{stream}.json").write_text(json.dumps(
            {"stream": stream, "model": model, "fields": [{"name": "x", "type": "number"}]}))
    return StreamCatalog(folder, default=default or next(iter(streams)))


@pytest.fixture
def two_streams(tmp_path) -> FirstModels:
    first = FirstModels(_catalog(tmp_path / "streams", {"sea": "sea-model", "sky": "sky-model"}), MIN_ROWS)
    first.absent("sea-model")
    first.absent("sky-model")
    return first


def _at(ms: int):
    return lambda: ms


# == the rule ===================================================================================

def test_below_the_threshold_nothing_at_the_threshold_one_request(two_streams):
    first = two_streams
    first.add("sea", MIN_ROWS - 1, _at(T0_MS))
    assert first.due() == []
    first.add("sea", 1, _at(T0_MS + 99_000))  # the first row's event time is kept, not this one's
    (request,) = first.due()
    assert (request.model_name, request.stream, request.min_rows) == ("sea-model", "sea", MIN_ROWS)
    assert request.request_id.startswith(REQUEST_PREFIX)
    assert request.window_start.ToMilliseconds() == T0_MS and not request.HasField("window_end")
    assert dict(request.params) == {} and request.requested_at.seconds > 0
    assert request.reason.startswith("first model") and "'sea-model' has no production version" in request.reason
    assert first.due() == []  # outstanding: asked once


def test_a_model_in_production_never_asks(two_streams):
    first = two_streams
    first.production("sea-model", 3)
    first.add("sea", 10 * MIN_ROWS, _at(T0_MS))
    assert first.due() == []
    first.absent("sea-model")  # a stale "none" from a lookup sent before the promotion changes nothing
    assert first.due() == [] and "sea-model" not in first.waiting()


def test_nothing_is_asked_until_the_registry_has_said_there_is_no_production_version(tmp_path):
    first = FirstModels(_catalog(tmp_path / "streams", {"sea": "sea-model"}), MIN_ROWS)
    first.add("sea", 5 * MIN_ROWS, _at(T0_MS))
    assert first.due() == [] and first.waiting() == ["sea-model"]  # an unreachable registry is no "no"
    first.absent("sea-model")
    assert [r.model_name for r in first.due()] == ["sea-model"]


def test_an_outstanding_request_holds_every_further_one(two_streams):
    first = two_streams
    first.add("sea", MIN_ROWS, _at(T0_MS))
    assert len(first.due()) == 1
    for _ in range(5):
        first.add("sea", 10 * MIN_ROWS, _at(T0_MS))
        assert first.due() == []
    first.on_result(Result(request_id="someone-else", model_name="sea-model", status=Result.FAILED))
    first.add("sea", 10 * MIN_ROWS, _at(T0_MS))
    assert first.due() == []  # another request's result re-arms nothing


@pytest.mark.parametrize("result", [
    Result(status=Result.FAILED, error="WindowNotFilled: 40 labelled rows; 100 needed"),
    Result(status=Result.SUCCEEDED, version=1, promoted=False),
])
def test_a_failed_or_unpromoted_result_asks_again_only_after_as_many_new_rows(two_streams, result):
    first = two_streams
    first.add("sea", MIN_ROWS + 30, _at(T0_MS))
    (asked,) = first.due()
    result.request_id, result.model_name = asked.request_id, asked.model_name
    assert first.on_result(result)
    assert first.due() == []  # the rows before the result do not count again
    first.add("sea", MIN_ROWS - 1, _at(T0_MS + 500_000))
    assert first.due() == []
    first.add("sea", 1, _at(T0_MS + 600_000))
    (again,) = first.due()
    assert again.request_id != asked.request_id and (again.model_name, again.stream) == ("sea-model", "sea")
    # The retry trains on every row counted, from the first one, and says why it asks again.
    assert again.window_start.ToMilliseconds() == T0_MS
    assert "attempt 2" in again.reason and f"{2 * MIN_ROWS + 30:,} labelled rows" in again.reason


def test_a_promoted_result_ends_the_rule_for_that_model(two_streams):
    first = two_streams
    first.add("sea", MIN_ROWS, _at(T0_MS))
    (asked,) = first.due()
    first.on_result(Result(request_id=asked.request_id, model_name="sea-model", status=Result.SUCCEEDED,
                           version=1, promoted=True))
    first.add("sea", 10 * MIN_ROWS, _at(T0_MS))
    assert first.due() == [] and first.waiting() == ["sky-model"]
    assert first.counting  # sky still needs its first model
    first.production("sky-model", 1)
    assert not first.counting  # nothing left to count: feature records are no longer read per stream


def test_two_streams_are_independent(two_streams):
    first = two_streams
    first.add("sea", MIN_ROWS, _at(T0_MS))
    first.add("sky", MIN_ROWS - 1, _at(T0_MS))
    assert [(r.model_name, r.stream) for r in first.due()] == [("sea-model", "sea")]
    first.add("sky", 1, _at(T0_MS))  # sea's outstanding request does not hold sky's
    (sky,) = first.due()
    assert (sky.model_name, sky.stream) == ("sky-model", "sky")
    first.on_result(Result(request_id=sky.request_id, model_name="sky-model", status=Result.FAILED, error="x"))
    first.add("sea", 10 * MIN_ROWS, _at(T0_MS))
    assert first.due() == []  # sky's failure re-armed sky only
    states = {s["stream"]: s["state"] for s in first.status()}
    assert states == {"sea": "first model requested", "sky": "counting labelled rows"}


def test_the_default_stream_and_unknown_streams(two_streams):
    first = two_streams
    first.add("", MIN_ROWS, _at(T0_MS))  # a record that names no feature set: the default stream ("sea")
    first.add("nowhere", 10 * MIN_ROWS, _at(T0_MS))  # not in the catalogue: not counted
    assert [r.stream for r in first.due()] == ["sea"]


def test_a_stream_added_to_the_catalogue_is_counted(tmp_path):
    folder = tmp_path / "streams"
    first = FirstModels(_catalog(folder, {"sea": "sea-model"}), MIN_ROWS)
    _catalog(folder, {"lake": "lake-model"})
    first.refresh(force=True)
    first.absent("lake-model")
    first.add("lake", MIN_ROWS, _at(T0_MS))
    assert [(r.model_name, r.stream) for r in first.due()] == [("lake-model", "lake")]


# == inside the monitor =========================================================================

class _NoReferences:
    def get(self, model_name, version):
        return None


def _monitor(catalog: StreamCatalog, producer: RecordingProducer, first_model_min_rows: int = MIN_ROWS,
             min_samples: int = 10**9) -> DriftMonitor:
    return DriftMonitor(
        topics=Topics(f"t{uuid.uuid4().hex[:8]}."), stream="fallback", producer=producer,
        references=_NoReferences(), policy=DriftPolicy(min_samples, 600),
        join=LabelJoin(600, 100_000, read_time=event_time_ms),
        tracker_config=TrackerConfig(accuracy_window=200, error_reference_samples=300, expected_run_length=20_000,
                                     calibration_streams=128),
        report_every_samples=10**9, report_every_s=1e9, training_min_rows=123,
        streams=catalog, first_model_min_rows=first_model_min_rows)


def _record(stream: str, i: int, label: int | None = 1) -> bytes:
    record = features_pb2.FeatureRecord(event_id=f"{stream}-{i}", entity_id="u", feature_set=stream,
                                        values=[0.5])
    if label is not None:
        record.label = label
    record.event_time.FromMilliseconds(T0_MS + 1000 * i)
    return record.SerializeToString()


def test_the_monitor_counts_labelled_feature_records_per_stream_and_asks_once(tmp_path):
    catalog = _catalog(tmp_path / "streams", {"sea": "sea-model", "sky": "sky-model"})
    producer = RecordingProducer()
    monitor = _monitor(catalog, producer)
    topics = monitor.topics
    assert monitor.models_without_production() == ["sea-model", "sky-model"]
    monitor.production_looked_up("sea-model", None)
    monitor.production_looked_up("sky-model", 4)  # sky serves already
    # Unlabelled records do not count; sky's records never ask.
    monitor.handle([Message(topics.features, _record("sea", i, label=None)) for i in range(MIN_ROWS)])
    monitor.handle([Message(topics.features, _record("sky", i)) for i in range(3 * MIN_ROWS)])
    monitor.handle([Message(topics.features, _record("sea", i)) for i in range(MIN_ROWS - 1)])
    assert producer.on(topics.training_requests) == []
    # A damaged record sends the batch record by record: its labelled rows count all the same.
    monitor.handle([Message(topics.features, b"\x0a\xff"), Message(topics.features, _record("sea", MIN_ROWS))])
    (request,) = producer.on(topics.training_requests)
    assert (request.model_name, request.stream, request.min_rows) == ("sea-model", "sea", MIN_ROWS)
    assert request.window_start.ToMilliseconds() == T0_MS  # the first labelled row of sea
    assert [key for t, _, key in producer.produced if t == topics.training_requests] == ["sea-model"]
    monitor.handle([Message(topics.features, _record("sea", i)) for i in range(5 * MIN_ROWS)])
    monitor.tick()
    assert len(producer.on(topics.training_requests)) == 1
    # On the dashboard's timeline, and in its stream list.
    snapshot = monitor.snapshot()
    (marker,) = [m for m in snapshot["markers"] if m["kind"] == "training_request"]
    assert (marker["model"], marker["signal"], marker["stream"], marker["request_id"]) == (
        "sea-model", "first_model", "sea", request.request_id)
    assert {s["stream"]: s["state"] for s in snapshot["streams"]} == {
        "sea": "first model requested", "sky": "production v4"}
    # The trainer failed; new rows ask again, and a promotion (a registry event) ends it.
    failed = training_pb2.TrainingResult(request_id=request.request_id, model_name="sea-model",
                                         status=training_pb2.TrainingResult.FAILED, error="boom")
    monitor.handle([Message(topics.training_results, failed.SerializeToString())])
    monitor.handle([Message(topics.features, _record("sea", i)) for i in range(MIN_ROWS)])
    assert len(producer.on(topics.training_requests)) == 2
    moved = registry_pb2.RegistryEvent(kind=registry_pb2.RegistryEvent.ALIAS_MOVED, model_name="sea-model",
                                       alias="production", model_version=registry_pb2.ModelVersion(version=1))
    monitor.handle([Message(topics.registry_events, moved.SerializeToString())])
    assert monitor.models_without_production() == [] and not monitor.first_models.counting
    monitor.handle([Message(topics.features, _record("sea", i)) for i in range(5 * MIN_ROWS)])
    assert len(producer.on(topics.training_requests)) == 2


def test_first_models_off_when_the_setting_is_zero(tmp_path):
    catalog = _catalog(tmp_path / "streams", {"sea": "sea-model"})
    producer = RecordingProducer()
    monitor = _monitor(catalog, producer, first_model_min_rows=0)
    assert monitor.first_models is None and monitor.models_without_production() == []
    monitor.handle([Message(monitor.topics.features, _record("sea", i)) for i in range(5 * MIN_ROWS)])
    assert producer.on(monitor.topics.training_requests) == []


# == several streams: a drift in one model asks for that one only ================================

def _prediction_log(model: str, rows: list[tuple[str, int]]) -> bytes:
    log = serving_pb2.PredictionLog(request_id=uuid.uuid4().hex, model_name=model, model_version=1,
                                    variant="production")
    log.served_at.GetCurrentTime()
    for event_id, predicted in rows:
        score = 0.8 if predicted else 0.2
        log.rows.add(event_id=event_id, features=[0.5], scores=[1 - score, score], label=predicted)
    return log.SerializeToString()


def test_a_drift_in_one_stream_asks_for_training_of_its_model_only_on_its_own_stream(tmp_path):
    catalog = _catalog(tmp_path / "streams", {"sea": "sea-model", "sky": "sky-model"})
    producer = RecordingProducer()
    monitor = _monitor(catalog, producer, min_samples=300)
    topics = monitor.topics
    for model in ("sea-model", "sky-model"):
        monitor.production_looked_up(model, 1)  # both serve: no first-model request either
    rng = np.random.default_rng(3)
    n, change = 1200, 600
    for start in range(0, n, 50):
        batch = []
        for stream, model in (("sea", "sea-model"), ("sky", "sky-model")):
            rows, records = [], []
            for i in range(start, start + 50):
                label = int(rng.integers(2))
                # sea's model is right 90 % of the time, then 20 % after the change; sky's stays at 90 %
                right = rng.random() < (0.2 if stream == "sea" and i >= change else 0.9)
                rows.append((f"{stream}-{i}", label if right else 1 - label))
                records.append(Message(topics.features, _record(stream, i, label)))
            batch += [Message(topics.predictions, _prediction_log(model, rows))] + records
        monitor.handle(batch)
    requests = producer.on(topics.training_requests)
    assert [(r.model_name, r.stream, r.min_rows) for r in requests] == [("sea-model", "sea", 123)]
    assert "concept drift" in requests[0].reason
    assert abs(requests[0].window_start.ToMilliseconds() - (T0_MS + 1000 * change)) <= 100_000
    reports = {r.model_name: r for r in monitor.reports()}
    assert reports["sea-model"].concept_drift and not reports["sky-model"].concept_drift
    # sea's request and its cooldown are sea's: sky's trackers saw every sample and stay quiet.
    assert reports["sky-model"].samples == n and reports["sea-model"].samples == n
    assert monitor.retraining.policy.decide("sky-model", 1, n).retrain
    assert monitor.retraining.policy.decide("sea-model", 1, n).rule == "once_per_version"
