"""The model lifecycle: which version serves, and how a new one replaces it.

Where the alias points is the registry's to say. Serving learns it two ways:

* `AliasPoller` asks `Registry.GetAlias` — at start (retrying until an alias
  exists) and then now and then, to heal an event it might have missed;
* `AliasEventHandler` follows `ALIAS_MOVED` on `driftline.registry.events`,
  read from the end of the topic as it was *before* the first GetAlias, so no
  move can fall between the two.

Both hand a `ModelVersion` to `ModelManager`, which downloads the artifact,
verifies its sha256 against the registry's, loads and warms it, and only then
swaps the reference that Predict reads. Anything wrong with the artifact is
refused and the old model keeps serving; a version that cannot be fetched for
now (the object store or the registry away) stays pending and is retried with
a back-off while the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc
from confluent_kafka import Message

from driftline.v1 import registry_pb2
from services.common.deadletter import DECODE, DeadLetterQueue
from services.common.kafka import DecodeFailure, decode
from services.common.objectstore import IntegrityError, ObjectNotFound, ObjectStores
from services.common.registry_client import ModelVersion, RegistryClient
from services.common.threads import Backoff, StoppableThread

from .metrics import ALIAS_LOADS, MODEL_LOADS, MODEL_VERSION
from .onnx_model import CPU, InvalidModel, LoadedModel, SessionConfig, load_model

log = logging.getLogger(__name__)

# Registry answers that say it is away for now, not that the request is wrong: retried until it is back.
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


def fetch_artifact(stores: ObjectStores, uri: str, sha256: str) -> bytes:
    """The artifact at `s3://bucket/key`, verified against the registry's sha256 (none recorded: refused)."""
    if not sha256:
        raise IntegrityError(f"the registry recorded no sha256 for {uri}; refusing to trust it")
    return stores.read_bytes(uri, sha256)


class ModelCache:
    """Recently served `LoadedModel`s by (version, sha256), shared by the aliases of one process.

    A rollback (an alias moved back), or a canary promoted to production, finds its
    model here and swaps at once: no download, no load, no second session of the same
    bytes. Models still serving are always found; `keep` more recently replaced ones stay.
    """

    def __init__(self, keep: int = 1) -> None:
        self.keep = max(0, keep)
        self._serving: dict[str, LoadedModel] = {}  # alias → its current model
        self._replaced: list[LoadedModel] = []  # most recent last
        self._lock = threading.Lock()

    def find(self, version: int, sha256: str) -> LoadedModel | None:
        with self._lock:
            for model in (*self._serving.values(), *reversed(self._replaced)):
                if (model.version, model.sha256) == (version, sha256):
                    return model
        return None

    def serving(self, alias: str, model: LoadedModel | None) -> None:
        with self._lock:
            previous = self._serving.pop(alias, None)
            if model is not None:
                self._serving[alias] = model
                self._replaced = [m for m in self._replaced if m is not model]
            if previous is not None and previous is not model and previous not in self._serving.values():
                self._replaced.append(previous)
            del self._replaced[:max(0, len(self._replaced) - self.keep)]


class ModelManager:
    """Holds the `LoadedModel` one alias points at and replaces it, one load at a time.

    `current` is read without a lock: replacing it is one reference assignment,
    so a request sees either the old model or the new one, never a mixture.

    A new version is downloaded, verified against the registry's sha256, loaded and
    warmed up before `current` changes; anything wrong with it (hash mismatch, missing
    object, a model onnxruntime cannot load or run) is refused, counted and logged,
    and the old version keeps serving. A transient failure (object store or registry
    unreachable) leaves the version pending, retried by `retry_pending` with a back-off
    (0.5 s doubling to 10 s) until it installs or newer word on the alias replaces it.
    An `optional` alias (canary, shadow) may point nowhere: then `current` is None.
    """

    def __init__(self, name: str, alias: str, source: RegistryClient,
                 fetch_artifact: Callable[[str, str], bytes], providers: Sequence[str] = (CPU,), *,
                 config: SessionConfig | None = None, variant: str = "production", optional: bool = False,
                 warmup_rows: Sequence[int] = (2,), cache: ModelCache | None = None) -> None:
        self.name = name
        self.alias = alias
        self.variant = variant
        self.optional = optional
        self.source = source
        self._fetch = fetch_artifact
        self._config = config or SessionConfig(providers=tuple(providers))
        self._warmup_rows = tuple(warmup_rows)
        self._cache = cache if cache is not None else ModelCache(0)
        self.current: LoadedModel | None = None
        self._lock = threading.Lock()  # one download/load at a time, in arrival order
        # Bumped by every event; a GetAlias answer that raced an event is older than it.
        self._generation = 0
        # Artifacts onnxruntime refused: the same bytes fail the same way, so not loaded again.
        self._refused: set[tuple[int, str]] = set()
        self._listeners: list[Callable[[ModelManager, LoadedModel | None], None]] = []
        # The version the alias should serve that a transient failure kept out, and its next try.
        self._pending: ModelVersion | None = None
        self._retry_at = 0.0
        self._backoff = Backoff()
        self._pending_listeners: list[Callable[[], None]] = []
        if not optional:
            MODEL_VERSION.labels(name).set(0)

    def on_change(self, listener: Callable[[ModelManager, LoadedModel | None], None]) -> None:
        self._listeners.append(listener)

    def follow_event(self, version: ModelVersion) -> bool:
        """Installs the version an ALIAS_MOVED event named; True when it now serves.

        A transient failure (the registry or the object store unreachable) does not raise: the
        version is kept as pending and retried with a back-off (`retry_pending`) until it installs
        or a newer word on the alias replaces it. What raises is a failure the record itself may
        cause every time (the registry refusing the lookup for a reason other than unavailability)."""
        with self._lock:
            self._generation += 1
            self._pending = None
            if not version.version:  # the alias points nowhere now
                return self._clear("the registry event says the alias points nowhere")
            return self._follow(version)

    def retry_pending(self) -> bool:
        """Installs the pending version once its back-off has passed; True when it now serves."""
        with self._lock:
            version = self._pending
            if version is None or time.monotonic() < self._retry_at:
                return False
            self._pending = None
            return self._follow(version)

    def retry_in(self) -> float | None:
        """Seconds until the pending version is due for another try; None: nothing pending."""
        if self._pending is None:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def on_pending(self, listener: Callable[[], None]) -> None:
        """`listener()` is called whenever a version is left pending (the poller wakes for it)."""
        self._pending_listeners.append(listener)

    def _follow(self, version: ModelVersion) -> bool:
        if not version.artifact_uri:  # an event without the full record: ask for it
            try:
                version = self.source.version(self.name, version.version)
            except grpc.RpcError as exc:
                if exc.code() in _UNREACHABLE:
                    return self._postpone(version, exc)
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self._count("refused_missing")
                log.error("the registry does not know the version an event named; the current model "
                          "keeps serving", extra={"model": self.name, "alias": self.alias,
                                                  "version": version.version})
                return False
        return self._install(version)

    def _postpone(self, version: ModelVersion, error: Exception) -> bool:
        self._pending = version
        wait = self._backoff.next()
        self._retry_at = time.monotonic() + wait
        self._count("failed")
        log.warning("cannot install the version yet; the current model keeps serving, retrying",
                    extra={"model": self.name, "alias": self.alias, "version": version.version,
                           "retry_in_s": wait, "error": str(error)})
        for listener in self._pending_listeners:
            listener()
        return False

    def reconcile(self) -> bool:
        """Installs whatever the registry says the alias points at now."""
        generation = self._generation
        version = self.source.alias(self.name, self.alias)
        with self._lock:
            if generation != self._generation:
                return False  # an event arrived while we asked; it is the newer word
            self._pending = None
            if version is None:
                return self._clear("the registry says the alias points nowhere")
            return self._install(version)

    def _count(self, outcome: str) -> None:
        if outcome not in ("reused", "cleared"):
            MODEL_LOADS.labels(self.name, outcome).inc()
        ALIAS_LOADS.labels(self.name, self.alias, outcome).inc()

    def _clear(self, why: str) -> bool:
        if not self.optional or self.current is None:
            return False  # the serving alias never unloads: a model that answers beats none
        previous = self.current
        self.current = None
        self._cache.serving(self.alias, None)
        self._count("cleared")
        log.info("alias cleared; its variant is off", extra={"model": self.name, "alias": self.alias,
                                                             "previous_version": previous.version, "why": why})
        self._notify(None)
        return True

    def _install(self, version: ModelVersion) -> bool:
        current = self.current
        key = (version.version, version.artifact_sha256)
        if current and (current.version, current.sha256) == key:
            return False
        where = {"model": self.name, "alias": self.alias, "version": version.version,
                 "artifact": version.artifact_uri, "serving_version": current.version if current else None}
        if key in self._refused:
            log.warning("the alias points at an artifact refused before; the current model keeps serving",
                        extra=where)
            return False
        model = self._cache.find(*key)
        outcome = "reused"
        if model is None:
            outcome = "loaded"
            started = time.perf_counter()
            try:
                artifact = self._fetch(version.artifact_uri, version.artifact_sha256)
                model = load_model(artifact, name=self.name, version=version.version,
                                   sha256=version.artifact_sha256, feature_names=version.feature_names,
                                   config=self._config, warmup_rows=self._warmup_rows)
            except (IntegrityError, ObjectNotFound, InvalidModel, ValueError) as exc:
                # Permanent for this artifact: retrying cannot help, and serving it would be wrong.
                outcome = {IntegrityError: "refused_integrity", ObjectNotFound: "refused_missing"}.get(
                    type(exc), "refused_invalid")
                if outcome == "refused_invalid":
                    self._refused.add(key)
                self._count(outcome)
                log.error("artifact refused; the current model keeps serving",
                          extra={**where, "reason": str(exc), "outcome": outcome})
                return False
            except Exception as exc:  # transient (object store unreachable, ...)
                return self._postpone(version, exc)
            where["load_s"] = round(time.perf_counter() - started, 3)
        self._backoff.reset()
        self.current = model
        self._cache.serving(self.alias, model)
        self._count(outcome)
        if not self.optional:
            MODEL_VERSION.labels(self.name).set(model.version)
        log.info("model swapped in", extra={**where, "previous_version": where.pop("serving_version"),
                                            "outcome": outcome, "providers": model.providers})
        self._notify(model)
        return True

    def _notify(self, model: LoadedModel | None) -> None:
        for listener in self._listeners:
            try:
                listener(self, model)
            except Exception:
                log.exception("a model-change listener failed", extra={"model": self.name, "alias": self.alias})


class AliasEventHandler:
    """A ConsumerWorker handler for `driftline.registry.events`.

    For each alias followed (production, canary, shadow), only the last ALIAS_MOVED of a
    batch for our model matters: it is where the alias points now. An event seen before (the
    registry publishes at least once; the worker may hand a batch over again) is skipped by its
    `event_id`, so a repeat of an older move cannot move the alias back. Bytes that are no
    RegistryEvent go to `dead_letters` (stage `decode`); a failure that raises (see
    `ModelManager.follow_event`) is the worker's to retry and, after `max_attempts`, to dead-letter.
    """

    def __init__(self, managers: ModelManager | Sequence[ModelManager],
                 dead_letters: DeadLetterQueue | None = None, remember: int = 10_000) -> None:
        managers = [managers] if isinstance(managers, ModelManager) else list(managers)
        self.managers = {m.alias: m for m in managers}
        self.name = managers[0].name
        self.dead_letters = dead_letters
        self.remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()  # event ids applied, oldest first
        self._dead: OrderedDict[tuple[str, int, int], None] = OrderedDict()  # records dead-lettered

    def __call__(self, messages: Sequence[Message]) -> None:
        latest: dict[str, registry_pb2.RegistryEvent] = {}
        applied: list[str] = []
        for msg in messages:
            try:
                event = decode(msg.value(), registry_pb2.RegistryEvent)
            except DecodeFailure as exc:
                self._undecodable(msg, str(exc))
                continue
            if event.event_id:
                if event.event_id in self._seen or event.event_id in applied:
                    continue
                applied.append(event.event_id)
            if (event.kind == registry_pb2.RegistryEvent.ALIAS_MOVED
                    and event.model_name == self.name and event.alias in self.managers):
                latest.pop(event.alias, None)
                latest[event.alias] = event  # in arrival order of each alias's last move
        for alias, event in latest.items():
            self.managers[alias].follow_event(event.model_version)
        for event_id in applied:  # only once the batch succeeded: a retried batch applies them again
            _remember(self._seen, event_id, self.remember)

    def _undecodable(self, msg: Message, reason: str) -> None:
        where = (msg.topic(), msg.partition(), msg.offset())
        if where in self._dead:
            return  # a batch handed over again: dead-lettered already
        if self.dead_letters is None:
            log.warning("skipping an undecodable registry event",
                        extra={"partition": msg.partition(), "offset": msg.offset(), "reason": reason})
        else:
            self.dead_letters.send(msg, reason, stage=DECODE)
        _remember(self._dead, where, self.remember)


def _remember(seen: OrderedDict, key, most: int) -> None:
    seen[key] = None
    if len(seen) > most:
        seen.popitem(last=False)


class AliasPoller(StoppableThread):
    """Asks the registry where the aliases point: often until the serving model loads, rarely after;
    and retries, with a back-off, a version a transient failure left pending."""

    def __init__(self, managers: ModelManager | Sequence[ModelManager], retry_s: float, resync_s: float) -> None:
        super().__init__("alias-poller")
        self.managers = [managers] if isinstance(managers, ModelManager) else list(managers)
        self.manager = self.managers[0]  # the serving alias; the others are optional
        self.retry_s = retry_s
        self.resync_s = resync_s
        self._kicked = threading.Event()
        for manager in self.managers:
            manager.on_pending(self._kicked.set)

    def wake(self) -> None:
        self._kicked.set()

    def run(self) -> None:
        next_reconcile = 0.0
        while not self.stopping:
            if time.monotonic() >= next_reconcile:
                self._each("reconcile", "cannot reach the registry's alias yet; retrying")
                interval = self.resync_s if self.manager.current is not None else self.retry_s
                next_reconcile = time.monotonic() + interval if interval else float("inf")
            self._each("retry_pending", "the retried install failed")
            waits = [next_reconcile - time.monotonic(),
                     *(due for m in self.managers if (due := m.retry_in()) is not None)]
            wait = min(waits)
            self._kicked.wait(None if wait == float("inf") else max(0.0, wait))
            self._kicked.clear()

    def _each(self, action: str, failure: str) -> None:
        for manager in self.managers:
            try:
                getattr(manager, action)()
            except Exception as exc:  # registry not reachable yet, or a lookup it refused
                log.warning(failure, extra={"model": manager.name, "alias": manager.alias, "error": str(exc)})

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
