"""Categorical data drift: the Jensen–Shannon window statistic calibrated by bootstrap, and the
alert the tracker raises — a real shift alarms, a stationary stream does not. (That the monitor
reads the categories the trainer keeps: tests/common/test_reference_contract.py.)"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon

from services.common.reference import TrainingReference, fit_reference
from services.monitor.calibration import calibrate_windows
from services.monitor.categorical import js_distance
from services.monitor.reporting import compact
from services.monitor.references import ModelReference
from services.monitor.signals import WindowDrift
from services.monitor.tracker import DATA, Position, TrackerConfig, VersionTracker

SHARES = np.array([0.5, 0.25, 0.15, 0.1])  # channel codes 0..3 in training
SHIFTED = np.array([0.35, 0.25, 0.15, 0.25])  # a campaign moves 15 % of traffic to code 3


def _training(rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    """Two features: a numeric amount and a categorical channel code."""
    return np.c_[rng.lognormal(3, 1, n), rng.choice(4, n, p=SHARES)]


def _tracker(rng: np.random.Generator, **config) -> VersionTracker:
    x = _training(rng)
    reference = TrainingReference({"amount": fit_reference(x[:, 0]), "channel": fit_reference(x[:, 1])})
    metadata = {"feature_names": ["amount", "channel"], **reference.to_metadata(),
                "metrics": {"train_rows": float(len(x))}}
    tracker = VersionTracker("m", 1, TrackerConfig(psi_window=1000, window_step=100, window_confirm=2,
                                                   expected_run_length=50_000, calibration_streams=128, **config))
    tracker.set_reference(ModelReference.from_metadata(metadata))
    return tracker


def _serve(tracker: VersionTracker, rows: np.ndarray, batch: int = 250) -> None:
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        tracker.add_predictions(chunk, np.full(len(chunk), np.nan), 0, Position("p", 0, start))


def test_js_distance_is_scipys():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (20, 6))
    reference = rng.dirichlet(np.ones(6))
    expected = [jensenshannon(c / c.sum(), reference, base=2) for c in counts]
    assert np.allclose(js_distance(counts, reference), expected)


def test_a_categorical_shift_alarms_with_js_and_a_stationary_stream_does_not():
    rng = np.random.default_rng(2)
    tracker = _tracker(rng)
    w = tracker.window
    assert w.statistic_names == ["ks", "js"]
    assert w.js_threshold[1] > 0 and w.ks_threshold[1] == 0 and w.ks_threshold[0] > 0

    # 30k stationary rows (the calibration allows one false alarm per 50k rows in all): no alert
    _serve(tracker, _training(rng, 30_000))
    assert tracker.alerts == []
    assert 0 < w.js[1] < w.js_threshold[1] and w.ks[1] == 0

    # then the channel mix shifts (amounts unchanged): a data-drift alert on channel, named js
    shifted = np.c_[rng.lognormal(3, 1, 5000), rng.choice(4, 5000, p=SHIFTED)]
    _serve(tracker, shifted)
    alerts = [(a.signal, a.statistic, a.features) for a in tracker.alerts]
    assert (DATA, "js", ["channel"]) in alerts
    assert all(features == ["channel"] for _, _, features in alerts)  # the amount did not move
    js_alert = next(a for a in tracker.alerts if a.statistic == "js")
    assert js_alert.value > js_alert.threshold
    assert 30_000 < js_alert.detected_sample <= 30_000 + 2000  # found within two windows of the change
    assert "JS of channel" in js_alert.description

    drift = {f.feature: f for f in tracker.feature_drift()}
    assert drift["channel"].categorical and drift["channel"].drifted and drift["channel"].ks == 0
    assert drift["channel"].js > drift["channel"].js_threshold > 0
    assert not drift["amount"].categorical and drift["amount"].js == 0 and drift["amount"].ks > 0
    report = compact(tracker.report(0))
    assert report["features"]["channel"]["categorical"] and "js" not in report["features"]["amount"]
    assert any(a["statistic"] == "js" for a in report["alerts"])


def test_an_unseen_category_alarms():
    rng = np.random.default_rng(3)
    tracker = _tracker(rng)
    _serve(tracker, _training(rng, 3000))
    new = _training(rng, 3000)
    new[rng.random(3000) < 0.1, 1] = 9.0  # a channel the model never saw
    _serve(tracker, new)
    assert {(a.statistic, tuple(a.features)) for a in tracker.alerts} >= {("js", ("channel",))}


def test_js_calibration_holds_its_false_alarm_rate():
    # Bootstrap thresholds for one false alarm per `ert` rows (for both statistics of the feature):
    # stationary streams simulated independently of the calibration's own see about that many.
    rng = np.random.default_rng(4)
    shares = np.array([[0.6, 0.2, 0.1, 0.05, 0.05, 0.0]])  # five categories and the unseen bucket
    window, step, ert = 500, 50, 20_000
    cal = calibrate_windows(shares, window, step, ert, confirm=1, streams=512, seed=1,
                            categorical=np.array([True]))
    rows, alarms = 0, 0
    for _ in range(10):
        detector = WindowDrift(["c"], [None], shares, window=window, step=step, psi_threshold=cal.psi,
                               ks_threshold=cal.ks, confirm=1, categories=[np.arange(5.0)], js_threshold=cal.js)
        stream = rng.choice(5, 20_000, p=shares[0, :5])[:, None]
        alarms += len(detector.add(stream))
        rows += len(stream)
    # ert is split over the 2 statistics: expect about rows/ert alarms in all; a JS statistic
    # computed wrongly (or a threshold from the wrong quantile) gives far more or none ever
    assert alarms <= 3 * rows / ert
    shifted = WindowDrift(["c"], [None], shares, window=window, step=step, psi_threshold=cal.psi,
                          ks_threshold=cal.ks, confirm=1, categories=[np.arange(5.0)], js_threshold=cal.js)
    alarms = shifted.add(rng.choice(5, 5000, p=[0.45, 0.25, 0.15, 0.1, 0.05])[:, None])
    assert "js" in {a.statistic for a in alarms}
