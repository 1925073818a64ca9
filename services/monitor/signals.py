"""Streaming drift signals, vectorised with numpy over batches and sliding windows.

* `ErrorCusum` — concept drift: a bank of Bernoulli CUSUMs over the 0/1 error
  stream, one per size of error-rate increase, against the error rate of the
  version's reference (its first labelled predictions). CUSUM is the optimal
  sequential test for a change of known size (Lorden, Moustakides); a bank spaced
  about ×2 apart, from a rise of 0.01 to 0.4, covers unknown sizes, small ones
  included: a gradual drift is a long run of small rises before it is a large one.
  Each member has its own threshold. One threshold over the bank's raw maximum
  would be set by the large-shift members (their log-likelihood ratios jump by
  ~1.6 per error and reach ~6 on stationary data within a few thousand samples,
  where a 0.01-member barely reaches 1), which leaves the small-shift members
  deaf. So every member's value is put on a common scale, the log of the
  in-control run length at which that value is its threshold (Siegmund's
  approximation, `cusum_level`), and one threshold on that scale — calibrated by
  the bootstrap — gives each member an equal share of the false-alarm budget.
  A whole batch is updated at once: with C the cumulative log-likelihood ratio,
  the Lindley recursion S_t = max(0, S_{t-1} + x_t) has the closed form
  S_t = C_t - min(-S_0, min_{s<=t} C_s). The change point is the most likely of
  the members' last departures from zero: the one whose errors since then have
  the largest generalised likelihood ratio n·KL(p̂ ‖ p0) (a small-shift member that
  crosses first may have left zero long before an abrupt change).
  The reference is refined from the stream (`ErrorCusum.refined`): p0 is re-estimated
  from every labelled sample seen since the reference (re)started and no alarm, except
  the last `guard` ones (so a slow drift in progress is not learnt as normal). A few
  hundred reference samples leave p0 an error as large as the smallest shifts, and the
  bootstrap must allow for it with higher thresholds; thousands of in-control samples
  make both the error and the allowance small. p0, the coefficients and the members'
  thresholds follow the estimate each time the in-control count grows by 1/8; the level
  is bootstrapped again, for the current count, each time it doubles. After an alarm the
  reference restarts: the new regime is learnt from the samples that follow, while the
  old reference keeps watching.
* `WindowDrift` — data and prediction drift: a ring buffer of the last `window`
  rows' reference-bin indices per feature; every `step` rows one bincount gives
  every feature's histogram, and from it PSI and the two-sample Kolmogorov–Smirnov
  distance against the reference's binned CDF (the reference is stored binned,
  so KS is evaluated at its bin edges); for a categorical feature (its reference lists
  categories) the bins are its categories plus an unseen bucket, and the Jensen–Shannon
  distance takes KS's place (`categorical.py`). `confirm` consecutive tests over the
  threshold raise an alarm; it clears once `confirm` tests fall under
  `clear_ratio` × threshold (hysteresis).

Thresholds come from `calibration.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.reference import bin_indices, category_indices

from .alarms import Alarm
from .categorical import js_distance

EPSILON = 1e-4
# The monitor's bank (TrackerConfig.cusum_shifts): rises of the error rate over the reference's.
CUSUM_SHIFTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
OVERSHOOT = 1.166  # Siegmund's correction for the overshoot of the threshold, in standard deviations
# A refined reference (ErrorCusum.refined): p0 follows the in-control sample whenever it has grown
# by this factor (the estimate's standard error then falls ~6 %, a fraction of itself, per step;
# geometric, so a long stream costs a few dozen cheap updates); the level is bootstrapped again
# each time the count doubles (the bootstrap costs a few hundred milliseconds).
CUSUM_REFRESH = 1.125
CUSUM_GUARD = 500  # the latest samples kept out of the in-control estimate


def cusum_coefficients(p0, shifts: Sequence[float]):
    """Log-likelihood-ratio increments (a for an error, b for a right answer) of
    H1: p0 + shift against H0: p0; `p0` may be an array (one per simulated stream)."""
    p0 = np.clip(np.asarray(p0, dtype=np.float64), 0.005, 0.995)[..., None]
    p1 = np.clip(p0 + np.asarray(shifts), 0.006, 0.999)
    return np.log(p1 / p0), np.log((1 - p1) / (1 - p0))


def _kl_and_overshoot(p0, shifts: Sequence[float]):
    """Per member: I = KL(p0 ‖ p1), the in-control drift of its log-likelihood ratio per
    sample (negated), and the overshoot correction 1.166·σ (σ: the increment's sd)."""
    a, b = cusum_coefficients(p0, shifts)
    p = np.clip(np.asarray(p0, dtype=np.float64), 0.005, 0.995)[..., None]
    return -(p * a + (1 - p) * b), OVERSHOOT * np.sqrt(p * (1 - p)) * (a - b)


_LOG_EXACT_BELOW = 30.0


def cusum_level(s, p0, shifts: Sequence[float]) -> np.ndarray:
    """CUSUM values `s` (..., J) on a scale common to the bank: log ARL0(s), the log of the
    in-control average run length of the member whose threshold is s. Siegmund's
    approximation for a CUSUM of log-likelihood ratios (their exponential tilt under H0 is 1):
    ARL0(h) ≈ (e^h' − h' − 1) / I with h' = h + 1.166·σ. It is monotone in s, so a level
    threshold is one LLR threshold per member. For p0 = 0.1 and this bank its thresholds are
    within about 0.2 of simulated ones at run lengths 2,000–20,000 (members with the same
    level get nearly the same share of the false alarms); the bootstrap sets the level itself.

    >>> [round(float(v), 1) for v in cusum_level(np.array([1.15, 5.7]), 0.1, [0.01, 0.4])]
    [7.6, 7.5]
    """
    kl, overshoot = _kl_and_overshoot(p0, shifts)
    h = np.asarray(s, dtype=np.float64) + overshoot
    # log(e^h - h - 1) is h to within e^-30 beyond h = 30, where e^h would overflow at 710: a
    # CUSUM on a reference rate estimated from a few samples climbs that far in 3,000.
    small = np.minimum(h, _LOG_EXACT_BELOW)
    return np.where(h > _LOG_EXACT_BELOW, h, np.log(np.expm1(small) - small)) - np.log(kl)


def cusum_thresholds(p0, shifts: Sequence[float], level: float) -> np.ndarray:
    """Each member's LLR threshold at `level` on the `cusum_level` scale (its inverse):
    solves e^u − u − 1 = I·e^level by Newton's method (convex, from the right), h = u − 1.166σ.

    >>> [round(float(h), 2) for h in cusum_thresholds(0.1, [0.01, 0.05, 0.4], np.log(2000))]
    [1.13, 3.1, 5.84]
    """
    kl, overshoot = _kl_and_overshoot(p0, shifts)
    log_y = np.log(kl) + level
    y = np.exp(np.minimum(log_y, _LOG_EXACT_BELOW))
    u = np.log1p(y) + 1.0  # e^u − u − 1 >= y here
    for _ in range(60):
        u = u - (np.expm1(u) - u - y) / np.expm1(u)
    u = np.where(log_y > _LOG_EXACT_BELOW, log_y, u)  # there u = log y to within e^-30 (cusum_level)
    return np.maximum(u - overshoot, 1e-9)


def cusum_path(x: np.ndarray, a: np.ndarray, b: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """CUSUM values after each event. x: (..., L) 0/1; a, b: (..., J); start: (..., J).
    Returns (..., L, J).

    >>> a, b = cusum_coefficients(0.1, [0.3])
    >>> s = cusum_path(np.array([0, 0, 1, 1, 1, 0], dtype=float), a, b)
    >>> [round(float(v), 2) for v in s[:, 0]]
    [0.0, 0.0, 1.39, 2.77, 4.16, 3.75]
    """
    increments = x[..., :, None] * a[..., None, :] + (1 - x[..., :, None]) * b[..., None, :]
    c = np.cumsum(increments, axis=-2)
    floor = np.minimum.accumulate(c, axis=-2)
    s0 = np.zeros_like(a) if start is None else start
    return c - np.minimum(floor, -s0[..., None, :])


def window_statistics(counts: np.ndarray, reference: np.ndarray):
    """PSI and KS of bin counts (..., K) against reference proportions (K,) or (..., K)."""
    n = counts.sum(axis=-1, keepdims=True)
    current = counts / np.maximum(n, 1)
    ref = np.maximum(reference, EPSILON)
    cur = np.maximum(current, EPSILON)
    psi = ((cur - ref) * np.log(cur / ref)).sum(axis=-1)
    ks = np.abs(np.cumsum(current, axis=-1) - np.cumsum(reference, axis=-1)).max(axis=-1)
    return psi, ks


def _glr(rate: np.ndarray, n: np.ndarray, p0: float) -> np.ndarray:
    """n·KL(rate ‖ p0) where the rate is above p0, else 0: the log-likelihood ratio of n
    samples at their own error rate against the reference's."""
    p = np.clip(rate, 1e-9, 1 - 1e-9)
    q = float(np.clip(p0, 0.005, 0.995))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    return np.where((rate > q) & (n > 0), n * kl, 0.0)


def glr_change(errors, p0: float) -> int:
    """Where in `errors` (0/1, oldest first) a rise above the reference rate p0 most likely
    began: the start of the suffix with the largest log-likelihood ratio at its own rate
    against p0 (the GLR change-point estimate). A bank member's last zero, found on the
    way, is only bounded by the member's shift: a small member climbs through a slow
    drift's early noise and may have left zero long before the errors rose.

    >>> errors = np.r_[np.zeros(900), np.ones(40), np.zeros(60), np.ones(50)]
    >>> int(glr_change(errors, 0.05))
    900
    >>> int(glr_change(np.zeros(10), 0.05))  # nothing rose: the start
    0
    """
    x = np.asarray(errors, dtype=np.float64).ravel()
    if x.size == 0:
        return 0
    n = np.arange(x.size, 0, -1, dtype=np.float64)  # suffix lengths
    k = np.cumsum(x[::-1])[::-1]                     # suffix error counts
    return int(np.argmax(_glr(k / n, n, p0)))


@dataclass(kw_only=True)
class CusumAlarm(Alarm):
    """value: the alarming member's level (log in-control run length, `cusum_level`), threshold: the
    level threshold; change_sample: where the most likely member last left zero."""
    statistic: str = "cusum"
    shift: float
    llr: float = 0.0       # the member's CUSUM (log-likelihood ratio) ...
    llr_threshold: float = 0.0  # ... and its own threshold
    p0: float = 0.0        # the reference error rate it rose from (a refined reference restarts after it)


class ErrorCusum:
    """A bank of Bernoulli CUSUMs with one threshold `threshold` on the `cusum_level` scale
    (log in-control run length), i.e. one LLR threshold per member (`thresholds`).

    The level is per member; the bank, six members wide, needs about log(ERT) + 2
    (`calibrate_cusum` finds it; 12 is about what it gives for ERT 20,000).

    Built with `ErrorCusum(p0, threshold)`, the reference is fixed and after an alarm only
    the CUSUMs restart. `ErrorCusum.refined` (what the monitor runs) refines it from the
    stream and restarts it after an alarm (see there).

    >>> rng = np.random.default_rng(3)
    >>> det = ErrorCusum(p0=0.1, threshold=12.0)
    >>> det.update(rng.random(2000) < 0.1)
    []
    >>> alarm = det.update(rng.random(500) < 0.4)[0]
    >>> 1990 <= alarm.change_sample <= 2030 and alarm.detected_sample < 2100, alarm.shift
    (True, 0.4)
    """

    def __init__(self, p0: float, threshold: float, shifts: Sequence[float] = CUSUM_SHIFTS) -> None:
        self.shifts = tuple(shifts)
        self._set(p0, threshold)
        self.s = np.zeros(len(self.shifts))
        self.left_zero = np.zeros(len(self.shifts), dtype=np.int64)  # sample count when each was last 0
        self.left_zero_errors = np.zeros(len(self.shifts))  # ... and the error count then
        self.samples = 0
        self.errors = 0.0
        # A refined reference (`refined`); with bootstrap None the reference is fixed.
        self.bootstrap: Callable[[float, int], float] | None = None
        self.floor, self.guard, self.relearn = 0.0, 0, 0
        self._t, self._k = 0, 0.0       # samples and errors since the reference (re)started
        self._tail = np.zeros(0)        # the last `guard` of them
        self._reference = 0             # the reference's size: in control from the start
        self._bootstrapped = self._refreshed = 0  # in-control counts at the last bootstrap / p0 update
        self._next = 0                  # `_t` at the next update (or at the end of the reference)

    def _set(self, p0: float, threshold: float) -> None:
        self.p0 = float(p0)
        self.threshold = float(threshold)
        self.a, self.b = cusum_coefficients(self.p0, self.shifts)  # (J,) each
        self.thresholds = cusum_thresholds(self.p0, self.shifts, self.threshold)  # (J,) LLR

    @classmethod
    def refined(cls, reference_errors, bootstrap: Callable[[float, int], float],
                shifts: Sequence[float] = CUSUM_SHIFTS, *, guard: int = CUSUM_GUARD, relearn: int = 0,
                floor: float = 0.0) -> ErrorCusum:
        """A bank whose reference error rate p0 is refined from the stream.

        In control are the reference's samples and every later one, since the reference
        (re)started, except the last `guard`: n = max(reference, t − guard) after t
        samples, and p0 = max(their error rate, `floor`). The first estimate comes from a
        few hundred samples, and its error (sd ≈ 0.013 at p0 = 0.1 from 500) is as large as
        the bank's smallest shifts: the bootstrap has to allow for it and raise every
        threshold, and a fixed reference whose rate came out low or high stays wrong.
        The guard keeps the slow start of a drift (which no member has detected yet) out
        of p0, as long as the drift is detected within `guard` samples of it.

        Each time n has grown by `CUSUM_REFRESH` (1/8), p0, the coefficients and the
        members' LLR thresholds at the current level follow (`cusum_thresholds`: the
        level scale is what stays put when p0 moves); at the first such update after it
        has doubled, `bootstrap(p0, n)` gives the level for n in-control samples, whose estimation
        error, and allowance, are smaller. The CUSUM values carry over an update: the
        evidence they hold was measured against a p0 within its own standard error.

        After an alarm the reference restarts: p0 is the old regime's, and the alarm says
        the stream left it, so the next `relearn` samples are a new reference, and
        refinement starts over from them. Meanwhile the old reference keeps watching (its
        CUSUMs from zero; a persistent drift fires again, a false alarm costs no blind
        spell). All update points are sample counts, so the alarms do not depend on how
        the stream is batched.

        A reference that came out high (0.136 where the stream runs at 0.1) is learnt away:

        >>> rng = np.random.default_rng(5)
        >>> det = ErrorCusum.refined(rng.random(500) < 0.13, lambda p0, n: 12.0, relearn=500)
        >>> round(det.p0, 3), det.update(rng.random(8000) < 0.1), det.in_control, round(det.p0, 3)
        (0.136, [], (8000, 840.0), 0.105)

        And after an alarm the new regime is learnt from the samples that follow it:

        >>> alarm, *again = det.update(rng.random(400) < 0.3)
        >>> round(alarm.p0, 3), alarm.detected_sample < 8600, det.learning
        (0.105, True, True)
        >>> again += det.update(rng.random(1000) < 0.3); len(again) > 0, det.learning, round(det.p0, 1)
        (True, False, 0.3)
        >>> det.update(rng.random(1000) < 0.3)
        []
        """
        x = np.asarray(reference_errors, dtype=np.float64).ravel()
        det = cls(0.0, 0.0, shifts)
        det.bootstrap, det.floor, det.guard = bootstrap, float(floor), int(guard)
        det.relearn = int(relearn) or x.size
        det._restart(x.size)
        det._advance(x)
        det._start()
        return det

    @property
    def learning(self) -> bool:
        """True while a refined reference is being learnt again, after an alarm (the old one
        still watches, and refires, meanwhile)."""
        return self.bootstrap is not None and self._t < self._reference

    @property
    def in_control(self) -> tuple[int, float]:
        """(samples, errors) p0 is estimated from: the refined reference's in-control sample."""
        n = max(min(self._t, self._reference), self._t - self.guard)
        back = self._t - n  # the latest samples, inside the guard (at most `guard`)
        return n, self._k - (float(self._tail[-back:].sum()) if back else 0.0)

    @property
    def value(self) -> float:
        """The bank's statistic on the level scale: the member nearest its threshold."""
        return float(cusum_level(self.s, self.p0, self.shifts).max())

    def reset(self) -> None:
        """The CUSUMs restart from zero (a refined reference keeps what it has learnt)."""
        self.s[:] = 0
        self.left_zero[:] = self.samples
        self.left_zero_errors[:] = self.errors

    def _restart(self, reference: int) -> None:
        self._t, self._k, self._tail, self._reference = 0, 0.0, np.zeros(0), reference

    def _advance(self, x: np.ndarray) -> None:
        self._t += x.size
        self._k += float(x.sum())
        if self.guard:
            self._tail = np.concatenate([self._tail, x])[-self.guard:]

    def _start(self) -> None:
        """A (new) reference is complete: its estimate and bootstrap; the CUSUMs start from zero."""
        n, k = self.in_control
        p0 = max(k / n, self.floor)
        self._set(p0, self.bootstrap(p0, n))
        self._bootstrapped = self._refreshed = n
        self._next = math.ceil(n * CUSUM_REFRESH) + self.guard
        self.reset()

    def _refresh(self) -> None:
        n, k = self.in_control
        p0 = max(k / n, self.floor)
        level = self.threshold
        if n >= 2 * self._bootstrapped:
            level, self._bootstrapped = self.bootstrap(p0, n), n
        self._set(p0, level)
        self._refreshed = n
        self._next = math.ceil(n * CUSUM_REFRESH) + self.guard

    def update(self, errors) -> list[CusumAlarm]:
        """Adds a batch of errors (1 = wrong); returns the alarms in it. After an alarm the
        CUSUMs restart from zero, so a drift that persists fires again (and again) against
        a fixed reference, and against a refined one until the new regime is learnt."""
        x = np.asarray(errors, dtype=np.float64).ravel()
        alarms: list[CusumAlarm] = []
        while x.size:
            part = x  # up to the end of a new reference or the next update of a refined one
            if self.bootstrap is not None:
                part = x[:(self._reference if self.learning else self._next) - self._t]
            path = cusum_path(part, self.a, self.b, self.s)                # (n, J)
            positions = np.arange(1, part.size + 1) + self.samples       # sample numbers
            counted = np.cumsum(part) + self.errors                      # errors so far
            zero = path <= 0
            last_zero = np.maximum(np.maximum.accumulate(np.where(zero, positions[:, None], 0), axis=0),
                                   self.left_zero)
            # (both counts only grow, so the running maximum is the count at the last zero)
            zero_errors = np.maximum(np.maximum.accumulate(np.where(zero, counted[:, None], 0), axis=0),
                                     self.left_zero_errors)
            over = (path > self.thresholds).any(axis=1)
            if not over.any():
                self.s = path[-1].copy()
                self.left_zero, self.left_zero_errors = last_zero[-1].copy(), zero_errors[-1].copy()
                self.samples += part.size
                self.errors = float(counted[-1])
                x = x[part.size:]
                self._learn(part)
                continue
            i = int(np.argmax(over))
            levels = np.where(path[i] > self.thresholds, cusum_level(path[i], self.p0, self.shifts), -np.inf)
            j = int(np.argmax(levels))
            since = int(positions[i]) - last_zero[i]                     # (J,) samples since each left 0
            rate = (counted[i] - zero_errors[i]) / np.maximum(since, 1)
            start = int(last_zero[i, int(np.argmax(_glr(rate, since, self.p0)))]) + 1
            alarms.append(CusumAlarm(value=max(float(levels[j]), self.threshold), threshold=self.threshold,
                                     change_sample=start, detected_sample=int(positions[i]), shift=self.shifts[j],
                                     llr=float(path[i, j]), llr_threshold=float(self.thresholds[j]), p0=self.p0))
            self.samples += i + 1
            self.errors = float(counted[i])
            self.reset()
            if self.learning:  # a new regime is being learnt already: this alarm only confirms it
                self._learn(part[:i + 1])
            elif self.bootstrap is not None:
                self._restart(self.relearn)
            x = x[i + 1:]
        return alarms

    def _learn(self, part: np.ndarray) -> None:
        """A refined reference takes in samples the CUSUMs have read without alarm."""
        if self.bootstrap is None:
            return
        learning = self.learning
        self._advance(part)
        if learning and not self.learning:
            self._start()
        elif not learning and self._t >= self._next:
            self._refresh()

@dataclass(kw_only=True)
class WindowAlarm(Alarm):
    """statistic: ks (numeric), js (categorical) or psi; positions are 1-based row numbers, the
    change's the window's first row."""
    feature: str

    @property
    def detected_row(self) -> int:  # (the name bench/drift.py reads)
        return self.detected_sample


class WindowDrift:
    """Sliding-window PSI and KS (numeric columns) or JS (categorical columns) for F columns
    against their references.

    `categories[f]`, when given, makes column f categorical: its values are binned to their
    category (bin i for categories[f][i], bin len(categories[f]) for any other value: unseen),
    and its distance statistic is the Jensen–Shannon distance (`js_threshold`) instead of KS.

    >>> edges = [np.linspace(0, 1, 11)] * 2
    >>> props = np.full((2, 10), 0.1)
    >>> wd = WindowDrift(["a", "b"], edges, props, window=200, step=50,
    ...                  psi_threshold=np.full(2, 0.2), ks_threshold=np.full(2, 0.15))
    >>> rng = np.random.default_rng(0)
    >>> wd.update(rng.uniform(0, 1, (400, 2)))
    []
    >>> [(a.feature, a.statistic) for a in wd.update(np.c_[rng.uniform(0.5, 1.5, 400), rng.uniform(0, 1, 400)])]
    [('a', 'ks'), ('a', 'psi')]

    A categorical column (codes 0, 1, 2 in shares 0.5/0.3/0.2) beside a numeric one:

    >>> wd = WindowDrift(["x", "code"], [np.linspace(0, 1, 11), None],
    ...                  np.r_[[np.full(10, 0.1)], [[0.5, 0.3, 0.2, 0, 0, 0, 0, 0, 0, 0]]], window=200, step=50,
    ...                  psi_threshold=np.full(2, 0.2), ks_threshold=np.array([0.15, 0.0]),
    ...                  categories=[None, np.array([0.0, 1.0, 2.0])], js_threshold=np.array([0.0, 0.15]))
    >>> wd.update(np.c_[rng.uniform(0, 1, 400), rng.choice(3, 400, p=[0.5, 0.3, 0.2])])
    []
    >>> [(a.feature, a.statistic) for a in wd.update(np.c_[rng.uniform(0, 1, 400), rng.choice(3, 400, p=[0.2, 0.3, 0.5])])]
    [('code', 'js'), ('code', 'psi')]
    >>> wd.statistic_names, round(float(wd.js[1]), 2), float(wd.ks[1])
    (['ks', 'js'], 0.3, 0.0)
    """

    def __init__(self, names: Sequence[str], edges: Sequence[np.ndarray | None], proportions: np.ndarray, *,
                 window: int, step: int, psi_threshold: np.ndarray, ks_threshold: np.ndarray,
                 confirm: int = 1, clear_ratio: float = 0.8,
                 categories: Sequence[np.ndarray | None] | None = None,
                 js_threshold: np.ndarray | None = None) -> None:
        self.names = list(names)
        f = len(self.names)
        self.categories = [None if c is None else np.asarray(c, dtype=np.float64)
                           for c in (categories if categories is not None else [None] * f)]
        self.categorical = np.array([c is not None for c in self.categories], dtype=bool)
        self.edges = [None if c is not None else np.asarray(e, dtype=np.float64)
                      for e, c in zip(edges, self.categories)]
        self.proportions = np.asarray(proportions, dtype=np.float64)
        self.n_bins = self.proportions.shape[1]
        if any(c is not None and len(c) >= self.n_bins for c in self.categories):
            raise ValueError("a categorical column needs a bin per category and one for unseen values")
        self.window, self.step = window, step
        self.psi_threshold, self.ks_threshold = np.asarray(psi_threshold), np.asarray(ks_threshold)
        self.js_threshold = np.zeros(f) if js_threshold is None else np.asarray(js_threshold)
        # Per column, the distance statistic's name and threshold: KS for numeric, JS for categorical.
        self.statistic_names = ["js" if c else "ks" for c in self.categorical]
        self.distance_threshold = np.where(self.categorical, self.js_threshold, self.ks_threshold)
        self.confirm, self.clear_ratio = confirm, clear_ratio
        self._ring = np.zeros((window, f), dtype=np.int16)
        self._offsets = np.zeros(f, dtype=np.int64) + np.arange(f) * self.n_bins
        self.rows = 0  # rows seen, the 1-based number of the latest
        self.reset()

    def reset(self) -> None:
        """Empties the window and forgets the tests' state (rows keep counting)."""
        f = len(self.names)
        self._filled = 0  # rows since the reset
        self._since_test = 0
        self.psi = np.zeros(f)
        self.ks = np.zeros(f)   # 0 for categorical columns
        self.js = np.zeros(f)   # 0 for numeric columns
        self.distance = np.zeros(f)
        self.alarmed = np.zeros(f, dtype=bool)
        self._over = np.zeros((2, f), dtype=np.int64)
        self._under = np.zeros(f, dtype=np.int64)

    def carry(self, old: WindowDrift) -> None:
        """Goes on from `old`, a window over other columns of the same rows: its row count (alarms
        name rows by number), and when every column here is one of its columns (binned alike), their
        rows in the window and their tests' state.

        >>> edges, props = [np.linspace(0, 1, 11)] * 2, np.full((2, 10), 0.1)
        >>> both = WindowDrift(["a", "b"], edges, props, window=100, step=50,
        ...                    psi_threshold=np.full(2, 0.2), ks_threshold=np.full(2, 0.15))
        >>> _ = both.update(np.random.default_rng(0).uniform(0, 1, (120, 2)))
        >>> b = WindowDrift(["b"], edges[1:], props[1:], window=100, step=50,
        ...                 psi_threshold=np.full(1, 0.2), ks_threshold=np.full(1, 0.15))
        >>> b.carry(both); b.rows, b.count, bool((b.counts() == both.counts()[1:]).all()), b.psi == both.psi[1:]
        (120, 100, True, array([ True]))
        """
        self.rows = old.rows
        if not all(name in old.names for name in self.names) or old.window != self.window:
            return
        columns = [old.names.index(name) for name in self.names]
        self._ring[:] = old._ring[:, columns]
        self._filled, self._since_test = old._filled, old._since_test
        for state in ("psi", "ks", "js", "distance", "alarmed", "_under"):
            setattr(self, state, getattr(old, state)[columns].copy())
        self._over = old._over[:, columns].copy()

    @property
    def count(self) -> int:
        """Rows in the window."""
        return min(self._filled, self.window)

    def bin_indices(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        out = np.empty(values.shape, dtype=np.int16)
        for f, (edges, categories) in enumerate(zip(self.edges, self.categories)):
            if categories is None:
                out[:, f] = bin_indices(edges, values[:, f])
            else:
                out[:, f] = category_indices(categories, values[:, f])
        return out

    def update(self, values: np.ndarray) -> list[WindowAlarm]:
        """Adds rows (n, F); tests every `step` rows once the window is full; returns new alarms."""
        idx = self.bin_indices(values)
        alarms: list[WindowAlarm] = []
        start = 0
        while start < len(idx):
            take = min(len(idx) - start, self.step - self._since_test) if self._filled >= self.window \
                else min(len(idx) - start, self.window - self._filled)
            chunk = idx[start:start + take]
            positions = (self._filled + np.arange(take)) % self.window
            self._ring[positions] = chunk
            self.rows += take
            self._filled += take
            start += take
            if self._filled >= self.window:
                self._since_test += take
                if self._since_test >= self.step or self._filled == self.window:
                    self._since_test = 0
                    alarms += self._test()
        return alarms

    add = update  # (the name bench/drift.py calls)

    def counts(self) -> np.ndarray:
        n = self.count
        flat = (self._ring[:n].astype(np.int64) + self._offsets).ravel()
        return np.bincount(flat, minlength=len(self.names) * self.n_bins).reshape(len(self.names), self.n_bins)

    def _test(self) -> list[WindowAlarm]:
        counts = self.counts()  # every column's histogram from one bincount
        self.psi, ks = window_statistics(counts, self.proportions)
        self.ks = np.where(self.categorical, 0.0, ks)
        self.js = np.zeros(len(self.names))
        if self.categorical.any():
            self.js[self.categorical] = js_distance(counts[self.categorical], self.proportions[self.categorical])
        self.distance = np.where(self.categorical, self.js, self.ks)
        before = self.alarmed.copy()
        alarms = []
        for s, (stat, threshold, names) in enumerate(((self.distance, self.distance_threshold, self.statistic_names),
                                                      (self.psi, self.psi_threshold, ["psi"] * len(self.names)))):
            over = stat > threshold
            self._over[s] = np.where(over, self._over[s] + 1, 0)
            for f in np.flatnonzero((self._over[s] == self.confirm) & ~before):
                alarms.append(WindowAlarm(feature=self.names[f], statistic=names[f], value=float(stat[f]),
                                          threshold=float(threshold[f]), change_sample=self.rows - self.window + 1,
                                          detected_sample=self.rows))
        raised = (self._over >= self.confirm).any(axis=0)
        calm = ((self.distance < self.clear_ratio * self.distance_threshold)
                & (self.psi < self.clear_ratio * self.psi_threshold))
        self._under = np.where(self.alarmed & calm, self._under + 1, 0)
        self.alarmed = (self.alarmed | raised) & ~(self._under >= self.confirm)
        return alarms  # a feature still alarmed does not alarm again
