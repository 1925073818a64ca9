"""The decision to ask for training: a version's active alerts, the policy's rules
(`policy.DriftPolicy`) and the TrainingRequest that names the alert and starts its window
at the change. The monitor publishes what `consider` and `refreshes.due` return; `on_result`
hands the trainer's answer back to the rules (a promoted retrain ends the cooldown) and to
the progression the request belongs to (refresh.py: its refreshes on more rows since the
change are the retry of a retrain the gate refused; a retrain that failed re-arms the version
after `retry_s`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from driftline.v1 import training_pb2

from .metrics import POLICY_BLOCKED, TRAINING_REQUESTS
from .policy import DriftPolicy
from .refresh import DRIFT, Refreshes
from .tracker import CONCEPT, Alert, VersionTracker

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model name, version)


class RetrainingTrigger:
    def __init__(self, policy: DriftPolicy, stream: str, min_rows: int,
                 stream_of: Callable[[str], str | None] = lambda model: None,
                 refreshes: Refreshes | None = None, reuse_candidates: int = 0) -> None:
        self.policy = policy
        self.refreshes = refreshes or Refreshes(max_rows=0, until_rows=0, max_refusals=1)  # until_rows 0: none
        self.reuse_candidates = reuse_candidates  # recent versions the trainer may promote again instead
        self.stream = stream  # for a model whose stream `stream_of` does not know
        self.stream_of = stream_of  # model → its stream (the catalogue's), so a request trains on the model's own data
        self.min_rows = min_rows  # the fewest labelled rows a request asks the trainer for
        self._requested_by: dict[str, Key] = {}  # training request id → the version that asked
        self._blocked_by: dict[Key, str] = {}  # the policy rule that last said "not yet"
        self._asked_from: dict[Key, int] = {}  # the change (event time) each version last asked from
        self._ids = RequestIds()  # a decision replayed after a restart asks under the same id
        self.refreshes.ids = self._ids  # one lineage of request ids, snapshotted with this trigger

    def consider(self, tracker: VersionTracker) -> tuple[Alert, training_pb2.TrainingRequest] | None:
        """The alert that asks for training now and its request, if the policy allows one: the
        policy's signals pick the alerts that may ask; of those, concept drift first, then the
        earliest change."""
        key = (tracker.model_name, tracker.version)
        candidates = [a for a in tracker.active_alerts() if self.policy.allows(a.signal, a.statistic)]
        if not candidates:
            return None
        alert = min(candidates, key=lambda a: (a.signal != CONCEPT, a.change_time_ms or 1 << 62))
        count = tracker.rows_for(alert.signal)  # labelled samples, or the rows of the window that alarmed
        # A concept alert moved to a later change since this version asked (a second rise) is a new change.
        asked_from = self._asked_from.get(key)
        new_change = (alert.signal == CONCEPT and asked_from is not None and alert.change_time_ms > asked_from
                      and alert.training_request_id != "")
        decision = self.policy.decide(tracker.model_name, tracker.version, count, new_change=new_change)
        if not decision.retrain:
            if self._blocked_by.get(key) != decision.rule:  # once per rule, not once per sample
                POLICY_BLOCKED.labels(key[0], decision.rule).inc()
                log.info("drift detected; not retraining yet", extra={
                    "model": key[0], "version": key[1], "why": decision.why})
            self._blocked_by[key] = decision.rule
            return None
        self._blocked_by.pop(key, None)
        drift = tracker.relocate_drift(alert)  # the training window starts where this alert located the change
        if drift is not None:
            start_ms, where = drift.event_time_ms, (
                f"the error rate went from {drift.error_before:.3f} to {drift.error_after:.3f} starting at "
                f"labelled sample {drift.sample}")
        else:
            start_ms, where = alert.change_time_ms, f"the change began at row {alert.change_sample}"
        features = f" in {', '.join(alert.features)}" if alert.features else ""
        request = training_pb2.TrainingRequest(
            request_id=str(self._ids.next(*key)), model_name=tracker.model_name,
            stream=self.stream_of(tracker.model_name) or self.stream,
            min_rows=self.min_rows, trigger=DRIFT, reuse_candidates=self.reuse_candidates,
            reason=(f"{alert.signal.replace('_', ' ')}{features} [alert {alert.alert_id}] in {tracker.model_name} v{tracker.version}: "
                    f"{alert.statistic_text()}; {where} "
                    f"(event time {_iso(start_ms)}, offset {alert.change_at.offset} of {alert.change_at.topic or '-'}"
                    f"/{alert.change_at.partition}; detected at offset {alert.detected_at.offset}); rolling accuracy "
                    f"{tracker.accuracy.value:.3f} over {tracker.accuracy.count}"))
        # (params are the trainer's hyperparameters: the alert is named in the reason, not there)
        if start_ms:
            request.window_start.FromMilliseconds(start_ms)
        request.requested_at.GetCurrentTime()
        self.policy.requested(tracker.model_name, tracker.version)
        self._requested_by[request.request_id] = key
        self._asked_from[key] = alert.change_time_ms  # compared with the alert's own, never re-asked for the same
        self.refreshes.follow(request, counted=tracker.samples - drift.sample if drift is not None else 0)
        alert.requested(request.request_id)
        TRAINING_REQUESTS.labels(tracker.model_name).inc()
        log.warning("drift confirmed; training requested", extra={
            "model": key[0], "version": key[1], "request_id": request.request_id, "reason": request.reason})
        return alert, request

    def on_result(self, result: training_pb2.TrainingResult) -> None:
        # A promoted retrain ends the model's cooldown (its new version starts its own count). One
        # the gate refused leaves the drifted version serving; its progression asks again on twice
        # the rows (refresh.py), and only a retrain that failed re-arms the version on a timer.
        progressing = self.refreshes.on_result(result)
        key = self._requested_by.pop(result.request_id, None)  # a copy of the answer (re-published) changes nothing
        succeeded = result.status == training_pb2.TrainingResult.SUCCEEDED
        if succeeded and result.promoted:
            self.policy.landed(result.model_name)
        elif key and not (succeeded and progressing):
            self.policy.rearm(*key)
            self.refreshes.end(key[0])  # the version asks again, and that request starts its own
            log.info("re-armed after an unsuccessful retrain", extra={
                "model": key[0], "version": key[1], "request_id": result.request_id,
                "status": training_pb2.TrainingResult.Status.Name(result.status), "error": result.error})

    def forget(self, key: Key) -> None:
        """A version no longer tracked."""
        self._blocked_by.pop(key, None)
        self._asked_from.pop(key, None)


class RequestIds:
    """Training request ids that a replay gives again: the n-th request of a key (a model version,
    a model and stream) in this monitor's lineage — a random id drawn when its state began, kept in
    every snapshot of it — so the same decision, made once more from a snapshot after a restart,
    carries the id the first one did, and a new decision never does.

    >>> ids = RequestIds(); first = ids.next("m", 1)
    >>> first != ids.next("m", 1) and first != ids.next("m", 2)
    True
    >>> import pickle; again = pickle.loads(pickle.dumps(ids)); again.next("m", 3) == ids.next("m", 3)
    True
    """

    def __init__(self) -> None:
        self.lineage = uuid.uuid4()
        self._issued: dict[tuple, int] = {}

    def next(self, *key) -> uuid.UUID:
        n = self._issued[key] = self._issued.get(key, 0) + 1
        return uuid.uuid5(self.lineage, "/".join(map(str, (*key, n))))


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).isoformat(timespec="seconds")
