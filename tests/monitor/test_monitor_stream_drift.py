"""Data drift of the stream itself: a stream whose model has a production version with a training
reference feeds that version's data-drift window with its own events (the feature records'
values), whether or not anyone calls Predict; served rows of the same version then feed its
prediction drift only, so an event that was also served is counted once."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest

from driftline.v1 import features_pb2, registry_pb2, serving_pb2
from services.common.settings import Topics
from services.common.streams import StreamCatalog
from services.monitor.codec import event_time_ms
from services.monitor.joiner import LabelJoin
from services.monitor.monitor import DriftMonitor
from services.monitor.policy import DriftPolicy
from services.monitor.psi import Bins, reference_bins
from services.monitor.references import ModelReference
from services.monitor.tracker import DATA, SCORE, TrackerConfig
from monitor_fakes import Message, RecordingProducer

T0_MS = 1_700_000_000_000
FEATURES = ["f0", "f1", "f2"]
WINDOW, STEP = 200, 50
MODEL, STREAM = "sea-model", "sea"


class _References:
    """Every version of every model has the same training reference: f0..f2 ~ U(0, 1)."""

    def __init__(self, names=FEATURES) -> None:
        rng = np.random.default_rng(0)
        self.reference = ModelReference(
            feature_names=tuple(names),
            features={n: Bins.from_json(reference_bins(rng.uniform(0, 1, 5000))) for n in names},
            scores=Bins.from_json(reference_bins(rng.uniform(0, 1, 5000))), eval_error=0.1, eval_rows=1000,
            reference_rows=5000)
        self.asked: list[tuple[str, int]] = []

    def get(self, model_name: str, version: int):
        self.asked.append((model_name, version))
        return self.reference


def _catalog(folder: Path, fields=FEATURES) -> StreamCatalog:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{STREAM}.json").write_text(json.dumps(
        {"stream": STREAM, "model": MODEL, "label": {"type": "integer"},
         "fields": [{"name": name, "type": "number"} for name in fields]}))
    return StreamCatalog(folder, default=STREAM)


def _monitor(catalog: StreamCatalog, references=None, producer=None) -> DriftMonitor:
    return DriftMonitor(
        topics=Topics(f"t{uuid.uuid4().hex[:8]}."), stream=STREAM, producer=producer or RecordingProducer(),
        references=references or _References(), policy=DriftPolicy(10**9, 600),
        join=LabelJoin(600, 100_000, read_time=event_time_ms),
        tracker_config=TrackerConfig(psi_window=WINDOW, window_step=STEP, error_reference_samples=300,
                                     expected_run_length=20_000, calibration_streams=32),
        report_every_samples=10**9, report_every_s=1e9, training_min_rows=10**9,
        streams=catalog, first_model_min_rows=100)


def _promoted(monitor: DriftMonitor, version: int) -> None:
    moved = registry_pb2.RegistryEvent(kind=registry_pb2.RegistryEvent.ALIAS_MOVED, model_name=MODEL,
                                       alias="production", model_version=registry_pb2.ModelVersion(version=version))
    monitor.handle([Message(monitor.topics.registry_events, moved.SerializeToString())])


def _vectors(rng, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.uniform(0, 1, (n, len(FEATURES)))
    x[:, 0] += shift
    return x


def _records(monitor: DriftMonitor, x: np.ndarray, first: int, feature_set: str = STREAM) -> list[Message]:
    out = []
    for i, row in enumerate(x, start=first):
        record = features_pb2.FeatureRecord(event_id=f"e{i}", entity_id=f"u{i % 7}", feature_set=feature_set,
                                            values=row.tolist())
        if i % 2:  # half the events come with their label
            record.label = int(i % 3 == 0)
        record.event_time.FromMilliseconds(T0_MS + 1000 * i)
        out.append(Message(monitor.topics.features, record.SerializeToString(), offset=i))
    return out


def _feed(monitor: DriftMonitor, x: np.ndarray, first: int = 0, batch: int = 100) -> None:
    for start in range(0, len(x), batch):
        monitor.handle(_records(monitor, x[start:start + batch], first + start))


def _served(monitor: DriftMonitor, x: np.ndarray, first: int, version: int = 1) -> Message:
    log = serving_pb2.PredictionLog(request_id=uuid.uuid4().hex, model_name=MODEL, model_version=version,
                                    variant="production")
    log.served_at.GetCurrentTime()
    for i, row in enumerate(x, start=first):
        score = float(np.clip(row[1], 0, 1))
        log.rows.add(event_id=f"e{i}", features=row.tolist(), scores=[1 - score, score], label=int(score > 0.5))
    return Message(monitor.topics.predictions, log.SerializeToString())


def _report(monitor: DriftMonitor, version: int = 1):
    (report,) = monitor.reports(MODEL, version)
    return report


def test_the_production_versions_report_carries_the_streams_feature_drift_without_predictions(tmp_path):
    references = _References()
    monitor = _monitor(_catalog(tmp_path / "streams"), references)
    rng = np.random.default_rng(1)
    _feed(monitor, _vectors(rng, 400))
    assert monitor.reports() == [] and references.asked == []  # no production version: nothing decoded
    _promoted(monitor, 1)
    _feed(monitor, _vectors(rng, 400), first=400)

    report = _report(monitor)
    assert report.production and report.predicted_rows == 0
    drift = {f.feature: f for f in report.features}
    assert list(drift) == FEATURES  # no served rows: no score
    for f in drift.values():
        assert f.window == WINDOW and f.psi_threshold > 0 and f.ks_threshold > 0
        assert f.psi < f.psi_threshold and f.ks < f.ks_threshold and not f.drifted
    assert not [a for a in report.alerts if a.signal == DATA]

    # A shift in f0 is a data-drift alert on f0, located at the stream's records.
    _feed(monitor, _vectors(rng, 400, shift=0.6), first=800)
    report = _report(monitor)
    drift = {f.feature: f for f in report.features}
    assert drift["f0"].drifted and drift["f0"].psi > drift["f0"].psi_threshold
    assert not drift["f1"].drifted and not drift["f2"].drifted
    alerts = [a for a in report.alerts if a.signal == DATA]
    assert {tuple(a.features) for a in alerts} == {("f0",)} and {a.statistic for a in alerts} <= {"ks", "psi"}
    assert alerts[0].topic == monitor.topics.features and 800 <= alerts[0].detected_offset < 1200
    assert "events of the stream" in alerts[0].description
    assert alerts[0].change_time.ToMilliseconds() >= T0_MS + 400_000


def test_prediction_logs_of_the_same_events_do_not_double_the_data_drift_window(tmp_path):
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _promoted(monitor, 1)
    rng = np.random.default_rng(2)
    x = _vectors(rng, 150)
    # The same 150 events, as the stream carries them and as serving logged them.
    monitor.handle([_served(monitor, x[:50], 0), *_records(monitor, x, 0), _served(monitor, x[50:], 50)])
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.stream_window.rows == tracker.stream_rows == 150
    assert tracker.window.names == [SCORE]  # served rows feed prediction drift only
    assert tracker.window.rows == tracker.predicted_rows == 150
    assert list(_report(monitor).features) == []  # 150 < the 200-row window: doubled, it would be full
    y = _vectors(rng, 100)
    monitor.handle([*_records(monitor, y, 150), _served(monitor, y, 150)])
    drift = {f.feature: f for f in _report(monitor).features}
    assert list(drift) == [*FEATURES, SCORE] and {f.window for f in drift.values()} == {WINDOW}
    assert tracker.stream_window.rows == 250 and tracker.predicted_rows == 250
    # The events of the stream went into the window bin for bin, once each.
    assert np.array_equal(np.sort(tracker.stream_window._ring, axis=0),
                          np.sort(tracker.stream_window.bin_indices(np.r_[x, y][-WINDOW:]), axis=0))


def test_served_rows_alone_feed_data_drift_as_before(tmp_path):
    """A production version nobody sends feature records with values for: its data drift comes
    from the served rows, features and score in one window, as without the stream."""
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _promoted(monitor, 1)
    rng = np.random.default_rng(3)
    monitor.handle([_served(monitor, _vectors(rng, 300), 0)])
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.stream_window is None and tracker.window.names == [*FEATURES, SCORE]
    monitor.handle([_served(monitor, _vectors(rng, 300, shift=0.6), 300)])
    drift = {f.feature: f for f in _report(monitor).features}
    assert list(drift) == [*FEATURES, SCORE] and drift["f0"].drifted and not drift["f1"].drifted


def test_records_that_name_no_feature_set_and_a_damaged_batch_feed_the_default_stream(tmp_path):
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _promoted(monitor, 1)
    rng = np.random.default_rng(4)
    monitor.handle(_records(monitor, _vectors(rng, 100), 0, feature_set=""))  # the default stream's
    monitor.handle([Message(monitor.topics.features, b"\x0a\xff"), *_records(monitor, _vectors(rng, 100), 100)])
    short = features_pb2.FeatureRecord(event_id="odd", feature_set=STREAM, values=[0.5]).SerializeToString()
    monitor.handle([Message(monitor.topics.features, short), *_records(monitor, _vectors(rng, 50), 200)])
    monitor.handle(_records(monitor, _vectors(rng, 50), 250, feature_set="another-stream"))
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.stream_rows == 250  # the record with one value and the other stream's are not compared
    assert [f.feature for f in _report(monitor).features] == FEATURES


def test_a_stream_whose_features_differ_from_the_versions_is_not_compared(tmp_path, caplog):
    monitor = _monitor(_catalog(tmp_path / "streams", fields=["f1", "f0", "f2"]))
    _promoted(monitor, 1)
    rng = np.random.default_rng(5)
    with caplog.at_level(logging.WARNING, logger="services.monitor.monitor"):
        for second in range(3):
            monitor._feeds_checked = float("-inf")  # as every FEEDS_CHECK_S
            _feed(monitor, _vectors(rng, 300), first=300 * second)
    refused = [r for r in caplog.records if "not the version's" in r.getMessage()]
    assert len(refused) == 1 and refused[0].stream_features == ["f1", "f0", "f2"]
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.stream_window is None and tracker.stream_rows == 0 and list(_report(monitor).features) == []


def test_a_new_production_version_takes_the_stream_and_the_old_one_gets_its_served_rows_back(tmp_path):
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _promoted(monitor, 1)
    rng = np.random.default_rng(6)
    _feed(monitor, _vectors(rng, 300))
    v1 = monitor._trackers[(MODEL, 1)]
    assert v1.stream_rows == 300 and v1.window.names == [SCORE]
    _promoted(monitor, 2)
    _feed(monitor, _vectors(rng, 300), first=300)
    v2 = monitor._trackers[(MODEL, 2)]
    assert v2.production and v2.stream_rows == 300 and not v1.production
    assert v1.stream_window is None and v1.window.names == [*FEATURES, SCORE] and v1.stream_rows == 300
    assert [f.feature for f in _report(monitor, 2).features] == FEATURES


@pytest.mark.parametrize("registry_answer", [True, False])
def test_a_production_version_from_the_registrys_lookup_is_fed_too(tmp_path, registry_answer):
    """A restarted monitor that read no ALIAS_MOVED learns production from Registry.GetAlias."""
    monitor = _monitor(_catalog(tmp_path / "streams"))
    monitor.production_looked_up(MODEL, 3 if registry_answer else None)
    _feed(monitor, _vectors(np.random.default_rng(7), 300))
    if registry_answer:
        assert [f.feature for f in _report(monitor, 3).features] == FEATURES and _report(monitor, 3).production
    else:
        assert monitor.reports() == []


# -- the stream's latest events open the window of a version fed from now on ----------------------

def _looked_up(monitor: DriftMonitor, version: int) -> None:
    """Production from Registry.GetAlias, then an idle poll (no record comes)."""
    monitor.production_looked_up(MODEL, version)
    monitor.tick()


@pytest.mark.parametrize("learnt", [_promoted, _looked_up], ids=["alias_moved", "lookup"])
@pytest.mark.parametrize("damaged", [False, True], ids=["scanned", "parsed"])
def test_a_one_shot_replay_before_production_fills_the_window_at_once(tmp_path, learnt, damaged):
    """`driftline produce` sends every event before the first model is served: once production is
    known, with no further record, its report lists per-feature statistics over a full window of
    the stream's latest events (its own training rows here: no drift)."""
    references = _References()
    monitor = _monitor(_catalog(tmp_path / "streams"), references)
    x = _vectors(np.random.default_rng(8), 450)
    for start in range(0, 450, 150):  # batches larger than the window's step; the ring wraps
        batch = _records(monitor, x[start:start + 150], start)
        if damaged:  # one undecodable record: the batch is parsed record by record
            batch.insert(0, Message(monitor.topics.features, b"\x0a\xff"))
        monitor.handle(batch)
    assert monitor.reports() == [] and references.asked == []  # nothing tracked before production

    learnt(monitor, 1)

    report = _report(monitor)
    drift = {f.feature: f for f in report.features}
    assert report.production and list(drift) == FEATURES
    for f in drift.values():
        assert f.window == WINDOW and f.psi < f.psi_threshold and f.ks < f.ks_threshold and not f.drifted
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.stream_rows == 0 and tracker.prefilled_rows == WINDOW == tracker.rows_for(DATA)
    # The latest WINDOW events, oldest first, binned as live rows are.
    assert np.array_equal(tracker.stream_window._ring, tracker.stream_window.bin_indices(x[-WINDOW:]))
    # The same calibration as a window the stream fed from its first row.
    live = _monitor(_catalog(tmp_path / "live"), references)
    _promoted(live, 1)
    _feed(live, x[:WINDOW])
    assert np.array_equal(live._trackers[(MODEL, 1)].stream_window.psi_threshold, tracker.stream_window.psi_threshold)
    # Live rows go on from there, and the report went out to the stats topic too.
    _feed(monitor, _vectors(np.random.default_rng(9), 100), first=450)
    assert tracker.stream_rows == 100 and tracker.stream_window.rows == WINDOW + 100
    assert monitor.producer.on(monitor.topics.monitor_stats)


def test_fewer_events_than_the_window_open_it_partly(tmp_path):
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _feed(monitor, _vectors(np.random.default_rng(10), 120))
    _promoted(monitor, 1)
    tracker = monitor._trackers[(MODEL, 1)]
    assert tracker.prefilled_rows == 120 and list(_report(monitor).features) == []  # not full yet
    _feed(monitor, _vectors(np.random.default_rng(11), 80), first=120)
    assert [f.window for f in _report(monitor).features] == [WINDOW] * len(FEATURES)


def test_a_drift_in_the_events_before_production_alerts_at_those_events(tmp_path):
    """Prefilled rows run through the same window and tests: a real shift among them is an alert,
    located at the stream's records that carried it, and it says the window opened with them."""
    monitor = _monitor(_catalog(tmp_path / "streams"))
    rng = np.random.default_rng(12)
    _feed(monitor, np.r_[_vectors(rng, 100), _vectors(rng, 300, shift=0.6)])
    _promoted(monitor, 1)
    _feed(monitor, _vectors(rng, 50, shift=0.6), first=400)  # the second consecutive test confirms
    alerts = [a for a in _report(monitor).alerts if a.signal == DATA]
    assert {tuple(a.features) for a in alerts} == {("f0",)}
    alert = alerts[0]
    assert alert.topic == monitor.topics.features
    assert alert.change_offset == 200 and alert.change_time.ToMilliseconds() == T0_MS + 200_000  # the ring's oldest batch
    assert alert.detected_offset == 400 and "before it fed this version" in alert.description


def test_a_new_production_version_opens_with_the_streams_latest_events(tmp_path):
    """Production moves with no further record: the new version's window holds the latest events
    the previous one was fed (the stream's), binned against its own reference."""
    monitor = _monitor(_catalog(tmp_path / "streams"))
    _promoted(monitor, 1)
    x = _vectors(np.random.default_rng(13), 300)
    _feed(monitor, x)
    _promoted(monitor, 2)
    v1, v2 = monitor._trackers[(MODEL, 1)], monitor._trackers[(MODEL, 2)]
    assert v1.stream_window is None and v2.stream_rows == 0 and v2.prefilled_rows == WINDOW
    assert np.array_equal(v2.stream_window._ring, v2.stream_window.bin_indices(x[-WINDOW:]))
    assert [f.window for f in _report(monitor, 2).features] == [WINDOW] * len(FEATURES)
