"""One check suite over every drift detector (as river/test_estimators.py checks every
estimator): each satisfies `alarms.Detector` — `update(batch) -> list[Alarm]`, `reset()` —
and behaves as the monitor relies on: quiet on an in-control stream at a calibrated level,
an alarm soon after an obvious shift, alarms whose fields agree, the same alarms however
the stream is batched, and a reset that forgets the evidence while positions keep counting."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import pytest

from services.monitor.alarms import Alarm, Detector
from services.monitor.calibration import calibrate_adwin, calibrate_cusum, calibrate_windows, refined_cusum
from services.monitor.detectors import ErrorRateChange
from services.monitor.signals import ErrorCusum, WindowDrift

ERT = 1_000_000  # a false alarm in the checks' few thousand in-control events is then a ~1 % event
P0, P1 = 0.1, 0.4  # the error rate in control, and after the shift
SHIFT_AT = 3000    # in-control events before the shift


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Detector]
    in_control: Callable[[np.random.Generator, int], np.ndarray]
    shifted: Callable[[np.random.Generator, int], np.ndarray]
    statistics: frozenset[str]
    over_threshold: bool = True      # an alarm's value exceeds its threshold (ADWIN's threshold is its delta)
    reset_is_fresh: bool = True      # after reset() it behaves as a new detector (a refined reference keeps p0)
    detected_within: int = 1000      # events after the shift by which the first alarm has come


def _errors(p: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: (rng.random(n) < p).astype(np.float64)


# The error streams' reference: 1000 labelled samples at exactly P0.
_REFERENCE_ERRORS = np.random.default_rng(100).permutation(np.r_[np.ones(100), np.zeros(900)])
# Windows: 3 numeric columns of uniform values against their deciles; the shift moves column 1.
_EDGES = [np.linspace(0, 1, 11)] * 3
_UNIFORM = np.full((3, 10), 0.1)
# A numeric column beside a categorical one (codes 0, 1, 2 and an unseen bucket); the shift swaps shares.
_SHARES = [0.5, 0.3, 0.2]
_MIXED_PROPORTIONS = np.array([[0.1] * 10, _SHARES + [0.0] * 7])
_CATEGORIES = [None, np.array([0.0, 1.0, 2.0])]


@functools.cache
def _calibrated(what: str):
    """Each detector's thresholds for ERT, bootstrapped once (as the tracker does per version)."""
    if what == "cusum":
        return calibrate_cusum(_REFERENCE_ERRORS, ERT, streams=256)
    if what == "adwin":
        return calibrate_adwin(_REFERENCE_ERRORS, ERT, length=60_000)
    if what == "numeric":
        return calibrate_windows(_UNIFORM, 400, 50, ERT, confirm=2, streams=512, reference_rows=10_000)
    return calibrate_windows(_MIXED_PROPORTIONS, 400, 50, ERT, confirm=2, streams=512, reference_rows=10_000,
                             categorical=np.array([c is not None for c in _CATEGORIES]))


def _cusum() -> ErrorCusum:
    c = _calibrated("cusum")
    return ErrorCusum(c.p0, c.threshold, c.shifts)


def _numeric_windows() -> WindowDrift:
    c = _calibrated("numeric")
    return WindowDrift(["a", "b", "c"], _EDGES, _UNIFORM, window=400, step=50, psi_threshold=c.psi,
                       ks_threshold=c.ks, confirm=2)


def _mixed_windows() -> WindowDrift:
    c = _calibrated("mixed")
    return WindowDrift(["x", "code"], [_EDGES[0], None], _MIXED_PROPORTIONS, window=400, step=50,
                       psi_threshold=c.psi, ks_threshold=c.ks, js_threshold=c.js, confirm=2, categories=_CATEGORIES)


def _uniform_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 1, (n, 3))


def _moved_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.uniform(0, 1, (n, 3))
    rows[:, 1] = rng.uniform(0.4, 1.4, n)
    return rows


def _mixed_rows(shares: list[float]) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: np.c_[rng.uniform(0, 1, n), rng.choice(3, n, p=shares)]


CASES = [
    Case("cusum", _cusum, _errors(P0), _errors(P1), frozenset({"cusum"})),
    Case("cusum-refined", lambda: refined_cusum(_REFERENCE_ERRORS, ERT, streams=128, relearn=500),
         _errors(P0), _errors(P1), frozenset({"cusum"}), reset_is_fresh=False),
    Case("adwin", lambda: ErrorRateChange(_calibrated("adwin")), _errors(P0), _errors(P1), frozenset({"adwin"}),
         over_threshold=False),
    Case("window-numeric", _numeric_windows, _uniform_rows, _moved_rows, frozenset({"ks", "psi"})),
    Case("window-categorical", _mixed_windows, _mixed_rows(_SHARES), _mixed_rows(_SHARES[::-1]),
         frozenset({"ks", "js", "psi"})),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param


def _stream(case: Case, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SHIFT_AT in-control events, then as many shifted ones."""
    rng = np.random.default_rng(seed)
    return case.in_control(rng, SHIFT_AT), case.shifted(rng, SHIFT_AT)


def _fed(detector: Detector, stream: np.ndarray, batch: int = 100) -> list[Alarm]:
    alarms: list[Alarm] = []
    for start in range(0, len(stream), batch):
        alarms += detector.update(stream[start:start + batch])
    return alarms


def test_every_detector_satisfies_the_interface(case):
    detector = case.make()
    assert isinstance(detector, Detector)
    assert detector.update(case.in_control(np.random.default_rng(0), 0)) == []  # an empty batch


@pytest.mark.parametrize("seed", range(3))
def test_no_alarm_on_an_in_control_stream_at_a_calibrated_level(case, seed):
    detector = case.make()
    assert _fed(detector, case.in_control(np.random.default_rng(seed), 2 * SHIFT_AT)) == []


@pytest.mark.parametrize("seed", range(3))
def test_an_obvious_shift_alarms_soon_after_it(case, seed):
    before, after = _stream(case, seed)
    detector = case.make()
    assert _fed(detector, before) == []
    alarms = _fed(detector, after)
    assert alarms, case.name
    assert SHIFT_AT < alarms[0].detected_sample <= SHIFT_AT + case.detected_within


def test_alarm_fields_are_consistent(case):
    before, after = _stream(case, 1)
    detector = case.make()
    alarms = _fed(detector, np.concatenate([before, after]))
    assert alarms
    for alarm in alarms:
        assert isinstance(alarm, Alarm) and alarm.statistic in case.statistics
        assert 1 <= alarm.change_sample <= alarm.detected_sample <= 2 * SHIFT_AT
        assert math.isfinite(alarm.value) and math.isfinite(alarm.threshold) and alarm.threshold > 0
        if case.over_threshold:
            assert alarm.value >= alarm.threshold
    detected = [a.detected_sample for a in alarms]
    assert detected == sorted(detected)  # oldest first


def _same(a: list[Alarm], b: list[Alarm]) -> bool:
    """The same alarms: positions and names exactly, values up to float rounding (a batch's
    cumulative sums are summed in another order)."""
    def values(alarm: Alarm) -> list:
        return [getattr(alarm, f.name) for f in fields(alarm)]
    return len(a) == len(b) and all(
        type(x) is type(y) and values(y) == [pytest.approx(v, rel=1e-9) if isinstance(v, float) else v
                                            for v in values(x)] for x, y in zip(a, b))


def test_batching_does_not_change_the_alarms(case):
    stream = np.concatenate(_stream(case, 2))
    whole = case.make().update(stream)
    uneven = case.make()
    batched: list[Alarm] = []
    for part in np.array_split(stream, 37):  # uneven batches, alarms inside them
        batched += uneven.update(part)
    one_by_one = case.make()
    single = one_by_one.update(stream[:SHIFT_AT - 50])
    for i in range(SHIFT_AT - 50, SHIFT_AT + 400):  # one event at a time around the shift
        single += one_by_one.update(stream[i:i + 1])
    single += one_by_one.update(stream[SHIFT_AT + 400:])
    assert whole and _same(whole, batched) and _same(whole, single)


def test_reset_forgets_the_shift_and_positions_keep_counting(case):
    before, after = _stream(case, 3)
    detector = case.make()
    assert _fed(detector, before) == [] and _fed(detector, after)
    detector.reset()
    rng = np.random.default_rng(30)
    assert _fed(detector, case.in_control(rng, SHIFT_AT)) == []  # back in control: nothing to see
    again = _fed(detector, case.shifted(rng, SHIFT_AT))
    assert again and again[0].detected_sample > 3 * SHIFT_AT


# A refined CUSUM keeps the reference it has learnt over a reset (by design), so it is not a new one.
FRESH_AFTER_RESET = [c for c in CASES if c.reset_is_fresh]


@pytest.mark.parametrize("case", FRESH_AFTER_RESET, ids=[c.name for c in FRESH_AFTER_RESET])
def test_a_reset_detector_alarms_like_a_new_one(case):
    before, after = _stream(case, 4)
    rng = np.random.default_rng(40)
    evidence = np.concatenate([case.in_control(rng, 500), case.shifted(rng, 150)])  # a shift under way
    used = case.make()
    _fed(used, evidence)
    used.reset()
    fresh = case.make()
    stream = np.concatenate([before, after])
    reset_alarms, fresh_alarms = _fed(used, stream), _fed(fresh, stream)
    assert fresh_alarms
    offset = len(evidence)
    assert [(a.change_sample - offset, a.detected_sample - offset, a.statistic) for a in reset_alarms] == \
        [(a.change_sample, a.detected_sample, a.statistic) for a in fresh_alarms]
