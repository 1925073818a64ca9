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
refused and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
from confluent_kafka import Message, TopicPartition

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.common.kafka import Consumer, DecodeFailure, decode
from services.common.objectstore import IntegrityError, MinioObjectStore, ObjectNotFound, split_uri

from .metrics import MODEL_LOADS, MODEL_VERSION
from .onnx_model import InvalidModel, LoadedModel, load_model

log = logging.getLogger(__name__)

ModelVersion = registry_pb2.ModelVersion


class ModelSource(Protocol):
    """The registry as serving sees it."""

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version the alias points at, or None when it points nowhere yet."""

    def version(self, name: str, version: int) -> ModelVersion: ...


class RegistryModelSource:
    """`ModelSource` over the Registry's gRPC API."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._timeout = timeout_s

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        try:
            return self._stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias=alias),
                                       timeout=self._timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def version(self, name: str, version: int) -> ModelVersion:
        return self._stub.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=name, version=version), timeout=self._timeout)

    def close(self) -> None:
        self._channel.close()


class ArtifactFetcher:
    """Reads `s3://bucket/key` artifacts, verified against the registry's sha256."""

    def __init__(self, settings) -> None:
        self._settings = settings
        self._stores: dict[str, MinioObjectStore] = {}

    def fetch(self, uri: str, sha256: str) -> bytes:
        if not sha256:
            raise IntegrityError(f"the registry recorded no sha256 for {uri}; refusing to trust it")
        bucket, key = split_uri(uri)
        store = self._stores.get(bucket)
        if store is None:
            s = self._settings
            store = self._stores[bucket] = MinioObjectStore(
                s.s3_endpoint, s.s3_access_key, s.s3_secret_key, bucket, s.s3_secure)
        return store.get_bytes(key, expected_sha256=sha256)


class ModelManager:
    """Holds the serving `LoadedModel` and replaces it, one load at a time.

    `current` is read without a lock: replacing it is one reference assignment,
    so a request sees either the old model or the new one, never a mixture.
    """

    def __init__(self, name: str, alias: str, source: ModelSource,
                 fetch_artifact: Callable[[str, str], bytes], providers: Sequence[str]) -> None:
        self.name = name
        self.alias = alias
        self.source = source
        self._fetch = fetch_artifact
        self._providers = list(providers)
        self.current: LoadedModel | None = None
        self._lock = threading.Lock()  # one download/load at a time, in arrival order
        # Bumped by every event; a GetAlias answer that raced an event is older than it.
        self._generation = 0
        self._listeners: list[Callable[[LoadedModel], None]] = []
        MODEL_VERSION.labels(name).set(0)

    def on_change(self, listener: Callable[[LoadedModel], None]) -> None:
        self._listeners.append(listener)

    def follow_event(self, version: ModelVersion) -> bool:
        """Installs the version an ALIAS_MOVED event named; True when it now serves."""
        with self._lock:
            self._generation += 1
            if not version.artifact_uri:  # an event without the full record: ask for it
                version = self.source.version(self.name, version.version)
            return self._install(version)

    def reconcile(self) -> bool:
        """Installs whatever the registry says the alias points at now."""
        generation = self._generation
        version = self.source.alias(self.name, self.alias)
        if version is None:
            return False
        with self._lock:
            if generation != self._generation:
                return False  # an event arrived while we asked; it is the newer word
            return self._install(version)

    def _install(self, version: ModelVersion) -> bool:
        current = self.current
        if current and (current.version, current.sha256) == (version.version, version.artifact_sha256):
            return False
        where = {"model": self.name, "version": version.version, "artifact": version.artifact_uri}
        try:
            artifact = self._fetch(version.artifact_uri, version.artifact_sha256)
            model = load_model(artifact, name=self.name, version=version.version,
                               sha256=version.artifact_sha256, feature_names=version.feature_names,
                               providers=self._providers)
        except (IntegrityError, ObjectNotFound, InvalidModel, ValueError) as exc:
            # Permanent for this artifact: retrying cannot help, and serving it would be wrong.
            outcome = {IntegrityError: "refused_integrity", ObjectNotFound: "refused_missing"}.get(
                type(exc), "refused_invalid")
            MODEL_LOADS.labels(self.name, outcome).inc()
            log.error("artifact refused; the current model keeps serving",
                      extra={**where, "reason": str(exc), "outcome": outcome,
                             "serving_version": current.version if current else None})
            return False
        except Exception:
            MODEL_LOADS.labels(self.name, "failed").inc()
            raise  # transient (object store unreachable, ...): the caller retries
        self.current = model
        MODEL_LOADS.labels(self.name, "loaded").inc()
        MODEL_VERSION.labels(self.name).set(model.version)
        log.info("model swapped in", extra={**where, "previous_version": current.version if current else None,
                                            "providers": model.providers})
        for listener in self._listeners:
            listener(model)
        return True


class AliasEventHandler:
    """A ConsumerWorker handler for `driftline.registry.events`.

    Only the last ALIAS_MOVED of a batch for our model and alias matters: it is
    where the alias points now. A transient failure raises, so the worker
    rewinds and retries the batch.
    """

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def __call__(self, messages: Sequence[Message]) -> None:
        latest = None
        for msg in messages:
            try:
                event = decode(msg.value(), registry_pb2.RegistryEvent)
            except DecodeFailure:
                log.warning("skipping an undecodable registry event",
                            extra={"partition": msg.partition(), "offset": msg.offset()})
                continue
            if (event.kind == registry_pb2.RegistryEvent.ALIAS_MOVED
                    and event.model_name == self.manager.name and event.alias == self.manager.alias):
                latest = event
        if latest is not None:
            self.manager.follow_event(latest.model_version)


def position_at_end(consumer: Consumer, topic: str, timeout: float = 10.0) -> None:
    """Assigns every partition of `topic` at its current end and commits there.

    Explicit offsets rather than `auto.offset.reset=latest`: "latest" is resolved
    lazily, so an event published just after start could be skipped. The commit
    makes the worker's rewind-on-failure return here, not to the topic's start.
    """
    raw = consumer.raw
    raw.unsubscribe()  # the group's own partitions, not a share of them: every instance sees every move
    partitions = raw.list_topics(topic, timeout=timeout).topics[topic].partitions
    ends = [TopicPartition(topic, p, raw.get_watermark_offsets(TopicPartition(topic, p), timeout)[1])
            for p in sorted(partitions)]
    raw.assign(ends)
    raw.commit(offsets=ends, asynchronous=False)


class AliasPoller(threading.Thread):
    """Asks the registry where the alias points: often until a model loads, rarely after."""

    def __init__(self, manager: ModelManager, retry_s: float, resync_s: float) -> None:
        super().__init__(name="alias-poller", daemon=True)
        self.manager = manager
        self.retry_s = retry_s
        self.resync_s = resync_s
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.manager.reconcile()
            except Exception as exc:  # registry or object store not reachable yet
                log.warning("cannot reach the registry's alias yet; retrying",
                            extra={"model": self.manager.name, "error": str(exc)})
            loaded = self.manager.current is not None
            if loaded and not self.resync_s:
                self._stopping.wait()  # events alone keep it current from here
            else:
                self._stopping.wait(self.resync_s if loaded else self.retry_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
