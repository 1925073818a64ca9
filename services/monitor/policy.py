"""When detected drift becomes a request to retrain.

A detector says "something changed"; retraining costs compute and churns the
serving model, so the policy asks three more questions first:

* has this version seen `min_samples` labelled predictions? (a detector on a
  few dozen samples is mostly noise, and a new version deserves a fair start)
* has the model been asked to retrain in the last `cooldown_s` seconds?
  (the retrain already requested needs time to land; once it has landed and
  been promoted, the new version need not wait out the rest)
* has this version already asked? Once per version, unless `rearm()` — when
  the retrain it asked for failed or was not promoted; it may then ask again
  `retry_s` later, without waiting out the rest of the cooldown.

Which signals may ask at all is configuration too (`signals`: concept_drift,
data_drift, prediction_drift); the rest only alert. Thresholds (run length) and
hysteresis live with the detectors (settings.TrackerConfig); together these are
the policy. A drift that keeps firing refreshes its alert and is stopped here by
"once per version" and the cooldown: it never floods training requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    retrain: bool
    rule: str  # which question answered: min_samples, once_per_version, cooldown or confirmed
    why: str


class DriftPolicy:
    """
    >>> now = [0.0]
    >>> policy = DriftPolicy(min_samples=100, cooldown_s=60, clock=lambda: now[0])
    >>> policy.decide("m", 1, samples=50).why
    'only 50 of 100 samples since v1 started'
    >>> policy.decide("m", 1, samples=150).retrain
    True
    >>> policy.requested("m", 1); policy.decide("m", 1, samples=200).why
    'v1 already asked for retraining'
    >>> policy.decide("m", 1, samples=200, new_change=True).retrain  # a later change than the one it asked for
    True
    >>> now[0] = 30.0; policy.decide("m", 2, samples=500).why
    'cooling down: last request 30s ago, cooldown 60s'
    >>> now[0] = 61.0; policy.decide("m", 2, samples=500).retrain
    True
    """

    def __init__(self, min_samples: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 signals: Iterable[str] = ("concept_drift:cusum",), retry_s: float = 15.0) -> None:
        self.min_samples = min_samples
        self.cooldown_s = cooldown_s
        self.retry_s = min(retry_s, cooldown_s)
        self.signals = frozenset(signals)
        self._clock = clock
        self._last_request: dict[str, float] = {}  # model → when it last asked
        self._asked: set[tuple[str, int]] = set()  # versions that asked and were not re-armed

    def decide(self, model_name: str, version: int, samples: int, new_change: bool = False) -> Decision:
        """`new_change`: the alert located a second change after the one this version asked for
        (tracker: a second rise), which neither "once per version" nor the cooldown holds back."""
        if samples < self.min_samples:
            return Decision(False, "min_samples", f"only {samples} of {self.min_samples} samples since v{version} started")
        if new_change:
            return Decision(True, "confirmed", "a second change since this version asked")
        if (model_name, version) in self._asked:
            return Decision(False, "once_per_version", f"v{version} already asked for retraining")
        last = self._last_request.get(model_name)
        if last is not None and self._clock() - last < self.cooldown_s:
            return Decision(False, "cooldown", f"cooling down: last request {self._clock() - last:.0f}s ago, "
                                   f"cooldown {self.cooldown_s:.0f}s")
        return Decision(True, "confirmed", "drift confirmed")

    def allows(self, signal: str, statistic: str = "") -> bool:
        """Whether alerts of this signal (and statistic) may ask for training: the policy names
        a signal ("data_drift": any of its statistics) or a signal and statistic.

        >>> DriftPolicy(1, 1).allows("concept_drift", "cusum"), DriftPolicy(1, 1).allows("concept_drift", "adwin")
        (True, False)
        >>> DriftPolicy(1, 1, signals=["concept_drift", "data_drift:ks"]).allows("data_drift", "ks")
        True
        """
        return signal in self.signals or f"{signal}:{statistic}" in self.signals

    def requested(self, model_name: str, version: int) -> None:
        """Records that a training request went out for this version."""
        self._asked.add((model_name, version))
        self._last_request[model_name] = self._clock()

    def landed(self, model_name: str) -> None:
        """The retrain the model asked for was promoted: its cooldown has done its job. The new
        version asks only once it has its own `min_samples`."""
        self._last_request.pop(model_name, None)

    def rearm(self, model_name: str, version: int) -> None:
        """Lets this version ask again, `retry_s` after the retrain it asked for landed (failed,
        or was not promoted): the cooldown gave that retrain time to land; waiting it out again
        would leave the drifted version serving, while a short pause keeps a trainer that fails
        at once from being asked in a tight loop."""
        self._asked.discard((model_name, version))
        last = self._last_request.get(model_name)
        if last is not None:
            self._last_request[model_name] = min(last, self._clock() - self.cooldown_s + self.retry_s)
