"""Streaming drift signals, vectorised with numpy over batches and sliding windows.

* `ErrorCusum` — concept drift: a bank of Bernoulli CUSUMs over the 0/1 error
  stream, one per size of error-rate increase, against the error rate of the
  version's reference (its first labelled predictions). CUSUM is the optimal
  sequential test for a change of known size (Lorden, Moustakides); a small bank
  covers unknown sizes. A whole batch is updated at once: with C the cumulative
  log-likelihood ratio, the Lindley recursion S_t = max(0, S_{t-1} + x_t) has the
  closed form S_t = C_t - min(-S_0, min_{s<=t} C_s). The change point is where
  the alarming CUSUM last left zero.
* `WindowDrift` — data and prediction drift: a ring buffer of the last `window`
  rows' reference-bin indices per feature; every `step` rows one bincount gives
  every feature's histogram, and from it PSI and the two-sample Kolmogorov–Smirnov
  distance against the reference's binned CDF (the reference is stored binned,
  so KS is evaluated at its bin edges). `confirm` consecutive tests over the
  threshold raise an alarm; it clears once `confirm` tests fall under
  `clear_ratio` × threshold (hysteresis).

Thresholds come from `calibration.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-4


def cusum_coefficients(p0, shifts: Sequence[float]):
    """Log-likelihood-ratio increments (a for an error, b for a right answer) of
    H1: p0 + shift against H0: p0; `p0` may be an array (one per simulated stream)."""
    p0 = np.clip(np.asarray(p0, dtype=np.float64), 0.005, 0.995)[..., None]
    p1 = np.clip(p0 + np.asarray(shifts), 0.006, 0.999)
    return np.log(p1 / p0), np.log((1 - p1) / (1 - p0))


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


@dataclass
class CusumAlarm:
    value: float
    threshold: float
    change_sample: int     # 1-based sample number where the alarming CUSUM last left zero
    detected_sample: int   # 1-based sample number of the alarm
    shift: float


class ErrorCusum:
    """
    >>> rng = np.random.default_rng(3)
    >>> det = ErrorCusum(p0=0.1, threshold=8.0)
    >>> det.update(rng.random(2000) < 0.1)
    []
    >>> alarm = det.update(rng.random(500) < 0.4)[0]
    >>> 2000 <= alarm.change_sample <= 2030 and alarm.detected_sample < 2100
    True
    """

    def __init__(self, p0: float, threshold: float, shifts: Sequence[float] = (0.05, 0.1, 0.2, 0.4)) -> None:
        self.p0 = p0
        self.threshold = threshold
        self.shifts = tuple(shifts)
        self.a, self.b = cusum_coefficients(p0, self.shifts)  # (J,) each
        self.s = np.zeros(len(self.shifts))
        self.left_zero = np.zeros(len(self.shifts), dtype=np.int64)  # sample count when each was last 0
        self.samples = 0

    @property
    def value(self) -> float:
        return float(self.s.max())

    def reset(self) -> None:
        self.s[:] = 0
        self.left_zero[:] = self.samples

    def update(self, errors) -> list[CusumAlarm]:
        """Adds a batch of errors (1 = wrong); returns the alarms in it. After an alarm the
        CUSUMs restart from zero, so a drift that persists fires again (and again)."""
        x = np.asarray(errors, dtype=np.float64)
        alarms: list[CusumAlarm] = []
        while x.size:
            path = cusum_path(x, self.a, self.b, self.s)                   # (n, J)
            positions = np.arange(1, x.size + 1) + self.samples          # sample numbers
            zero_at = np.where(path <= 0, positions[:, None], 0)
            last_zero = np.maximum(np.maximum.accumulate(zero_at, axis=0), self.left_zero)
            over = (path > self.threshold).any(axis=1)
            if not over.any():
                self.s = path[-1].copy()
                self.left_zero = last_zero[-1].copy()
                self.samples += x.size
                break
            i = int(np.argmax(over))
            j = int(np.argmax(path[i]))
            alarms.append(CusumAlarm(float(path[i, j]), self.threshold, int(last_zero[i, j]) + 1,
                                     int(positions[i]), self.shifts[j]))
            self.samples += i + 1
            self.reset()
            x = x[i + 1:]
        return alarms


@dataclass
class WindowAlarm:
    feature: str
    statistic: str          # ks or psi
    value: float
    threshold: float
    window_start_row: int   # 1-based row number of the window's first row
    detected_row: int


class WindowDrift:
    """Sliding-window PSI and KS for F columns against binned references.

    >>> edges = [np.linspace(0, 1, 11)] * 2
    >>> props = np.full((2, 10), 0.1)
    >>> wd = WindowDrift(["a", "b"], edges, props, window=200, step=50,
    ...                  psi_threshold=np.full(2, 0.2), ks_threshold=np.full(2, 0.15))
    >>> rng = np.random.default_rng(0)
    >>> wd.add(rng.uniform(0, 1, (400, 2)))
    []
    >>> [(a.feature, a.statistic) for a in wd.add(np.c_[rng.uniform(0.5, 1.5, 400), rng.uniform(0, 1, 400)])]
    [('a', 'ks'), ('a', 'psi')]
    """

    def __init__(self, names: Sequence[str], edges: Sequence[np.ndarray], proportions: np.ndarray, *,
                 window: int, step: int, psi_threshold: np.ndarray, ks_threshold: np.ndarray,
                 confirm: int = 1, clear_ratio: float = 0.8) -> None:
        self.names = list(names)
        self.inner_edges = [np.asarray(e, dtype=np.float64)[1:-1] for e in edges]
        self.proportions = np.asarray(proportions, dtype=np.float64)
        self.n_bins = self.proportions.shape[1]
        self.window, self.step = window, step
        self.psi_threshold, self.ks_threshold = np.asarray(psi_threshold), np.asarray(ks_threshold)
        self.confirm, self.clear_ratio = confirm, clear_ratio
        f = len(self.names)
        self._ring = np.zeros((window, f), dtype=np.int16)
        self._offsets = np.zeros(f, dtype=np.int64) + np.arange(f) * self.n_bins
        self.rows = 0
        self._since_test = 0
        self.psi = np.zeros(f)
        self.ks = np.zeros(f)
        self.alarmed = np.zeros(f, dtype=bool)
        self._over = np.zeros((2, f), dtype=np.int64)
        self._under = np.zeros(f, dtype=np.int64)

    @property
    def count(self) -> int:
        return min(self.rows, self.window)

    def bin_indices(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        out = np.empty(values.shape, dtype=np.int16)
        for f, inner in enumerate(self.inner_edges):
            out[:, f] = np.searchsorted(inner, values[:, f], side="right")
        return out

    def add(self, values: np.ndarray) -> list[WindowAlarm]:
        """Adds rows (n, F); tests every `step` rows once the window is full; returns new alarms."""
        idx = self.bin_indices(values)
        alarms: list[WindowAlarm] = []
        start = 0
        while start < len(idx):
            take = min(len(idx) - start, self.step - self._since_test) if self.rows >= self.window \
                else min(len(idx) - start, self.window - self.rows)
            chunk = idx[start:start + take]
            positions = (self.rows + np.arange(take)) % self.window
            self._ring[positions] = chunk
            self.rows += take
            start += take
            if self.rows >= self.window:
                self._since_test += take
                if self._since_test >= self.step or self.rows == self.window:
                    self._since_test = 0
                    alarms += self._test()
        return alarms

    def counts(self) -> np.ndarray:
        n = self.count
        flat = (self._ring[:n].astype(np.int64) + self._offsets).ravel()
        return np.bincount(flat, minlength=len(self.names) * self.n_bins).reshape(len(self.names), self.n_bins)

    def _test(self) -> list[WindowAlarm]:
        self.psi, self.ks = window_statistics(self.counts(), self.proportions)
        before = self.alarmed.copy()
        alarms = []
        for s, (stat, threshold, name) in enumerate(((self.ks, self.ks_threshold, "ks"),
                                                     (self.psi, self.psi_threshold, "psi"))):
            over = stat > threshold
            self._over[s] = np.where(over, self._over[s] + 1, 0)
            for f in np.flatnonzero((self._over[s] == self.confirm) & ~before):
                alarms.append(WindowAlarm(self.names[f], name, float(stat[f]), float(threshold[f]),
                                          self.rows - self.window + 1, self.rows))
        raised = (self._over >= self.confirm).any(axis=0)
        calm = (self.ks < self.clear_ratio * self.ks_threshold) & (self.psi < self.clear_ratio * self.psi_threshold)
        self._under = np.where(self.alarmed & calm, self._under + 1, 0)
        self.alarmed = (self.alarmed | raised) & ~(self._under >= self.confirm)
        return alarms  # a feature still alarmed does not alarm again
