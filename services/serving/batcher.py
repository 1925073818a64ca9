"""Dynamic batching: single requests that arrive together run as one ONNX Runtime call.

Every request (Predict and ModelInfer alike) is submitted here with the model it
picked up on arrival and its own deadline. The oldest waiting request gathers
whatever else arrives, until the batch holds `max_batch_rows` rows or the oldest
has waited `max_queue_delay_s`; then the batch runs in one session call and each
caller gets its own slice of the answer. While a batch runs on a worker thread,
the next one gathers, so under load batches fill by themselves.

Nothing here polls or runs a task per batch: an arrival, a timer (one `call_at`
per batch) or a finished batch decides when the next batch is cut.

* Waiting only when it can pay: a request that arrives while no other request is
  queued or running skips the wait once waiting has stopped gathering company,
  i.e. the last batch the delay timer cut held that one request alone. Any request
  that arrives while another is queued or running turns waiting back on. So a lone
  caller (concurrency 1) is not delayed by `max_queue_delay_s` on every call, and
  under load requests still wait for each other. (It is still cut on the next loop
  turn, so requests delivered in the same turn join it.)
* Cheap batches run inline: a batch runs on the event loop itself, not a worker
  thread, when this model has been answering batches of that size within
  `inline_max_s` (measured: a size not seen yet runs on a worker thread first).
  A thread hand-off and the wake-up back cost more than a small model's whole run;
  a heavy model keeps the thread, so the loop decodes other requests meanwhile.
* A batch never mixes models: requests carry the `LoadedModel` they started on,
  and a batch is cut where the model changes, so requests queued before a hot
  swap finish on the old model and those after it run on the new one.
* A request whose deadline passes (or whose caller goes away) while it waits is
  not run: it gets `DeadlineExpired`, or is dropped when cancelled.
* The queue is bounded in requests: a request that finds it full gets
  `QueueFull` at once — never a hang.
* A request bigger than `max_batch_rows` still runs, alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .metrics import BATCH_REQUESTS, BATCH_ROWS, QUEUE_DELAY
from .onnx_model import LoadedModel

log = logging.getLogger(__name__)

# How fast a run-time estimate rises towards a slower measurement (it falls at once to a faster
# one): a run slowed by a busy machine or a GIL hand-over moves a cheap model off the loop only
# when it keeps happening.
_RISE = 0.25


class QueueFull(Exception):
    """The batching queue holds as many requests as it may; answer RESOURCE_EXHAUSTED."""


class DeadlineExpired(Exception):
    """The request's deadline passed while it waited for a batch; it was not run."""


@dataclass(slots=True, eq=False)
class _Waiting:
    model: LoadedModel
    rows: np.ndarray
    deadline: float | None  # loop time
    future: asyncio.Future
    enqueued: float = field(default=0.0)


class _RunTimes:
    """Seconds one model takes per session call, by batch size (powers of two)."""

    __slots__ = ("model", "by_size")

    def __init__(self, model: LoadedModel) -> None:
        self.model = model  # kept, so the id it is filed under is not reused meanwhile
        self.by_size: dict[int, float] = {}

    def learn(self, rows: int, seconds: float) -> None:
        size = rows.bit_length()
        known = self.by_size.get(size)
        self.by_size[size] = seconds if known is None or seconds < known else known + _RISE * (seconds - known)


class Batcher:
    """Batches `predict` calls per model; one per serving process (and one for the shadow)."""

    def __init__(self, *, max_batch_rows: int = 64, max_queue_delay_s: float = 0.002,
                 max_queued: int = 1024, workers: int = 1, model_name: str = "",
                 inline_max_s: float = 0.0002) -> None:
        if max_batch_rows < 1 or max_queued < 1 or workers < 1:
            raise ValueError("max_batch_rows, max_queued and workers must be at least 1")
        self.max_batch_rows = max_batch_rows
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.max_queued = max_queued
        self.workers = workers
        self.inline_max_s = max(0.0, inline_max_s)
        self._waiting: deque[_Waiting] = deque()
        self._waiting_rows = 0  # rows in _waiting, including cancelled requests not yet dropped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cut_soon: asyncio.Handle | None = None
        self._running = 0  # batches on worker threads now
        # Whether waiting for company has lately gathered any (see the module docstring).
        self._company = True
        self._closed = False
        self._run_times: dict[int, _RunTimes] = {}
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="batch")
        self._batch_rows = BATCH_ROWS.labels(model_name)
        self._batch_requests = BATCH_REQUESTS.labels(model_name)
        self._queue_delay = QUEUE_DELAY.labels(model_name)
        self.batches_run = 0
        self.batches_inline = 0
        self.waits_skipped = 0  # lone requests cut at once, without waiting for company
        self.waits_timed_out = 0  # batches cut because their oldest request had waited the delay

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def predict(self, model: LoadedModel, rows: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """The model's probabilities for `rows`, computed in some batch.

        Raises QueueFull (at once), DeadlineExpired (not run), or whatever the
        session raised. Cancelling the caller's task takes the request out of its batch.
        """
        if self._closed:
            raise QueueFull("serving is shutting down")
        waiting = self._waiting
        if len(waiting) >= self.max_queued:
            raise QueueFull(f"the batching queue is full ({self.max_queued} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use (or a new loop: tests run one per scenario)
            self._cancel_handles()
            self._loop = loop
        now = loop.time()
        item = _Waiting(model, rows, None if timeout_s is None else now + timeout_s, loop.create_future(), now)
        if waiting or self._running:
            self._company = True
        waiting.append(item)
        self._waiting_rows += len(rows)
        self._schedule()
        try:
            return await item.future
        except asyncio.CancelledError:  # the caller went away: its place in the queue is free again
            try:
                waiting.remove(item)
                self._waiting_rows -= len(item.rows)
            except ValueError:
                pass  # already taken into a batch; its answer is discarded
            raise

    async def close(self) -> None:
        """Refuses what still waits (QueueFull) and new requests; batches already running finish."""
        self._closed = True
        self._cancel_handles()
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(QueueFull("serving is shutting down"))
        self._waiting_rows = 0
        self._executor.shutdown(wait=False)

    # -- when to cut a batch ---------------------------------------------------------------------

    def _schedule(self) -> None:
        """Arranges the next cut: on the next loop turn, or when the oldest has waited long enough."""
        if self._cut_soon is not None or not self._waiting or self._running >= self.workers:
            return  # a cut is due already, or one runs when a worker frees up
        if (self.max_queue_delay_s <= 0.0 or self._full()
                or (not self._company and len(self._waiting) == 1 and not self._running)):
            if self.max_queue_delay_s > 0.0 and not self._full():
                self.waits_skipped += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._cut_soon = self._loop.call_soon(self._cut, False)
        elif self._timer is None:
            self._timer = self._loop.call_at(self._waiting[0].enqueued + self.max_queue_delay_s, self._cut, True)

    def _full(self) -> bool:
        """Enough rows for the oldest request's model wait at the front of the queue."""
        if self._waiting_rows < self.max_batch_rows:
            return False
        model = self._waiting[0].model
        rows = 0
        for item in self._waiting:
            if item.model is not model:
                return False
            rows += len(item.rows)
            if rows >= self.max_batch_rows:
                return True
        return False

    def _cancel_handles(self) -> None:
        for handle in (self._timer, self._cut_soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._cut_soon = None

    def _cut(self, by_timer: bool) -> None:
        self._cancel_handles()
        if self._closed or self._running >= self.workers:
            return
        batch = self._take()
        if batch:
            self.waits_timed_out += by_timer
            if by_timer and len(batch) == 1:
                self._company = False  # waited the whole delay and nobody came
            self._start(batch)
        self._schedule()

    def _take(self) -> list[_Waiting]:
        """Takes the next batch off the queue, leaving out what must not run."""
        loop_now = self._loop.time()
        waiting = self._waiting
        batch: list[_Waiting] = []
        rows = 0
        model = None
        while waiting:
            item = waiting[0]
            if item.future.done():  # cancelled by its caller: never run
                waiting.popleft()
                self._waiting_rows -= len(item.rows)
                continue
            if item.deadline is not None and item.deadline <= loop_now:
                waiting.popleft()
                self._waiting_rows -= len(item.rows)
                item.future.set_exception(DeadlineExpired(
                    f"the deadline passed after {loop_now - item.enqueued:.3f}s in the batching queue; not run"))
                continue
            if model is None:
                model = item.model
            elif item.model is not model or rows + len(item.rows) > self.max_batch_rows:
                break
            waiting.popleft()
            self._waiting_rows -= len(item.rows)
            batch.append(item)
            rows += len(item.rows)
        return batch

    # -- running a batch ----------------------------------------------------------------------

    def _start(self, batch: list[_Waiting]) -> None:
        model = batch[0].model
        started = self._loop.time()
        observe_delay = self._queue_delay.observe
        for item in batch:
            observe_delay(started - item.enqueued)
        matrix = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
        rows = len(matrix)
        self._batch_rows.observe(rows)
        self._batch_requests.observe(len(batch))
        self.batches_run += 1
        times = self._run_times.get(id(model))
        if times is None or times.model is not model:
            if len(self._run_times) >= 16:  # models come and go with swaps; keep the recent ones
                self._run_times.clear()
            times = self._run_times[id(model)] = _RunTimes(model)
        expected = times.by_size.get(rows.bit_length())
        if expected is not None and expected <= self.inline_max_s:
            self.batches_inline += 1
            began = time.perf_counter()
            try:
                probabilities = model.predict(matrix)
            except Exception as exc:
                self._failed(batch, model, rows, exc)
                return
            times.learn(rows, time.perf_counter() - began)
            self._answer(batch, probabilities)
            return
        self._running += 1
        future = self._loop.run_in_executor(self._executor, _timed, model, matrix)
        future.add_done_callback(lambda done: self._finished(done, batch, times, rows))

    def _finished(self, done: asyncio.Future, batch: list[_Waiting], times: _RunTimes, rows: int) -> None:
        self._running -= 1
        try:
            probabilities, seconds = done.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if isinstance(exc, asyncio.CancelledError):
                exc = QueueFull("serving is shutting down")
            self._failed(batch, times.model, rows, exc)
        else:
            times.learn(rows, seconds)
            self._answer(batch, probabilities)
        self._schedule()

    @staticmethod
    def _answer(batch: list[_Waiting], probabilities: np.ndarray) -> None:
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(probabilities)
            return
        offset = 0
        for item in batch:
            n = len(item.rows)
            if not item.future.done():
                item.future.set_result(probabilities[offset:offset + n])
            offset += n

    @staticmethod
    def _failed(batch: list[_Waiting], model: LoadedModel, rows: int, exc: BaseException) -> None:
        log.error("a batch failed in the session", exc_info=exc,
                  extra={"model": model.name, "version": model.version, "rows": rows, "requests": len(batch)})
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)


def _timed(model: LoadedModel, matrix: np.ndarray) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    probabilities = model.predict(matrix)
    return probabilities, time.perf_counter() - began
