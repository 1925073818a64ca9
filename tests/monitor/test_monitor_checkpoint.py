"""The monitor's state saved to the real object store and restored into a new DriftMonitor: the
restored one goes on exactly as the first did (same counts, same statistics, the same training
request under the same id, none where the snapshot already holds it); records the state already
holds count once; a snapshot of other settings, other code or no snapshot at all is ignored, not
a crash; a store that refuses a snapshot is counted and tried again."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from prometheus_client import REGISTRY

from services.common.objectstore import MinioObjectStore
from services.monitor import checkpoint
from services.monitor.checkpoint import Checkpoints
from services.monitor.server import drift_monitor, state_settings
from services.monitor.settings import MonitorSettings
from monitor_fakes import Message, RecordingProducer
from support import unique_bucket, wait_for
from test_monitor import STREAM, _feature_record, _prediction_log, samples
from test_monitor_stream_drift import _References

SETTINGS = MonitorSettings(stream=STREAM, policy_min_samples=300, error_reference_samples=300, psi_window=400,
                           window_step=100, calibration_streams=32, first_model_min_rows=0, report_every_s=1e9,
                           report_every_samples=10**9)
MODEL = "drifting"


def _monitor(settings: MonitorSettings = SETTINGS):
    return drift_monitor(settings, RecordingProducer(), _References())


@pytest.fixture(scope="module")
def batches():
    """1,200 labelled predictions, right 90 % of the time until sample 600 and 20 % after: a batch
    per 50, each its prediction log and the events' feature records (with their labels)."""
    topics = SETTINGS.topics
    made = samples(MODEL, 1200, 600, 0.9, 0.2, False, seed=1)
    return [[Message(topics.predictions, _prediction_log(MODEL, 1, made[i:i + 50]).SerializeToString()),
             *(Message(topics.features, _feature_record(s).SerializeToString()) for s in made[i:i + 50])]
            for i in range(0, len(made), 50)]


def _checkpoints(monitor, store, key: str, settings: MonitorSettings = SETTINGS) -> Checkpoints:
    return Checkpoints(monitor, store, key, every_s=3600, settings=state_settings(settings))


def _saved(monitor, store) -> str:
    key = f"monitor/state/{uuid.uuid4().hex}.snapshot"
    _checkpoints(monitor, store, key).close()  # a snapshot now, written before it returns
    return key


def _requests(monitor) -> list:
    return monitor.producer.on(SETTINGS.topics.training_requests)


def _numbers(monitor) -> tuple:
    (report,) = monitor.reports(MODEL, 1)
    return (report.samples, report.predicted_rows, report.rolling_accuracy, report.error_cusum,
            report.concept_drift, [f.psi for f in report.features])


def test_a_restored_monitor_goes_on_as_the_first_did_and_asks_under_the_same_id(s3, batches):
    store = s3.store(unique_bucket())
    first = _monitor()
    for batch in batches[:8]:  # before the drift
        first.handle(batch)
    before = _saved(first, store)
    for batch in batches[8:]:
        first.handle(batch)
    (request,) = _requests(first)
    after = _saved(first, store)

    # From the snapshot before the drift: every batch is handed over (a consumer that started at
    # the group's committed offsets); those the snapshot holds count once.
    again = _monitor()
    positions = _checkpoints(again, store, before).restore()
    assert positions == {(SETTINGS.topics.predictions, 0): batches[7][0].offset() + 1,
                         (SETTINGS.topics.features, 0): batches[7][-1].offset() + 1}
    for batch in batches:
        again.handle(batch)
    assert _numbers(again) == _numbers(first)
    (repeated,) = _requests(again)  # the same decision, the same id: the trainer sees a repeat
    assert repeated.request_id == request.request_id and repeated.window_start == request.window_start

    # From the snapshot after the request: the drift is known to have asked already.
    later = _monitor()
    _checkpoints(later, store, after).restore()
    for batch in batches:
        later.handle(batch)
    assert _requests(later) == [] and _numbers(later) == _numbers(first)


def test_a_batch_handed_over_again_counts_once(batches):
    monitor = _monitor()
    for batch in batches[:10]:
        monitor.handle(batch)
    counted = _numbers(monitor)
    monitor.handle(batches[9])  # a whole batch again, as after a handler failure
    monitor.handle(batches[9][20:] + batches[8][:5])  # part of one, and of an older one
    assert _numbers(monitor) == counted
    replayed = REGISTRY.get_sample_value("driftline_monitor_duplicates_total", {"kind": "replayed"})
    assert replayed >= len(batches[9]) * 2 - 20 + 5


def test_a_repeated_prediction_log_and_a_second_prediction_of_a_joined_event_count_once(batches):
    monitor = _monitor()
    monitor.handle(batches[0])
    counted = _numbers(monitor)
    log = batches[0][0]
    monitor.handle([Message(log.topic(), log.value())])  # the same log delivered again, at a new offset
    assert _numbers(monitor) == counted
    event = samples(MODEL, 1, 1, 0.9, 0.9, False, seed=1)  # event 0 again, in a log of its own
    monitor.handle([Message(log.topic(), _prediction_log(MODEL, 1, event).SerializeToString())])
    assert monitor.reports(MODEL, 1)[0].samples == counted[0]
    assert monitor.join.duplicate_logs == 1 and monitor.join.duplicate_predictions == 1


def test_a_snapshot_of_other_settings_or_code_or_none_at_all_is_ignored_with_a_log_line(s3, batches, caplog):
    store = s3.store(unique_bucket())
    first = _monitor()
    first.handle(batches[0])
    key = _saved(first, store)
    other = SETTINGS.model_copy(update={"policy_min_samples": 301})
    caplog.set_level(logging.INFO, logger="services.monitor.checkpoint")
    assert _checkpoints(_monitor(other), store, key, other).restore() is None
    assert "ignoring a monitor snapshot of other code or settings" in caplog.text

    data = store.get_bytes(key)
    header, start = checkpoint.read_header(data)
    header["code"] = "0" * 16  # as an older release wrote it
    head = json.dumps(header, sort_keys=True).encode()
    store.put_bytes(key, checkpoint.MAGIC + len(head).to_bytes(4, "big") + head + data[start:])
    fresh = _monitor()
    assert _checkpoints(fresh, store, key).restore() is None and fresh.reports(MODEL) == []

    store.put_bytes(key, data[:start + 100])  # a damaged payload
    caplog.clear()
    assert _checkpoints(_monitor(), store, key).restore() is None
    assert "ignoring an unreadable monitor snapshot" in caplog.text
    store.put_bytes(key, b"not a snapshot")
    assert _checkpoints(_monitor(), store, key).restore() is None
    assert _checkpoints(_monitor(), store, "monitor/state/none.snapshot").restore() is None


def test_a_store_that_refuses_a_snapshot_is_counted_and_asked_again(s3, batches):
    missing = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, unique_bucket(), s3.secure)  # no bucket yet
    monitor = _monitor()
    monitor.handle(batches[0])
    def failed() -> float:
        return REGISTRY.get_sample_value("driftline_monitor_snapshots_total", {"outcome": "failed"}) or 0

    before = failed()
    checkpoints = _checkpoints(monitor, missing, "monitor/state/refused.snapshot")
    checkpoints.save()  # does not raise: the write happens, and fails, on the writer thread
    wait_for(lambda: failed() > before, 30, "the refused write to be counted")
    monitor.handle(batches[1])  # the monitor goes on
    missing.ensure_bucket()  # the store is back
    wait_for(lambda: missing.exists("monitor/state/refused.snapshot"), 30, "the snapshot to be written at last")
    restored = _monitor()
    assert _checkpoints(restored, missing, "monitor/state/refused.snapshot").restore() is not None
    assert restored.reports(MODEL, 1)[0].samples == 50
