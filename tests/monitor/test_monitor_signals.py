"""The monitor's calibrated signals as units: the vectorised CUSUM against the textbook
recursion, thresholds that hold their false-alarm rate on stationary streams (and are
not constants), windows that see a shift, the delayed-label join's counts, and the
alerts' life cycle in a version tracker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.monitor.calibration import (calibrate_adwin, calibrate_cusum, calibrate_windows, cusum_bootstrap_level,
                                         no_alarm_quantile,
                                         refined_cusum)
from services.monitor.joiner import Joined, Label, LabelJoin, Predicted
from services.monitor.policy import DriftPolicy
from services.monitor.psi import Bins, reference_bins
from services.monitor.references import ModelReference
from services.monitor.retraining import RetrainingTrigger
from services.monitor.signals import ErrorCusum, WindowDrift, cusum_coefficients, cusum_level, cusum_thresholds
from services.monitor.tracker import CONCEPT, DATA, PREDICTION, SCORE, TrackerConfig, VersionTracker


def test_the_batched_cusum_is_the_recursion():
    rng = np.random.default_rng(0)
    p0, shifts, level = 0.2, (0.02, 0.05, 0.2), 8.0
    a, b = cusum_coefficients(p0, shifts)
    h = cusum_thresholds(p0, shifts, level)  # one LLR threshold per member
    assert np.allclose(cusum_level(h, p0, shifts), level) and (np.diff(h) > 0).all()
    errors = (rng.random(3000) < np.r_[np.full(1500, 0.2), np.full(1500, 0.35)]).astype(int)
    # the textbook loop, restarting after each alarm
    s, alarms_loop = np.zeros(3), []
    for t, e in enumerate(errors, start=1):
        s = np.maximum(0, s + (a if e else b))
        if (s > h).any():
            alarms_loop.append(t)
            s[:] = 0
    detector, alarms, alarms_batched = ErrorCusum(p0, level, shifts), [], []
    for chunk in np.array_split(errors, 37):  # uneven batches, alarms inside them
        alarms += detector.update(chunk)
    alarms_batched = [a.detected_sample for a in alarms]
    assert alarms_batched == alarms_loop and alarms_loop
    assert all(a.value >= a.threshold == level and a.llr > a.llr_threshold for a in alarms)


def test_each_member_has_its_own_threshold_and_small_rises_are_seen():
    """One threshold over the bank's raw maximum would be set by the large-shift members;
    on the level scale a 0.01-member gets a threshold near what it alone would need."""
    h = cusum_thresholds(0.1, (0.01, 0.4), math.log(2000))
    assert h[0] < 1.5 < 5 < h[1]
    # a slow rise (0.1 -> 0.14) is found within a few thousand samples at ERT 20,000
    rng = np.random.default_rng(4)
    c = calibrate_cusum(rng.random(2000) < 0.1, 20_000, seed=4)
    detector = ErrorCusum(c.p0, c.threshold, c.shifts)
    assert detector.update(rng.random(5000) < 0.1) == []
    assert detector.update(rng.random(5000) < 0.14)[0].detected_sample < 7000


def test_a_refined_reference_is_batched_like_the_recursion_and_restarts_after_an_alarm():
    """Its updates (p0 every 1/8 more in-control samples, a bootstrap per doubling, a new
    reference after an alarm) fall on sample counts, not on batch boundaries."""
    rng = np.random.default_rng(7)
    reference = rng.random(300) < 0.1
    errors = rng.random(9000) < np.r_[np.full(4000, 0.1), np.full(2000, 0.3), np.full(3000, 0.5)]
    levels = []

    def bootstrap(p0, n):  # a stand-in with the real one's shape: lower as n grows
        levels.append(n)
        return 11.0 + 20.0 / math.sqrt(n)

    one = ErrorCusum.refined(reference, bootstrap, guard=200, relearn=300)
    per_sample = [a for e in errors for a in one.update([e])]
    batched = ErrorCusum.refined(reference, bootstrap, guard=200, relearn=300)
    in_batches = [a for chunk in np.array_split(errors, 23) for a in batched.update(chunk)]
    assert [(a.detected_sample, a.p0) for a in per_sample] == [(a.detected_sample, a.p0) for a in in_batches]
    first, *later = per_sample
    assert 4000 < first.detected_sample < 4400 and abs(first.p0 - 0.1) < 0.02
    # before the alarm: in control were the reference and all but the latest 200 samples
    # (at the first p0 update once the count has doubled: updates are 1/8 apart)
    assert levels[0] == 300 and all(2 <= b / a < 2 * 1.125 for a, b in zip(levels[:4], levels[1:4]))
    # the old reference kept watching while the new regime was learnt: the drift fired again
    assert later[0].p0 == first.p0 and later[0].detected_sample < first.detected_sample + 300
    # then the reference was the new regime's: the next alarm, on the next rise, is against ~0.3
    after = [a for a in later if a.p0 != first.p0]
    assert after and abs(after[0].p0 - 0.3) < 0.06 and after[0].detected_sample > 6000
    assert one.p0 == batched.p0 and abs(one.p0 - 0.5) < 0.05


def test_a_refined_reference_finds_a_rise_a_misestimated_one_hides():
    """The first reference estimate is off (its 500 samples ran at 0.13; the model then runs
    at 0.1): a rise to 0.14 is 0.01 over the fixed reference and 0.04 over the refined one."""
    fixed_found, refined_found = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        reference = rng.random(500) < 0.13
        errors = np.r_[rng.random(6000) < 0.10, rng.random(4000) < 0.14]
        c = calibrate_cusum(reference, 20_000, streams=128, seed=seed)
        for found, detector in ((fixed_found, ErrorCusum(c.p0, c.threshold, c.shifts)),
                                (refined_found, refined_cusum(reference, 20_000, streams=128, seed=seed))):
            alarms = [a for chunk in np.array_split(errors, 50) for a in detector.update(chunk)]
            assert all(a.detected_sample > 6000 for a in alarms)  # no false alarm before the rise
            found.append(alarms[0].detected_sample - 6000 if alarms else 4000)
    assert max(refined_found) < 2000 and np.mean(refined_found) < 0.5 * np.mean(fixed_found), \
        (refined_found, fixed_found)


def _run_length_alarms(p: float, reference_n: int, ert: float, events: int, seed: int) -> tuple[int, int]:
    """False alarms of CUSUMs calibrated on fresh references, over `events` stationary samples."""
    rng = np.random.default_rng(seed)
    alarms, runs = 0, 0
    per_run = 20_000
    while runs * per_run < events:
        reference = rng.random(reference_n) < p
        c = calibrate_cusum(reference, ert, seed=runs + 1000 * seed)
        detector = ErrorCusum(c.p0, c.threshold, c.shifts)
        for chunk in np.array_split(rng.random(per_run) < p, 40):
            alarms += len(detector.update(chunk))
        runs += 1
    return alarms, runs * per_run


def test_the_cusum_threshold_holds_its_expected_run_length_on_stationary_errors():
    ert = 3000
    alarms, events = _run_length_alarms(p=0.15, reference_n=500, ert=ert, events=120_000, seed=1)
    expected = events / ert  # 40
    # Generous bounds: the check is that the rate is set by the ERT, not by luck or a constant.
    assert expected / 3 <= alarms <= expected * 2, (alarms, expected)


def test_a_refined_reference_holds_its_expected_run_length_too():
    """Lower thresholds as the in-control sample grows, yet the rate holds: the bootstrap's
    allowance is for the count p0 was estimated from, and the guard keeps the samples the
    CUSUMs are reading out of it. A reference that came out low (0.12 for a stream at 0.15)
    keeps a fixed reference alarming; a refined one is learnt again after the first alarms."""
    ert, fair, events = 5000, 0, 0
    for run in range(6):
        rng = np.random.default_rng(100 + run)
        detector = refined_cusum(rng.random(500) < 0.15, ert, streams=128, seed=run)
        fair += sum(len(detector.update(chunk)) for chunk in np.array_split(rng.random(20_000) < 0.15, 40))
        events += 20_000
    assert events / ert / 3 <= fair <= events / ert * 1.6, (fair, events / ert)  # 24 expected
    fixed, refined = 0, 0
    for run in range(3):
        rng = np.random.default_rng(200 + run)
        low, stream = rng.random(500) < 0.12, rng.random(20_000) < 0.15
        c = calibrate_cusum(low, ert, streams=128, seed=run)
        for detector in (ErrorCusum(c.p0, c.threshold, c.shifts), refined_cusum(low, ert, streams=128, seed=run)):
            found = sum(len(detector.update(chunk)) for chunk in np.array_split(stream, 40))
            fixed, refined = (fixed + found, refined) if detector.bootstrap is None else (fixed, refined + found)
    assert refined <= 60_000 / ert * 2 < 60_000 / ert * 4 <= fixed, (refined, fixed)  # 12 expected


@pytest.mark.timeout(60)
def test_a_level_from_a_handful_of_samples_is_found_and_far_up():
    # A rate estimated from 5 samples climbs the CUSUMs of its bootstrap streams past e^710:
    # the bisection's upper end overflowed to inf and the monitor's consumer thread spun for ever.
    levels = [cusum_bootstrap_level(p0, n, 200_000) for p0, n in ((0.5, 5), (0.3, 3), (0.1, 500))]
    assert all(math.isfinite(level) for level in levels)
    assert levels[0] > levels[2] and levels[1] > levels[2]
    h = cusum_thresholds(np.array([0.5, 0.01]), [0.01, 0.4], levels[0])
    assert np.isfinite(h).all()
    assert np.allclose(cusum_level(h, np.array([0.5, 0.01]), [0.01, 0.4]), levels[0], rtol=1e-6)


def test_thresholds_follow_the_target_and_the_data_not_constants():
    rng = np.random.default_rng(2)
    low, high = rng.random(500) < 0.05, rng.random(500) < 0.3
    assert calibrate_cusum(low, 100_000).threshold > calibrate_cusum(low, 1_000).threshold
    assert calibrate_cusum(low, 10_000).p0 < calibrate_cusum(high, 10_000).p0
    p = np.full((1, 10), 0.1)
    small, large = calibrate_windows(p, 100, 25, 5000), calibrate_windows(p, 800, 200, 5000)
    assert small.ks[0] > large.ks[0]  # a smaller window needs a larger distance
    assert calibrate_windows(p, 200, 50, 100_000).ks[0] > calibrate_windows(p, 200, 50, 1_000).ks[0]
    assert calibrate_adwin(low, 5_000) in (0.1, 0.03, 0.01, 0.002, 5e-4, 1e-4, 1e-5)
    assert no_alarm_quantile(0, 10) == 1.0 and math.isclose(no_alarm_quantile(10, 10), math.exp(-1))


def _uniform_window(names, window, step, ert, confirm=2):
    edges = [np.linspace(0, 1, 11)] * len(names)
    proportions = np.full((len(names), 10), 0.1)
    c = calibrate_windows(proportions, window, step, ert, confirm)
    return WindowDrift(names, edges, proportions, window=window, step=step, psi_threshold=c.psi,
                       ks_threshold=c.ks, confirm=confirm)


def test_window_thresholds_hold_their_rate_and_catch_a_shift():
    names = [f"f{i}" for i in range(5)]
    rng = np.random.default_rng(4)
    ert = 5_000
    quiet = _uniform_window(names, 200, 50, ert)
    alarms = []
    for _ in range(40):  # 100k stationary rows, in batches as prediction logs come
        alarms += quiet.update(rng.uniform(0, 1, (2500, 5)))
    # one false alarm (on any feature and statistic) per ert rows at most, up to noise;
    # an alarm lasts until cleared, so count raised alarms
    assert len(alarms) <= 3 * 100_000 / ert, len(alarms)
    shifted = _uniform_window(names, 200, 50, ert)
    shifted.update(rng.uniform(0, 1, (400, 5)))
    moved = rng.uniform(0, 1, (400, 5))
    moved[:, 2] = rng.normal(0.7, 0.1, 400)
    found = shifted.update(moved)
    assert {a.feature for a in found} == {"f2"} and {a.statistic for a in found} == {"ks", "psi"}
    assert all(a.value > a.threshold and a.change_sample > 400 - 200 for a in found)
    assert shifted.alarmed.tolist() == [False, False, True, False, False]
    # hysteresis: back to the reference, the alarm clears after `confirm` calm tests
    shifted.update(rng.uniform(0, 1, (600, 5)))
    assert not shifted.alarmed.any()


def test_the_join_counts_late_too_late_duplicate_and_unmatched_labels():
    now = [0.0]
    join = LabelJoin(ttl_s=10, max_pending=100, clock=lambda: now[0])
    assert join.add_prediction("late", Predicted("m", 1, 1, served_at_ms=5)) is None
    joined = join.add_label("late", Label(1, 0))  # the usual delayed label: after its prediction
    assert joined.correct and joined.prediction.served_at_ms == 5
    assert join.add_label("late", Label(1, 0)) is None  # a redelivered label
    join.add_prediction("expired", Predicted("m", 1, 0))
    join.add_label("never-predicted", Label(0, 0))
    now[0] = 20.0
    join.expire()
    assert join.add_label("expired", Label(0, 0)) is None  # its prediction left: too late
    counts = join.counts()
    assert (counts["late_labels"], counts["too_late_labels"], counts["duplicate_labels"]) == (1, 1, 1)
    assert (counts["expired_labels"], counts["expired_predictions"]) == (1, 1)
    assert counts["pending_labels"] == counts["pending_predictions"] == 0


def _tracker(config: TrackerConfig, eval_error: float | None = None, eval_rows: int = 0) -> VersionTracker:
    rng = np.random.default_rng(0)
    tracker = VersionTracker("m", 1, config)
    tracker.set_reference(ModelReference(
        feature_names=("a", "b"),
        features={"a": Bins.from_json(reference_bins(rng.uniform(0, 1, 2000))),
                  "b": Bins.from_json(reference_bins(rng.uniform(0, 1, 2000)))},
        scores=Bins.from_json(reference_bins(rng.uniform(0, 1, 2000))),
        eval_error=eval_error, eval_rows=eval_rows))
    return tracker


def _fed(tracker: VersionTracker, wrong: np.ndarray) -> VersionTracker:
    for i, w in enumerate(wrong):
        tracker.add_outcome(Joined(f"e{i}", Predicted("m", 1, int(w)), Label(0, 1000 * i)))
        if i % 50 == 49:
            tracker.flush()
    return tracker


DEPLOYED = TrackerConfig(accuracy_window=200, psi_window=200, window_step=50, expected_run_length=50_000,
                         error_reference_samples=500, calibrate_adwin=False, calibration_streams=64)


@pytest.mark.parametrize("seed", range(4))
def test_a_version_deployed_into_a_drift_is_seen_against_its_held_out_error(seed):
    # Held out: 5 % errors on 400 rows; live: 40 % from its first labelled sample on. Nothing changes
    # within the live stream (ADWIN sees no change) and the CUSUMs would learn 40 % as normal.
    rng = np.random.default_rng(seed)
    tracker = _fed(_tracker(DEPLOYED, eval_error=0.05, eval_rows=400), rng.random(600) < 0.4)
    alert, = [a for a in tracker.alerts if a.signal == CONCEPT]
    assert alert.statistic == "cusum" and alert.change_sample <= 10
    assert alert.detected_sample <= 100  # checked as the reference fills, not once it is full
    assert "held-out error 0.050 (400 rows)" in alert.description and tracker.drift is not None
    assert tracker.cusum.p0 > 0.3  # what the CUSUMs learnt as normal: they alone would not fire
    # without a held-out error (an old metadata.json) there is nothing to compare with
    assert [a for a in _fed(_tracker(DEPLOYED), rng.random(600) < 0.4).alerts if a.signal == CONCEPT] == []


@pytest.mark.parametrize("seed", range(4))
def test_a_drift_beginning_in_the_first_samples_is_placed_where_it_began(seed):
    rng = np.random.default_rng(seed)
    tracker = _fed(_tracker(DEPLOYED, eval_error=0.05, eval_rows=400),
                   np.r_[rng.random(100) < 0.05, rng.random(500) < 0.4])
    cusum = [a for a in tracker.alerts if a.statistic == "cusum"]
    assert len(cusum) == 1 and abs(cusum[0].change_sample - 101) <= 30, cusum[0].description


@pytest.mark.parametrize("seed", range(4))
def test_a_version_as_good_live_as_held_out_raises_nothing_at_deployment(seed):
    rng = np.random.default_rng(seed)
    tracker = _fed(_tracker(DEPLOYED, eval_error=0.05, eval_rows=400), rng.random(600) < 0.05)
    assert [a for a in tracker.alerts if a.signal == CONCEPT] == []


def _requested_cusum_alert(rates: list[tuple[int, float]], ask_at: int, seed: int):
    """A tracker fed error rates segment by segment (samples, rate); its CUSUM alert is marked as
    asked for at sample `ask_at` (as the monitor does when it publishes the training request)."""
    config = TrackerConfig(accuracy_window=200, psi_window=200, window_step=50, expected_run_length=50_000,
                           error_reference_samples=300, calibrate_adwin=False, calibration_streams=64)
    tracker = _tracker(config)
    rng = np.random.default_rng(seed)
    wrong = np.concatenate([rng.random(n) < rate for n, rate in rates])
    for i, w in enumerate(wrong):
        tracker.add_outcome(Joined(f"e{i}", Predicted("m", 1, int(w)), Label(0, 1000 * i)))
        if i % 50 == 49:
            tracker.flush()
        if i == ask_at:
            alert = next(a for a in tracker.alerts if a.statistic == "cusum")
            alert.confirmed, alert.requested_refires, asked = True, alert.refires, alert.change_sample
    return alert, asked


@pytest.mark.parametrize("seed", range(5))
def test_a_lasting_drift_that_fires_again_after_its_request_keeps_its_start(seed):
    # 10 % errors, then 80 % from sample 1000 on; asked at 1200, refiring after since the CUSUM restarted.
    alert, asked = _requested_cusum_alert([(1000, 0.1), (1500, 0.8)], 1200, seed)
    assert alert.refires > alert.requested_refires  # it did fire again after the request
    assert abs(asked - 1000) <= 60 and alert.change_sample == asked


@pytest.mark.parametrize("seed", range(5))
def test_a_second_larger_rise_after_the_request_moves_the_change(seed):
    # 10 % -> 25 % at 1000 (asked for), then -> 80 % at 2000: a retry must start at the second rise.
    alert, asked = _requested_cusum_alert([(1000, 0.1), (1000, 0.25), (1000, 0.8)], 1990, seed)
    assert asked < 1900 and abs(alert.change_sample - 2000) <= 80, (asked, alert.change_sample)


def test_a_tracker_raises_one_alert_per_signal_while_the_drift_keeps_firing():
    config = TrackerConfig(accuracy_window=200, psi_window=200, window_step=50, expected_run_length=50_000,
                           error_reference_samples=300, calibrate_adwin=False, calibration_streams=64)
    tracker = _tracker(config)
    rng = np.random.default_rng(1)
    for i in range(3000):
        wrong = rng.random() < (0.1 if i < 1000 else 0.5 if i < 2000 else 0.8)
        tracker.add_outcome(Joined(f"e{i}", Predicted("m", 1, int(wrong)), Label(0, 1000 * i)))
        if i % 100 == 99:
            tracker.flush()
        if i == 1999:  # after the alarm the CUSUMs learnt the new regime as their reference
            assert tracker.cusum.p0 == pytest.approx(0.5, abs=0.07) and not tracker.cusum.learning
            assert tracker.drift is not None and abs(tracker.drift.event_time_ms - 1_000_000) <= 60_000
    concept = [a for a in tracker.alerts if a.signal == CONCEPT]
    cusum = [a for a in concept if a.statistic == "cusum"]
    assert len(cusum) == 1 and cusum[0].refires > 0  # it fired again on the further rise; still one alert
    assert abs(cusum[0].change_sample - 1001) <= 60 and cusum[0].value > cusum[0].threshold
    # the alert names the reference the rise was from, not the one learnt since
    assert float(cusum[0].description.split("over the reference ")[1].split()[0]) < 0.15
    assert tracker.drift is not None  # (ADWIN has since seen the second rise)
    tracker.add_predictions(rng.uniform(0, 1, (400, 2)), rng.uniform(0, 1, 400), 0, None)
    shifted = np.c_[rng.uniform(0, 1, 400), rng.uniform(0.5, 1.5, 400)]
    tracker.add_predictions(shifted, rng.uniform(0.6, 1.0, 400), 0, None)
    signals_seen = {(a.signal, tuple(a.features)) for a in tracker.alerts if a.active}
    assert (DATA, ("b",)) in signals_seen and (PREDICTION, (SCORE,)) in signals_seen
    assert (DATA, ("a",)) not in signals_seen
    report = tracker.report(0)
    assert report.prediction_drift and report.error_cusum_threshold > 0 and report.reference_error_rate > 0.6
    by_name = {f.feature: f for f in report.features}
    assert by_name["b"].drifted and by_name["b"].ks > by_name["b"].ks_threshold > 0
    assert not by_name["a"].drifted


def test_the_grafana_dashboard_is_fresh_and_reads_only_metrics_the_monitor_exports():
    import importlib.util
    import json
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    import services.monitor.metrics  # noqa: F401  (registers them)

    root = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
    spec = importlib.util.spec_from_file_location("build_dashboard", root / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((root / "driftline-monitor.json").read_text())
    assert committed == module.build(), "run deploy/grafana/build_dashboard.py"
    used = set(re.findall(r"driftline_monitor_[a-z_]+", json.dumps(committed)))
    exported = {name for metric in REGISTRY.collect() for name in
                [metric.name, metric.name + "_total"] if metric.name.startswith("driftline_monitor_")}
    assert used and used <= exported, used - exported
    assert len(committed["panels"]) >= 10


def test_the_error_reference_is_never_better_than_the_models_held_out_error():
    """A version's first labelled predictions may be of its own training rows (a backlog scored
    after it came up): their error is in-sample. metadata.json's held-out accuracy is the floor."""
    reference = ModelReference.from_metadata({
        "feature_names": ["a"], "reference": {"a": reference_bins([0.0, 1.0, 2.0, 3.0], bins=2)},
        "metrics": {"accuracy": 0.97, "eval_rows": 400, "train_rows": 1600}})
    assert reference.eval_error == pytest.approx(0.03) and reference.reference_rows == 1600
    in_sample = np.zeros(500, dtype=int)
    in_sample[::250] = 1  # 0.4 % errors on its training rows
    c = calibrate_cusum(in_sample, 20_000, floor=reference.eval_error)
    assert c.p0 == pytest.approx(0.03)
    # out-of-sample errors at the held-out rate raise no alarm against that floor...
    rng = np.random.default_rng(9)
    assert ErrorCusum(c.p0, c.threshold, c.shifts).update(rng.random(5000) < 0.03) == []
    # ...where the in-sample rate would have alarmed at once
    naive = calibrate_cusum(in_sample, 20_000)
    assert ErrorCusum(naive.p0, naive.threshold, naive.shifts).update(rng.random(5000) < 0.03)


def test_the_service_settings_run_the_detector_the_drift_bench_measures(monkeypatch):
    """bench/drift.py measures `TrackerConfig(expected_run_length=ert)`: the CUSUM bank, reference,
    guard and bootstrap size as TrackerConfig declares them. A monitor started from its settings
    must run the same (only the run length is the bench's own), and what the environment sets
    must reach the trackers."""
    from services.monitor.server import drift_monitor
    from services.monitor.settings import MonitorSettings

    served = drift_monitor(MonitorSettings(), producer=None, references=None).tracker_config
    measured = TrackerConfig(expected_run_length=served.expected_run_length)
    differ = {name for name in TrackerConfig.model_fields if getattr(served, name) != getattr(measured, name)}
    assert not differ, differ
    assert served.expected_run_length == 200_000 and served.calibration_streams == 256  # the deployed defaults
    monkeypatch.setenv("DRIFTLINE_EXPECTED_RUN_LENGTH", "5000")
    monkeypatch.setenv("DRIFTLINE_CUSUM_SHIFTS", "0.05,0.2")  # the comma form older deployments use
    served = drift_monitor(MonitorSettings(), producer=None, references=None).tracker_config
    assert (served.expected_run_length, served.cusum_shifts) == (5000, (0.05, 0.2))
    monkeypatch.setenv("DRIFTLINE_CUSUM_SHIFTS", "[0.1, 0.3]")
    assert MonitorSettings().tracker_config().cusum_shifts == (0.1, 0.3)


def test_a_setting_that_cannot_be_right_is_a_value_error_naming_it():
    from services.monitor.settings import MonitorSettings

    for setting, value in (("policy_signals", "concept_drift:cusm"), ("policy_signals", "data_drfit"),
                           ("cusum_shifts", "0.1,1.5"), ("cusum_shifts", "[]"), ("window_confirm", 0),
                           ("expected_run_length", -1)):
        with pytest.raises(ValueError, match=setting):
            MonitorSettings(**{setting: value})


@pytest.mark.parametrize("seed", range(3))
def test_an_alert_and_its_request_print_the_numbers_of_the_firing_that_raised_them(seed, monkeypatch):
    # 10 % -> 30 % (fires; the reference is learnt again from 300 samples, a high threshold, then
    # refined over thousands: a lower one) -> 60 % (fires again at the lower threshold). The alert once
    # kept its first threshold beside the latest value: "CUSUM 12.8 > threshold 24.01".
    fired: list = []
    update = ErrorCusum.update
    # (a batch's first alarm is the one the tracker raises)
    monkeypatch.setattr(ErrorCusum, "update", lambda self, errors: fired.extend((found := update(self, errors))[:1]) or found)
    config = TrackerConfig(accuracy_window=200, psi_window=200, window_step=50, expected_run_length=50_000,
                           error_reference_samples=300, calibrate_adwin=False, calibration_streams=64)
    rng = np.random.default_rng(seed)
    tracker = _tracker(config)
    for i, w in enumerate(np.concatenate([rng.random(1000) < 0.1, rng.random(5000) < 0.3, rng.random(1000) < 0.6])):
        tracker.add_outcome(Joined(f"e{i}", Predicted("m", 1, int(w)), Label(0, 1000 * i)))
        if i % 50 == 49:
            tracker.flush()
            for alert in tracker.alerts:
                assert alert.statistic != "cusum" or alert.value >= alert.threshold, alert.statistic_text()
    alert, = [a for a in tracker.alerts if a.statistic == "cusum"]
    assert alert.refires > 0 and len({round(a.threshold, 2) for a in fired}) > 1  # thresholds did move
    last = fired[-1]
    assert (alert.value, alert.threshold, alert.member) == (last.value, last.threshold, last.shift)
    policy = DriftPolicy(min_samples=0, cooldown_s=0, clock=lambda: 0.0)
    _, request = RetrainingTrigger(policy, "s", 100).consider(tracker)
    assert f"CUSUM {last.value:.4g} > threshold {last.threshold:.4g} (member +{last.shift:g})" in request.reason
