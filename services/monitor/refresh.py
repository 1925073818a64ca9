"""Progressive retraining: after a change, a first model from its first few hundred rows, then
refreshes as the rows since the change grow.

A drift request asks for few rows (`monitor_retrain_min_rows`) so that a model of the new
concept serves within seconds of the alarm. That model is rough; a model of the same concept
on twice the rows is better, and on four times better again. So each training request that
starts a regime (a stream's first model, a drift alarm's retrain) starts a *progression*: once
the monitor has counted twice the rows the last request of it asked for, labelled and with an
event time at or after the change, it asks for a REFRESH on them. The trainer trains on the
window as usual and the gate promotes the refresh only if it beats production on its own
held-out rows, the most recent, which production never trained on. A refresh trains on the
latest `max_rows` rows at most, so the window of a late refresh leaves out the start of the
regime: the transition of a gradual drift, the mixture an early alarm caught.

It is data, not a timer, that asks again: a retrain the gate refused is followed by the next
refresh on twice its rows (the data-driven retry), and `max_refusals` refusals in a row end
the progression, as does reaching `until_rows` rows since the change (the model has seen
enough of the regime) or a new regime of the model starting.

>>> refreshes = Refreshes(max_rows=1000, until_rows=2000, max_refusals=2)
>>> first = training_pb2.TrainingRequest(request_id="r1", model_name="m", min_rows=300, trigger=DRIFT)
>>> first.window_start.FromMilliseconds(100)
>>> refreshes.follow(first, counted=0)
>>> for t in range(200, 800): refreshes.count("m", t)
>>> refreshes.due()  # the first retrain's answer has not come yet
[]
>>> refreshes.on_result(training_pb2.TrainingResult(request_id="r1", status=SUCCEEDED, promoted=True))
True
>>> [(r.min_rows, r.window_start.ToMilliseconds()) for r in refreshes.due()]
[(600, 100)]
>>> refreshes.due()  # one at a time
[]
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from driftline.v1 import training_pb2

log = logging.getLogger(__name__)

FIRST_MODEL, DRIFT, REFRESH = (training_pb2.TrainingRequest.FIRST_MODEL, training_pb2.TrainingRequest.DRIFT,
                               training_pb2.TrainingRequest.REFRESH)
SUCCEEDED = training_pb2.TrainingResult.SUCCEEDED


@dataclass
class _Progression:
    model: str
    stream: str
    start_ms: int                  # the regime's start: the change, or the first model's first row
    asked_rows: int                # rows the latest request of it asked for
    origin: str                    # what started it, for the reasons
    rows: int = 0                  # labelled rows counted with an event time >= start_ms
    times: deque = field(default_factory=deque)  # event times of the latest max_rows of them
    outstanding: str | None = None  # the request in flight, whose answer decides the next
    refusals: int = 0              # requests of it in a row that did not give a production version
    refreshes: int = 0


class Refreshes:
    """The progressions per model (pure state: the monitor feeds it under its lock and publishes
    what `due` returns); `ids` (a RequestIds) gives each refresh its request id."""

    def __init__(self, max_rows: int, until_rows: int, max_refusals: int, ids=None) -> None:
        self.max_rows = max_rows
        self.until_rows = until_rows
        self.max_refusals = max_refusals
        self.ids = ids  # RequestIds: a replayed refresh asks under the same id
        self._models: dict[str, _Progression] = {}

    def follow(self, request: training_pb2.TrainingRequest, counted: int) -> None:
        """A request that starts a regime of its model (a first model, a drift retrain) went out:
        the model's progression starts from its window, `counted` rows of it already seen."""
        if self.until_rows <= 0:
            return
        start_ms = request.window_start.ToMilliseconds() if request.HasField("window_start") else 0
        origin = "the first model" if request.trigger == FIRST_MODEL else request.reason.split(" [", 1)[0]
        progression = _Progression(request.model_name, request.stream, start_ms, int(request.min_rows), origin,
                                   rows=max(counted, 0), times=deque(maxlen=self.max_rows),
                                   outstanding=request.request_id)
        self._models[request.model_name] = progression

    def count(self, model: str, event_time_ms: int) -> None:
        """One labelled outcome of the model."""
        progression = self._models.get(model)
        if progression is not None and event_time_ms >= progression.start_ms:
            progression.rows += 1
            progression.times.append(event_time_ms)

    def on_result(self, result: training_pb2.TrainingResult) -> bool:
        """The answer to a request of a progression (True), which decides whether it goes on."""
        for model, progression in list(self._models.items()):
            if progression.outstanding != result.request_id:
                continue
            progression.outstanding = None
            promoted = result.status == SUCCEEDED and result.promoted
            progression.refusals = 0 if promoted else progression.refusals + 1
            if progression.refusals >= self.max_refusals:
                log.info("refreshes ended: refused in a row", extra={
                    "model": model, "refusals": progression.refusals, "rows": progression.rows})
                del self._models[model]
            return True
        return False

    def end(self, model: str) -> None:
        self._models.pop(model, None)

    def due(self) -> list[training_pb2.TrainingRequest]:
        """The refreshes to ask for now: a progression with no request in flight whose rows since
        its start reached twice what its last request asked for."""
        due = []
        for model, p in list(self._models.items()):
            if p.outstanding is not None or p.rows < 2 * p.asked_rows:
                continue
            if p.rows > self.until_rows:
                log.info("refreshes ended: enough rows of the regime", extra={"model": model, "rows": p.rows})
                del self._models[model]
                continue
            due.append(self._refresh(p))
        return due

    def _refresh(self, p: _Progression) -> training_pb2.TrainingRequest:
        p.refreshes += 1
        rows = min(p.rows, self.max_rows)
        # The latest max_rows rows: the window starts at the oldest of them once more have come.
        start_ms = p.times[0] if p.rows > self.max_rows and p.times else p.start_ms
        request_id = (str(self.ids.next(p.model, "refresh", p.start_ms, p.refreshes)) if self.ids is not None
                      else f"refresh-{p.model}-{p.start_ms}-{p.refreshes}")
        request = training_pb2.TrainingRequest(
            request_id=request_id, model_name=p.model, stream=p.stream, min_rows=rows, trigger=REFRESH,
            reason=(f"refresh {p.refreshes} after {p.origin}: {p.rows:,} labelled rows since "
                    f"{p.start_ms} (event time, ms); training on the latest {rows:,}"))
        request.window_start.FromMilliseconds(start_ms)
        request.requested_at.GetCurrentTime()
        p.asked_rows, p.outstanding = p.rows, request_id
        return request

    def status(self) -> list[dict]:
        return [{"model": p.model, "since_ms": p.start_ms, "rows": p.rows, "refreshes": p.refreshes,
                 "waiting_for": p.outstanding, "refusals": p.refusals} for p in self._models.values()]

