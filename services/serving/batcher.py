"""Dynamic batching: single requests that arrive together run as one ONNX Runtime call.

Every request (Predict and ModelInfer alike) is submitted here with the model it
picked up on arrival and its own deadline. A collector task on the event loop
takes the oldest waiting request and gathers whatever else arrives, until the
batch holds `max_batch_rows` rows or the oldest has waited `max_queue_delay_s`;
then the batch runs in one session call on a worker thread and each caller gets
its own slice of the answer. While a batch runs, the next one gathers, so under
load batches fill by themselves and the delay is only paid when traffic is thin.

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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .metrics import BATCH_REQUESTS, BATCH_ROWS, QUEUE_DELAY
from .onnx_model import LoadedModel

log = logging.getLogger(__name__)


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


class Batcher:
    """Batches `predict` calls per model; one per serving process."""

    def __init__(self, *, max_batch_rows: int = 64, max_queue_delay_s: float = 0.002,
                 max_queued: int = 1024, workers: int = 1, model_name: str = "") -> None:
        if max_batch_rows < 1 or max_queued < 1 or workers < 1:
            raise ValueError("max_batch_rows, max_queued and workers must be at least 1")
        self.max_batch_rows = max_batch_rows
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.max_queued = max_queued
        self.workers = workers
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._collectors: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="batch")
        self._batch_rows = BATCH_ROWS.labels(model_name)
        self._batch_requests = BATCH_REQUESTS.labels(model_name)
        self._queue_delay = QUEUE_DELAY.labels(model_name)
        self.batches_run = 0

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def predict(self, model: LoadedModel, rows: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """The model's probabilities for `rows`, computed in some batch.

        Raises QueueFull (at once), DeadlineExpired (not run), or whatever the
        session raised. Cancelling the caller's task takes the request out of its batch.
        """
        loop = asyncio.get_running_loop()
        self._start(loop)
        if len(self._waiting) >= self.max_queued:
            raise QueueFull(f"the batching queue is full ({self.max_queued} requests waiting); retry later")
        now = loop.time()
        item = _Waiting(model, rows, None if timeout_s is None else now + timeout_s,
                        loop.create_future(), now)
        self._waiting.append(item)
        self._arrived.set()
        try:
            return await item.future
        except asyncio.CancelledError:  # the caller went away: its place in the queue is free again
            try:
                self._waiting.remove(item)
            except ValueError:
                pass  # already taken into a batch; its answer is discarded
            raise

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._collectors:
            return
        self._arrived = asyncio.Event()
        self._collectors = [loop.create_task(self._collect(), name=f"batcher-{i}") for i in range(self.workers)]

    async def close(self) -> None:
        for task in self._collectors:
            task.cancel()
        for task in self._collectors:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._collectors = []
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(QueueFull("serving is shutting down"))
        self._executor.shutdown(wait=False)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            oldest = self._waiting[0]
            flush_at = oldest.enqueued + self.max_queue_delay_s
            while self._rows_ready(oldest.model) < self.max_batch_rows:
                remaining = flush_at - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(batch, loop)

    def _rows_ready(self, model: LoadedModel) -> int:
        """Rows waiting for `model` at the front of the queue (enough to stop gathering?)."""
        rows = 0
        for item in self._waiting:
            if item.model is not model:
                break
            rows += len(item.rows)
            if rows >= self.max_batch_rows:
                break
        return rows

    def _take(self) -> list[_Waiting]:
        """Takes the next batch off the queue, leaving out what must not run."""
        loop_now = asyncio.get_running_loop().time()
        batch: list[_Waiting] = []
        rows = 0
        model = None
        while self._waiting:
            item = self._waiting[0]
            if item.future.done():  # cancelled by its caller: never run
                self._waiting.popleft()
                continue
            if item.deadline is not None and item.deadline <= loop_now:
                self._waiting.popleft()
                item.future.set_exception(DeadlineExpired(
                    f"the deadline passed after {loop_now - item.enqueued:.3f}s in the batching queue; not run"))
                continue
            if model is None:
                model = item.model
            elif item.model is not model or rows + len(item.rows) > self.max_batch_rows:
                break
            self._waiting.popleft()
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _run(self, batch: list[_Waiting], loop: asyncio.AbstractEventLoop) -> None:
        model = batch[0].model
        started = loop.time()
        for item in batch:
            self._queue_delay.observe(started - item.enqueued)
        matrix = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
        self._batch_rows.observe(len(matrix))
        self._batch_requests.observe(len(batch))
        self.batches_run += 1
        try:
            probabilities = await loop.run_in_executor(self._executor, model.predict, matrix)
        except Exception as exc:
            log.exception("a batch failed in the session", extra={"model": model.name, "version": model.version,
                                                                   "rows": len(matrix), "requests": len(batch)})
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in batch:
            n = len(item.rows)
            if not item.future.done():
                item.future.set_result(probabilities[offset:offset + n])
            offset += n

