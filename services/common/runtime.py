"""How a service process lives: a gRPC server and Kafka worker threads that
start together and stop together, cleanly, on SIGTERM/SIGINT.

A worker finishes the batch in hand and commits it before it stops, so a
stopped service neither loses nor (beyond at-least-once) repeats work.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import grpc
import urllib3
from confluent_kafka import KafkaException, Message

from .deadletter import HANDLE, DeadLetterQueue
from .errors import DeadlineExceeded, Unavailable
from .grpc_server import GrpcServer, Service, install_signal_handlers
from .kafka import Consumer, DeliveryError, exit_if_fatal
from .settings import CommonSettings
from .threads import Backoff, StoppableThread
from .tls import InsecureBind
from .telemetry import configure_logging, start_metrics

log = logging.getLogger(__name__)


class ConsumerWorker(StoppableThread):
    """Polls a consumer, hands each batch to `handle`, then commits.

    `handle` must have produced (and flushed) everything the batch leads to
    before it returns. A batch whose handler raises is handed over again after a
    back-off, so a failure never skips a record; after `max_attempts` failures it
    is handed over record by record, and a record that fails `max_attempts` times
    on its own is a poison record: it goes to `dead_letters` (stage `handle`, the
    error as its reason) and the partition moves on. Without `dead_letters` a
    failing batch is retried until it succeeds. Since part of a batch may thus be
    handed over twice, handlers de-duplicate by id.
    An outage is not the record's fault: a failure `infrastructure_failure` names
    (Kafka, the network, an unavailable service) is retried without counting as
    an attempt, and a dead letter that cannot be written is retried until it is.
    A handler that commits its offsets itself (inside a Kafka transaction)
    passes `commits_offsets=True`, and the worker then does not commit again.
    """

    def __init__(self, name: str, consumer: Consumer, handle: Callable[[Sequence[Message]], None],
                 *, max_records: int = 500, poll_timeout: float = 0.5,
                 on_idle: Callable[[], None] | None = None, commits_offsets: bool = False,
                 dead_letters: DeadLetterQueue | None = None, max_attempts: int = 5) -> None:
        super().__init__(name)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.consumer = consumer
        self.handle = handle
        self.commits_offsets = commits_offsets
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        self.on_idle = on_idle
        self.dead_letters = dead_letters
        self.max_attempts = max_attempts
        self.processed = 0
        self.failures = 0

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                messages = self.consumer.poll_messages(self.max_records, self.poll_timeout)
            except KafkaException as exc:
                exit_if_fatal(exc)
                log.exception("poll failed", extra={"worker": self.name})
                self.wait(backoff.next())
                continue
            backoff.reset()
            if not messages:
                if self.on_idle:
                    self._guarded(self.on_idle, "idle work failed")
                continue
            if not self._handled(messages):
                # Cut short by the stop: the batch is uncommitted and will be redelivered.
                log.info("batch interrupted by the stop; left uncommitted", extra={"worker": self.name})
                break
            self.processed += len(messages)
            if not self.commits_offsets:
                self._guarded(self.consumer.commit, "commit failed; the next commit covers the batch")
        self.consumer.close()

    def _handled(self, messages: Sequence[Message]) -> bool:
        """Hands the batch over until it succeeds, or each of its poison records is dead-lettered;
        False when the worker is stopped first."""
        error = self._attempt(messages, self.max_attempts if self.dead_letters else None)
        if error is None:
            return True
        if self.stopping:
            return False
        assert self.dead_letters is not None
        log.warning("batch failed %d times; handling it record by record", self.max_attempts,
                    extra={"worker": self.name, "records": len(messages)})
        for message in messages:
            error = self._attempt([message], self.max_attempts)
            if self.stopping:
                return False
            if error is not None and not self._dead_lettered(message, error):
                return False
        return True

    def _dead_lettered(self, message: Message, error: Exception) -> bool:
        """Writes the dead letter, retrying while the broker does not take it; False if stopped."""
        assert self.dead_letters is not None
        backoff = Backoff()
        while not self.stopping:
            try:
                self.dead_letters.send(message, f"{type(error).__name__}: {error}", stage=HANDLE)
                return True
            except Exception:
                log.exception("dead letter not written; retrying", extra={"worker": self.name})
                self.wait(backoff.next())
        return False

    def _attempt(self, messages: Sequence[Message], attempts: int | None) -> Exception | None:
        """None once `handle(messages)` succeeds; its last error after `attempts` failures (None:
        no limit), or when the worker stops."""
        backoff = Backoff()
        failed = 0
        while True:
            try:
                self.handle(messages)
                return None
            except Exception as exc:
                exit_if_fatal(exc)  # a fenced consumer: the next process takes over
                if self.stopping:
                    return exc
                self.failures += 1
                if infrastructure_failure(exc):
                    log.warning("handler failed on an outage; retrying", exc_info=True, extra={
                        "worker": self.name, "records": len(messages)})
                else:
                    failed += 1
                    log.exception("handler failed", extra={
                        "worker": self.name, "records": len(messages), "attempt": failed})
                    if attempts is not None and failed >= attempts:
                        return exc
                self.wait(backoff.next())

    def _guarded(self, action: Callable[[], None], message: str) -> None:
        try:
            action()
        except Exception:
            log.exception(message, extra={"worker": self.name})


def infrastructure_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is an outage of something the handler talks to rather
    than a fault of the record: Kafka, the network, a gRPC peer or service that is unavailable.

    >>> infrastructure_failure(DeliveryError("1 records failed")), infrastructure_failure(ValueError("x"))
    (True, False)
    >>> infrastructure_failure(RuntimeError("wrapped")) or infrastructure_failure(Unavailable("registry"))
    True
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (KafkaException, DeliveryError, ConnectionError, TimeoutError, Unavailable,
                            DeadlineExceeded, urllib3.exceptions.HTTPError)):
            return True
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) and exc.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ServiceProcess:
    """A gRPC server plus background workers, started and stopped as one."""

    def __init__(self, name: str, settings: CommonSettings, services: Iterable[Service] = (),
                 workers: Iterable[threading.Thread] = (), on_stop: Iterable[Callable[[], None]] = (),
                 grpc_options: Iterable[tuple[str, object]] = ()) -> None:
        self.name = name
        self.settings = settings
        self.grpc = GrpcServer(
            name, services, port=settings.grpc_port, host=settings.grpc_host, options=grpc_options,
            advertised_host=settings.advertised_host, settings=settings) if services else None
        self.workers = list(workers)
        self.on_stop = list(on_stop)
        self._stop_requested = asyncio.Event()

    @property
    def address(self) -> str | None:
        return self.grpc.address if self.grpc else None

    async def start(self) -> None:
        for worker in self.workers:
            worker.start()
        if self.grpc:
            await self.grpc.start()

    async def stop(self) -> None:
        """The gRPC server (in-flight calls finish), then `finish_calls`, then each worker in
        order, then the `on_stop` callbacks."""
        if self.grpc:
            await self.grpc.stop(self.settings.shutdown_grace_s)
        await self.finish_calls()
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        for callback in self.on_stop:
            await asyncio.to_thread(callback)
        log.info("stopped", extra={"service": self.name})

    async def finish_calls(self) -> None:
        """What the answered calls left running once the gRPC server has stopped, before the workers
        stop (serving's batcher and mirrored requests); nothing by default."""

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        install_signal_handlers(self.request_stop)
        await self.start()
        log.info("running", extra={"service": self.name, "grpc": self.address})
        await self._stop_requested.wait()
        log.info("stopping", extra={"service": self.name})
        await self.stop()


def run_event_loop(main, loop: str = "uvloop") -> None:
    """Runs `main` to completion on uvloop when asked for and installed, else on asyncio's loop.
    uvloop's cheaper callbacks and I/O matter most to gRPC servers, whose calls are each a few
    event-loop turns (grpc.aio supports it)."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; running on asyncio's own event loop")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def tune_gc(gen0_threshold: int) -> None:
    """Moves everything built at startup out of the collector's sight (`gc.freeze`) and, when
    `gen0_threshold` > 0, collects the youngest generation every that many allocations instead
    of every 700. A service that keeps a large, churning state of small tuples (the monitor's
    label join holds up to 100k pending entries) otherwise spends a large share of its CPU
    rescanning that state in collections that free nothing (measured in bench/monitor_throughput.py)."""
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def run_service(name: str, settings: CommonSettings,
                build: Callable[[CommonSettings], "ServiceProcess | asyncio.Future"]) -> None:
    """The body of every `python -m services.<name>`."""
    configure_logging(name, settings.log_level, settings.log_json)
    start_metrics(settings.metrics_port, settings.metrics_host, settings)

    async def main() -> None:
        process = build(settings)
        if asyncio.iscoroutine(process):
            process = await process
        tune_gc(settings.gc_gen0_threshold)
        await process.run_until_stopped()

    started = time.monotonic()
    try:
        run_event_loop(main(), settings.event_loop)
    except InsecureBind as exc:
        # A deployment's mistake, not a crash: one line saying which settings fix it, no traceback.
        log.error("refusing to start: %s", exc, extra={"service": name})
        raise SystemExit(2) from None
    log.info("exited", extra={"service": name, "uptime_s": round(time.monotonic() - started, 1)})
