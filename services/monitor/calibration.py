"""Thresholds for a target false-alarm rate, by bootstrap on reference data.

A detector that runs forever on a stationary stream raises false alarms now and
then; what a threshold can set is how often. As Alibi Detect does, the target is
an *expected run length* (ERT): the mean number of events between two false
alarms. A run length of a well-behaved sequential test is close to geometric, so
the chance that a stream of `L` stationary events passes without an alarm is
about ``exp(-L / ERT)``; the threshold is therefore the ``exp(-L / ERT)``
quantile of the largest statistic each of `B` simulated stationary streams
reaches. The streams are bootstrapped from the reference the model was trained
on (its decile histograms) or from its first labelled predictions (the error
stream), never hand-picked constants.

Everything here is vectorised over streams × events with numpy: a CUSUM bank's calibration
takes about 0.2 s, a deployed version's data-drift windows (256 streams × 5,000
events per feature) a few hundred milliseconds, on the monitor's own thread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .categorical import js_distance
from .signals import (CUSUM_GUARD, CUSUM_SHIFTS, ErrorCusum, cusum_coefficients, cusum_level, cusum_path,
                      cusum_thresholds,
                      window_statistics)


def no_alarm_quantile(length: int, ert: float) -> float:
    """The quantile of the per-stream maximum that leaves a stream of `length` events
    alarm-free with probability exp(-length / ert).

    >>> round(no_alarm_quantile(1000, 10_000), 4)
    0.9048
    """
    if ert <= 0:
        raise ValueError("the expected run length must be positive")
    return math.exp(-length / ert)


def _quantile(maxima: np.ndarray, q: float) -> float:
    return float(np.quantile(maxima, q, method="higher"))


@dataclass(frozen=True)
class CusumCalibration:
    p0: float
    shifts: tuple[float, ...]
    threshold: float   # on the `cusum_level` scale (log in-control run length); ErrorCusum's threshold
    ert: float


def calibrate_cusum(reference_errors: Sequence[int] | np.ndarray, ert: float,
                    shifts: Sequence[float] = CUSUM_SHIFTS, *, streams: int = 256,
                    length: int = 3000, seed: int = 0, floor: float = 0.0) -> CusumCalibration:
    """The threshold of a bank of Bernoulli CUSUMs (one per error-rate increase in `shifts`)
    for the expected run length `ert`, in labelled samples, against the reference's error
    rate p̂ (never under `floor`): `cusum_bootstrap_level` for p̂ and the reference's size.

    >>> rng = np.random.default_rng(1)
    >>> c = calibrate_cusum(rng.random(500) < 0.1, ert=5000)
    >>> 0.5 * math.log(5000) < c.threshold < 1.5 * math.log(5000), round(c.p0, 2)
    (True, 0.1)
    >>> round(calibrate_cusum(rng.random(500) < 0.01, ert=5000, floor=0.05).p0, 2)
    0.05
    """
    errors = np.asarray(reference_errors, dtype=np.float64)
    if errors.size < 20:
        raise ValueError("at least 20 reference samples are needed")
    # a reference better than the model's held-out error is in-sample: use the latter
    p0 = max(float(errors.mean()), float(floor))
    shifts = tuple(float(s) for s in shifts)
    threshold = cusum_bootstrap_level(p0, errors.size, ert, shifts, streams=streams, length=length, seed=seed)
    return CusumCalibration(p0, shifts, threshold, ert)


def cusum_bootstrap_level(p0: float, samples: int, ert: float, shifts: Sequence[float] = CUSUM_SHIFTS, *,
                          streams: int = 256, length: int = 3000, seed: int = 0, stratum: int = 16) -> float:
    """The level (`cusum_level` scale; ErrorCusum's threshold) of a bank whose reference
    error rate p0 was estimated from `samples` labelled samples, for the run length `ert`.

    The level is one LLR threshold per member with (approximately) equal shares of the false
    alarms; the bootstrap runs every member on the same streams and takes the bank's first
    alarm (any member over its threshold), so the members' correlation and the
    approximation's own error are allowed for, and the bank as a whole keeps the rate.

    Parametric bootstrap: the stationary streams are Bernoulli(p0), and each stream's
    detector is built on its own p̂* ~ Binomial(samples, p0) / samples — exactly the mean of
    a with-replacement resample of a 0/1 reference with that rate — so the level allows for
    the error in estimating p0, the part of a false alarm a fixed threshold forgets. That
    allowance shrinks as the sample grows: a refined reference (`refined_cusum`) asks again
    each time its in-control count doubles.

    What the level keeps is the *mean alarm rate* over those detectors, 1 / `ert` — what a
    deployed detector raises, every alarm counted (after one its CUSUMs restart from zero
    with the same p0, and it fires again as soon as it crosses again). The rate is not the
    same for every p̂*: one that came out low alarms far more often than one that came out
    high, and the mean is set by the low ones. So the streams are grouped by p̂* into strata
    of `stratum` streams, each stratum's rate is its alarms over its samples until the first
    alarm (the censored exponential estimate of 1 / run length, for a detector that restarts
    at each alarm), and the level is the lowest whose mean rate over the strata is at most
    1 / `ert`. (Asking that a stream of `length` samples pass alarm-free with probability
    exp(−length / ert), the rule before, holds the time to a *first* alarm averaged over
    p̂*; at ert < 1.44·length that quantile is under the median, where mixing the p̂* in
    lowered the level, and detectors whose p̂* came out low raised ~1.5× the alarms the
    rate allows: 74 per 100k instead of 50 at ert 2,000 from 1,000 samples.)

    >>> levels = [cusum_bootstrap_level(0.1, n, 5000) for n in (500, 8000)]
    >>> levels[0] > levels[1] > math.log(5000)
    True

    The allowance raises the level at a run length shorter than the streams too (the quantile
    rule gave 7.99 and 8.13 from 500 and 1,000 samples here, under the 8.30 of a known rate):

    >>> known = cusum_bootstrap_level(0.1, 10**9, 2000)
    >>> [cusum_bootstrap_level(0.1, n, 2000) > known for n in (500, 1000)]
    [True, True]
    """
    rng = np.random.default_rng(seed)
    shifts = tuple(float(s) for s in shifts)
    resampled = rng.binomial(samples, _clip(p0), size=streams) / samples
    a, b = cusum_coefficients(resampled, shifts)                           # (B, J) each
    x = (rng.random((streams, length)) < _clip(p0)).astype(np.float32)   # (B, L)
    # Per member, the running maximum of its CUSUM along each stream: the first alarm at an
    # LLR threshold h is the first sample whose running maximum exceeds h (it only grows).
    peaks = np.empty((len(shifts), streams, length), dtype=np.float32)
    for j in range(len(shifts)):  # one member at a time: (B, L) arrays, not (B, L, J)
        peaks[j] = np.maximum.accumulate(cusum_path(x, a[:, j:j + 1], b[:, j:j + 1])[..., 0], axis=1)
    tops = peaks[:, :, -1].T                                               # (B, J) each stream's maxima
    strata = np.argsort(resampled, kind="stable")
    strata = strata[:len(strata) // max(1, min(stratum, streams)) * max(1, min(stratum, streams))]
    strata = strata.reshape(-1, max(1, min(stratum, streams)))             # (K, m) streams by p̂*

    def rate(level: float) -> float:
        h = cusum_thresholds(resampled, shifts, level)                      # (B, J) LLR thresholds
        # samples read before the first alarm: the count of running maxima at or under h, per member
        before = np.where(tops > h, (peaks <= h.T[:, :, None]).sum(axis=2).T, length).min(axis=1)  # (B,)
        alarmed = before < length
        exposure = np.where(alarmed, before + 1, length)
        return float((alarmed[strata].sum(axis=1) / exposure[strata].sum(axis=1)).mean())

    target = 1.0 / ert
    lo = 0.0
    hi = float(cusum_level(tops, resampled, shifts).max()) + 1e-6  # over every maximum: no alarm at all
    if rate(lo) <= target:
        return lo
    for _ in range(100):  # bounded: a bisection from a non-finite `hi` never ended (a monitor hung so)
        if hi - lo <= 1e-3:
            break
        mid = 0.5 * (lo + hi)  # the rate only falls as the level rises
        if rate(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def refined_cusum(reference_errors: Sequence[int] | np.ndarray, ert: float,
                  shifts: Sequence[float] = CUSUM_SHIFTS, *, guard: int = CUSUM_GUARD, relearn: int = 0,
                  streams: int = 256, length: int = 3000, seed: int = 0, floor: float = 0.0) -> ErrorCusum:
    """The monitor's concept-drift detector: a bank calibrated for `ert` on the reference,
    whose reference is then refined from the stream (`ErrorCusum.refined`), with the level
    bootstrapped again (`cusum_bootstrap_level`, same seed) each time the in-control count
    doubles; `relearn` samples make a new reference after an alarm (default: as many as
    this one). A few bootstraps of tens of milliseconds over a stream's life.

    With 500 samples the error of p0 calls for a much higher level than with 3000:

    >>> rng = np.random.default_rng(3)
    >>> det = refined_cusum(rng.random(500) < 0.1, ert=20_000, streams=64)
    >>> first = det.threshold
    >>> det.update(rng.random(3000) < 0.1), det.in_control[0], round(first, 1), round(det.threshold, 1)
    ([], 3000, 14.9, 11.3)
    """
    errors = np.asarray(reference_errors, dtype=np.float64)
    if errors.size < 20:
        raise ValueError("at least 20 reference samples are needed")
    shifts = tuple(float(s) for s in shifts)
    # A partial of a module function, not a closure: the detector is pickled with the monitor's state.
    bootstrap = functools.partial(cusum_bootstrap_level, ert=ert, shifts=shifts, streams=streams, length=length,
                                  seed=seed)
    return ErrorCusum.refined(errors, bootstrap, shifts, guard=guard, relearn=relearn, floor=floor)


def _clip(p: float | np.ndarray):
    return np.clip(p, 0.005, 0.995)


@dataclass(frozen=True)
class WindowCalibration:
    psi: np.ndarray   # (F,) thresholds
    ks: np.ndarray    # (F,); 0 for categorical features
    window: int
    step: int
    confirm: int
    ert: float
    js: np.ndarray | None = None  # (F,) Jensen–Shannon thresholds of categorical features; 0 for numeric


def calibrate_windows(proportions: np.ndarray, window: int, step: int, ert: float, confirm: int = 1, *,
                      streams: int = 128, length: int | None = None, seed: int = 0,
                      reference_rows: int = 0, categorical: np.ndarray | None = None) -> WindowCalibration:
    """PSI and KS thresholds per feature for sliding windows of `window` values tested every
    `step` values; an alarm needs `confirm` consecutive tests over the threshold (hysteresis).
    For the features `categorical` marks (F,) the distance is the Jensen–Shannon distance
    (`js`) instead of KS, calibrated the same way: their bins are the categories and the unseen
    bucket, whose reference share is 0, so stationary streams never draw it.

    `proportions` is (F, K): each feature's reference bin proportions (zero-padded to K bins).
    The stationary streams are drawn from the binned reference itself, so the statistic's
    null distribution is exact for the bins the monitor compares. `ert` is for the whole
    family: each of the 2·F statistics gets ert·2F (a Bonferroni split of the alarm rate).
    `reference_rows` (the rows the reference bins were counted on, when known) makes the
    bootstrap allow for the reference's own sampling error: each simulated stream is compared
    with its own multinomial resample of the reference proportions.

    >>> p = np.full((2, 10), 0.1)
    >>> c = calibrate_windows(p, window=200, step=50, ert=10_000, streams=64)
    >>> c.ks.shape, bool((c.ks > 0.05).all() and (c.ks < 0.3).all())
    ((2,), True)
    >>> p = np.array([[0.1] * 10, [0.6, 0.3, 0.1] + [0] * 7])  # a numeric feature and a categorical one
    >>> c = calibrate_windows(p, window=200, step=50, ert=10_000, streams=64, categorical=np.array([False, True]))
    >>> bool(c.ks[0] > 0 and c.ks[1] == 0 and c.js[0] == 0 and 0.02 < c.js[1] < 0.3)
    True
    """
    proportions = np.asarray(proportions, dtype=np.float64)
    n_features, n_bins = proportions.shape
    length = length or window + 40 * step
    rng = np.random.default_rng(seed)
    tests = np.arange(window, length + 1, step)
    per_statistic_ert = ert * 2 * n_features
    q = no_alarm_quantile(len(tests) * step, per_statistic_ert)
    psi_thr, ks_thr, js_thr = np.empty(n_features), np.zeros(n_features), np.zeros(n_features)
    categorical = np.zeros(n_features, bool) if categorical is None else np.asarray(categorical, bool)
    for f in range(n_features):
        p = proportions[f] / proportions[f].sum()
        counts = window_counts(rng.choice(n_bins, size=(streams, length), p=p), n_bins, tests, window)  # (B, T, K)
        reference = p
        if reference_rows:
            reference = (rng.multinomial(reference_rows, p, size=streams) / reference_rows)[:, None, :]
        psi, ks = window_statistics(counts, reference)                          # (B, T) each
        psi_thr[f] = _quantile(_confirmed_max(psi, confirm), q)
        if categorical[f]:
            js_thr[f] = _quantile(_confirmed_max(js_distance(counts, reference), confirm), q)
        else:
            ks_thr[f] = _quantile(_confirmed_max(ks, confirm), q)
    return WindowCalibration(psi_thr, ks_thr, window, step, confirm, ert, js_thr)


def window_counts(bins: np.ndarray, n_bins: int, tests: np.ndarray, window: int) -> np.ndarray:
    """(B, T, K) counts of each bin in every stream's window [t - window, t), for each t in `tests`,
    from `bins` (B, L), each stream's bin per event. One bincount over the stretches between the
    window edges, then prefix sums at those edges only: a (B, L, K) cumulative array would be
    tens of millions of cells for a deployed calibration, and most of the monitor's time.

    >>> window_counts(np.array([[0, 1, 1, 2, 0, 0]]), 3, np.array([3, 6]), 3).tolist()
    [[[1, 2, 0], [2, 0, 1]]]
    """
    streams, length = bins.shape
    edges = np.unique(np.concatenate([tests - window, tests]))
    stretch = np.searchsorted(edges, np.arange(length), side="right")  # events before edges[0]: stretch 0
    n_stretches = len(edges) + 1
    keys = (np.arange(streams)[:, None] * n_stretches + stretch) * n_bins + bins
    per_stretch = np.bincount(keys.ravel(), minlength=streams * n_stretches * n_bins)
    prefix = per_stretch.reshape(streams, n_stretches, n_bins).cumsum(axis=1)  # [:, i]: events before edges[i]
    position = {edge: i for i, edge in enumerate(edges.tolist())}
    hi = [position[t] for t in tests.tolist()]
    lo = [position[t - window] for t in tests.tolist()]
    return (prefix[:, hi] - prefix[:, lo]).astype(np.int32)


def _confirmed_max(stat: np.ndarray, confirm: int) -> np.ndarray:
    """Per stream, the highest level that `confirm` consecutive tests all exceed."""
    if confirm > 1:
        stat = np.lib.stride_tricks.sliding_window_view(stat, confirm, axis=1).min(axis=2)
    return stat.max(axis=1)


def calibrate_adwin(reference_errors: Sequence[int] | np.ndarray, ert: float,
                    deltas: Sequence[float] = (0.1, 0.03, 0.01, 0.002, 5e-4, 1e-4, 1e-5), *,
                    length: int | None = None, seed: int = 0) -> float:
    """The largest ADWIN delta (the most sensitive) whose false alarms on bootstrap
    resamples of the reference error stream stay at or under one per `ert` samples.

    river's ADWIN runs per event in Python, so this simulates only `length` samples
    (2·ert, at most 20,000) per delta — a coarse calibration, and said to be one.
    """
    from river import drift

    errors = np.asarray(reference_errors, dtype=np.int64)
    rng = np.random.default_rng(seed)
    length = length or int(min(2 * ert, 20_000))
    stream = rng.choice(errors, size=length, replace=True).tolist()
    allowed = length / ert
    for delta in deltas:
        adwin, alarms = drift.ADWIN(delta=delta), 0
        for e in stream:
            adwin.update(e)
            if adwin.drift_detected:
                alarms += 1
                if alarms > allowed:
                    break
        if alarms <= allowed:
            return float(delta)
    return float(deltas[-1])
