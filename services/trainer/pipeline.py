"""One training request, start to finish: dataset version → model → ONNX →
upload → register → promote. Raises on any failure; the worker reports it.

Every registry call names the request (its `request_id` is the idempotency key
of the registration and of the promotion), so a request run again, after a
trainer was killed in the middle of it or a registry call's answer was lost, makes
no second version and no second decision: a request whose version is
registered already is not trained again but taken up where it stopped, and one
whose decision is recorded already is answered from it.

A request with `reuse_candidates` scores that many recent versions on the window's first
`reuse_rows` rows, and promotes (through the gate, on those rows) one that does there what
it did on its own held-out rows; else it scores them beside the fresh candidate on the
candidate's eval slice (reuse.py), and one whose concept is back there too and that does as
well is promoted on that slice instead. A reused version registers nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc
import numpy as np
import pyarrow as pa
import torch

from driftline.v1 import registry_pb2, registry_pb2_grpc, training_pb2
from services.common.datasets import dataset_id, eval_key, manifest_key
from services.common.objectstore import ObjectStore, sha256_of, split_uri
from services.common.reference import DecileBins, TrainingReference
from services.common.threads import Backoff

from .dataset import Cancelled, Dataset, SegmentReader, Window, features_and_labels, to_parquet, wait_for_rows
from .export import INPUT_NAME, OUTPUT_NAME, check_matches_torch, export_onnx, predict_proba, session
from .recent import RecentRows
from .reference import feature_references
from .reuse import Scored, concept_is_back, score_earlier, standard_error
from .settings import TrainerSettings
from .train import TrainParams, train

log = logging.getLogger(__name__)

MIN_TRAINABLE_ROWS = 10  # fewer cannot be split into train and eval meaningfully


@dataclass(frozen=True)
class Candidate:
    """A trained, exported and evaluated model, not registered yet."""

    onnx: bytes
    feature_names: list[str]
    n_classes: int
    metrics: dict[str, float]
    reference: TrainingReference  # of the training rows' features and positive-class scores

    def metadata(self, name: str, data_id: str, version: int = 0) -> dict:
        """metadata.json; version 0 means "assigned at registration"."""
        return {
            "name": name,
            "version": version,
            "feature_names": self.feature_names,
            "classes": list(range(self.n_classes)),
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "dataset_id": data_id,
            "metrics": self.metrics,
            **self.reference.to_metadata(),  # "reference" and "scores_reference"
        }


class TrainingPipeline:
    def __init__(self, settings: TrainerSettings, store: ObjectStore, registry: registry_pb2_grpc.RegistryStub,
                 code_version: str, cancelled: threading.Event, recent: RecentRows | None = None) -> None:
        self.settings = settings
        self.recent = recent
        self.store = store
        self.registry = registry
        self.code_version = code_version
        self.cancelled = cancelled
        self._readers: dict[str, SegmentReader] = {}
        self._readers_lock = threading.Lock()
        self.defaults = TrainParams(epochs=settings.epochs, batch_size=settings.batch_size, hidden=settings.hidden,
                                    learning_rate=settings.learning_rate, seed=settings.seed,
                                    min_steps=settings.train_min_steps,
                                    min_steps_max_epochs=settings.train_min_steps_max_epochs,
                                    max_steps=settings.train_max_steps,
                                    quantiles=settings.train_quantiles,
                                    selection_share=settings.train_selection_share)
        torch.set_num_threads(settings.torch_threads)

    def run(self, request: training_pb2.TrainingRequest,
            superseded: Callable[[], bool] = lambda: False) -> training_pb2.TrainingResult:
        """Trains, registers and promotes the request's version; `superseded` (asked after the wait
        for rows and after every epoch) cancels it with Superseded."""
        s = self.settings
        name = request.model_name or s.model_name
        stream = request.stream or s.stream
        params = self.defaults.with_overrides(request.params)  # bad params fail before any waiting
        if request.trigger == training_pb2.TrainingRequest.DRIFT and "quantile_steps" not in request.params:
            params = replace(params, quantile_steps=self._production_net(name))
        version, eval_uri = self._registered(name, request.request_id), ""
        decision = None if version is not None else self._decided(name, request.request_id)
        if decision is not None:
            version = self._call("GetModelVersion", registry_pb2.GetModelVersionRequest(
                name=name, version=decision.candidate_version))
            log.info("decision already recorded for this request: not training again",
                     extra={"request_id": request.request_id, "version": version.version})
        elif version is None:
            version, eval_uri = self._train_and_register(request, name, stream, params, superseded)
        else:
            log.info("version already registered for this request: not training again",
                     extra={"request_id": request.request_id, "version": version.version})
        reused = bool(eval_uri) or (decision is not None and decision.eval_uri != version.eval_uri)
        if decision is None:
            if not reused:  # an earlier version was installed when it was registered
                self._install(version)
            log.info("registered; promoting", extra={"request_id": request.request_id, "version": version.version,
                                         "reused": reused})
            decision = self._call("Promote", registry_pb2.PromoteRequest(
                name=name, version=version.version, alias=s.promote_alias, idempotency_key=request.request_id,
                eval_uri=eval_uri))
        log.info("trained and gated", extra={"request_id": request.request_id, "version": version.version,
                                             "dataset_id": version.dataset_id, "reused": reused,
                                             "accuracy": version.metrics.get("accuracy"),
                                             "promoted": decision.promoted, "reason": decision.reason})
        result = training_pb2.TrainingResult(
            request_id=request.request_id, model_name=name, status=training_pb2.TrainingResult.SUCCEEDED,
            version=version.version, dataset_id=version.dataset_id, promoted=decision.promoted, reused=reused,
            metrics={**version.metrics, "gate_candidate_accuracy": decision.candidate_accuracy,
                     "gate_baseline_accuracy": decision.baseline_accuracy,
                     "gate_baseline_version": float(decision.baseline_version)})
        result.finished_at.GetCurrentTime()
        return result

    def _decided(self, name: str, request_id: str) -> registry_pb2.GateDecision | None:
        """The gate's decision on this request by an earlier run of it (one that reused a version
        registers nothing, so only its decision says it ran)."""
        try:
            decisions = self._call("GetGateDecisions", registry_pb2.GetGateDecisionsRequest(name=name)).decisions
        except RegistryCallFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # no model of that name yet
                return None
            raise
        return next((d for d in decisions if d.idempotency_key == request_id), None)

    def _registered(self, name: str, request_id: str) -> registry_pb2.ModelVersion | None:
        """The version registered for this request by an earlier run of it, if any."""
        try:
            return self._call("GetModelVersion", registry_pb2.GetModelVersionRequest(
                name=name, idempotency_key=request_id))
        except RegistryCallFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def _train_and_register(self, request: training_pb2.TrainingRequest, name: str, stream: str,
                            params: TrainParams, superseded: Callable[[], bool]) -> tuple[registry_pb2.ModelVersion, str]:
        """The version to promote and, when it is an earlier one that scored best, the eval slice
        to judge it on ("" for the version trained now: the gate takes its own slice)."""
        s = self.settings
        window = Window(request.window_start.ToMilliseconds() if request.HasField("window_start") else 0,
                        request.window_end.ToMilliseconds() if request.HasField("window_end") else None)
        min_rows = max(request.min_rows or s.default_min_rows, MIN_TRAINABLE_ROWS)
        started = time.perf_counter()
        earlier_versions = self._reuse_candidates(request, name)  # asked once, scored on both slices
        early = self._reused_early(request, earlier_versions, stream, window, min_rows, superseded)
        if early is not None:
            return early
        dataset = wait_for_rows(self._reader(stream), window, min_rows,
                                timeout_s=s.wait_timeout_s, poll_s=self._poll_s(request), cancelled=self.cancelled,
                                superseded=superseded, recent=self._recent_for(request))
        log.info("rows ready", extra={"request_id": request.request_id, "rows": dataset.rows,
                                      "seconds": round(time.perf_counter() - started, 3),
                                      "from": "topic" if dataset.from_topic else "segments"})
        train_rows, eval_rows = dataset.time_split(s.holdout_fraction)
        data_id, eval_uri = self._store_dataset(dataset, eval_rows, stream)
        candidate = self._train(train_rows, eval_rows, dataset.feature_names, params, superseded)
        earlier = self._best_earlier(request, earlier_versions, dataset.feature_names, eval_rows)
        if earlier is not None and concept_is_back(earlier, eval_rows.num_rows) and earlier.accuracy >= (
                candidate.metrics["accuracy"] - standard_error(candidate.metrics["accuracy"], eval_rows.num_rows)):
            log.info("an earlier version scores at least as well as the new candidate: reusing it", extra={
                "request_id": request.request_id, "version": earlier.version.version,
                "accuracy": round(earlier.accuracy, 4), "candidate_accuracy": round(candidate.metrics["accuracy"], 4)})
            return earlier.version, eval_uri
        return self._register(request, name, stream, dataset, data_id, params, candidate, eval_uri), ""

    def _reused_early(self, request: training_pb2.TrainingRequest, versions: list[registry_pb2.ModelVersion],
                      stream: str, window: Window, min_rows: int, superseded: Callable[[], bool]) -> tuple[registry_pb2.ModelVersion, str] | None:
        """An earlier version that scores on the window's first `reuse_rows` rows what it scored on its
        own held-out rows (within two standard errors), with the slice of those rows to judge it on:
        the concept it learnt is back, and it need not wait for the rows a fresh model needs."""
        s = self.settings
        if not versions or not 0 < s.reuse_rows < min_rows:
            return None
        dataset = wait_for_rows(self._reader(stream), window, s.reuse_rows, timeout_s=s.wait_timeout_s,
                                poll_s=self._poll_s(request), cancelled=self.cancelled, superseded=superseded,
                                recent=self._recent_for(request))
        started = time.perf_counter()
        earlier = self._best_earlier(request, versions, dataset.feature_names, dataset.table)
        log.info("earlier versions scored on the change's first rows", extra={
            "request_id": request.request_id, "versions": len(versions), "rows": dataset.rows,
            "seconds": round(time.perf_counter() - started, 3)})
        if earlier is None or not concept_is_back(earlier, dataset.rows):
            return None
        own = earlier.version.metrics["accuracy"]
        log.info("an earlier version scores on the change's first rows as it did on its own: reusing it", extra={
            "request_id": request.request_id, "version": earlier.version.version, "rows": dataset.rows,
            "accuracy": round(earlier.accuracy, 4), "its_own_accuracy": round(own, 4)})
        return earlier.version, self._store_dataset(dataset, dataset.table, stream)[1]

    def _reuse_candidates(self, request: training_pb2.TrainingRequest, name: str) -> list[registry_pb2.ModelVersion]:
        """The versions a request may reuse: those that served once (a refused refresh learnt nothing
        production did not know better), not the one serving now (the change is measured against it)."""
        if request.reuse_candidates <= 0:
            return []
        versions = self._call("ListModelVersions", registry_pb2.ListModelVersionsRequest(name=name)).model_versions
        decisions = self._call("GetGateDecisions", registry_pb2.GetGateDecisionsRequest(name=name)).decisions
        served = {d.candidate_version for d in decisions if d.promoted} - {self._alias_version(name)}
        return [v for v in versions if v.version in served]

    def _best_earlier(self, request: training_pb2.TrainingRequest, versions: list[registry_pb2.ModelVersion],
                      feature_names: list[str], rows: pa.Table) -> Scored | None:
        if not versions:
            return None
        x, y = features_and_labels(rows, feature_names)
        return score_earlier(versions, request.reuse_candidates, self.store, feature_names, x, y)

    def _poll_s(self, request: training_pb2.TrainingRequest) -> float:
        """How often a request's wait lists the segments: a change's first answer often, a refresh seldom."""
        refresh = request.trigger == training_pb2.TrainingRequest.REFRESH
        return self.settings.refresh_poll_interval_s if refresh else self.settings.poll_interval_s

    def _recent_for(self, request: training_pb2.TrainingRequest) -> RecentRows | None:
        """Where a request's rows may come from besides the segments: a drift retrain's first rows,
        the ones a change waits on, from the features topic; every other request's from segments."""
        return self.recent if request.trigger == training_pb2.TrainingRequest.DRIFT else None

    def _reader(self, stream: str) -> SegmentReader:
        """The stream's segment reader, kept across requests (its sidecars are fetched once)."""
        with self._readers_lock:
            if stream not in self._readers:
                self._readers[stream] = SegmentReader(self.store, stream)
            return self._readers[stream]

    def _production_net(self, name: str) -> int:
        """The net (train.py's `quantile_steps`) of the version in production: a drift retrain takes
        it rather than spend its first second choosing; -1 (choose) when none is known."""
        production = self._production(name)
        steps = production.metrics.get("quantile_steps") if production is not None else None
        return -1 if steps is None else int(steps)

    def _alias_version(self, name: str) -> int:
        """The version the promotion alias points at, 0 for none."""
        production = self._production(name)
        return production.version if production is not None else 0

    def _production(self, name: str) -> registry_pb2.ModelVersion | None:
        """The version the promotion alias points at (GetAlias answers the version itself), or None."""
        try:
            return self._call("GetAlias", registry_pb2.GetAliasRequest(name=name, alias=self.settings.promote_alias))
        except RegistryCallFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def _store_dataset(self, dataset: Dataset, eval_rows: pa.Table, stream: str) -> tuple[str, str]:
        """Writes the manifest and the eval slice; returns (dataset id, eval slice URI)."""
        manifest = dataset.manifest(stream)
        data_id = dataset_id(manifest)
        self.store.put_json(manifest_key(stream, data_id), manifest)
        return data_id, self.store.put_bytes(eval_key(stream, data_id), to_parquet(eval_rows)).uri

    def _train(self, train_rows: pa.Table, eval_rows: pa.Table, feature_names: list[str],
               params: TrainParams, superseded: Callable[[], bool] = lambda: False) -> Candidate:
        x_train, y_train = features_and_labels(train_rows, feature_names)
        x_eval, y_eval = features_and_labels(eval_rows, feature_names)
        n_classes = max(2, int(max(y_train.max(), y_eval.max())) + 1)
        trained = train(x_train, y_train, n_classes, params, superseded)

        started = time.perf_counter()
        onnx_bytes = export_onnx(trained.model, len(feature_names))
        model_session = session(onnx_bytes)  # the artifact that will serve is the one evaluated
        check_matches_torch(model_session, trained.model, x_eval[:256])
        export_seconds = time.perf_counter() - started

        train_proba = predict_proba(model_session, x_train)
        metrics = {
            "accuracy": _accuracy(predict_proba(model_session, x_eval), y_eval),
            "train_accuracy": _accuracy(train_proba, y_train),
            "train_rows": float(len(y_train)),
            "eval_rows": float(len(y_eval)),
            "train_seconds": round(trained.seconds, 3),
            "export_seconds": round(export_seconds, 3),
            "final_loss": trained.final_loss,
            # which net was chosen, and on what (train.py): 1 for the one with quantile steps
            "quantile_steps": float(trained.steps),
            **{f"selection_{net}_accuracy": accuracy for net, accuracy in trained.selection.items()},
        }
        return Candidate(onnx_bytes, feature_names, n_classes, metrics,
                         TrainingReference(feature_references(x_train, feature_names),
                                           scores=DecileBins.fit(train_proba[:, 1])))

    def _register(self, request: training_pb2.TrainingRequest, name: str, stream: str, dataset: Dataset,
                  data_id: str, params: TrainParams, candidate: Candidate, eval_uri: str) -> registry_pb2.ModelVersion:
        """Uploads the artifact, registers it, then writes the versioned copies.

        The registry assigns the version number, so the registered artifact
        lives at a content-addressed key (models/<name>/candidates/<sha256>/):
        two trainers never overwrite each other, and a registration retried
        under the same request id returns the version registered first (whose
        artifact may be other bytes, from an earlier run of the request).
        """
        sha = sha256_of(candidate.onnx)
        staged = f"models/{name}/candidates/{sha}"
        artifact = self.store.put_bytes(f"{staged}/model.onnx", candidate.onnx)
        metadata = self.store.put_json(f"{staged}/metadata.json", candidate.metadata(name, data_id))
        lineage = {
            **params.as_strings(),
            "request_id": request.request_id,
            "reason": request.reason,
            "stream": stream,
            "window_start_ms": str(dataset.window.start_ms),
            "window_end_ms": str(dataset.end_ms),
            "holdout_fraction": str(self.settings.holdout_fraction),
        }
        registered = self._call("RegisterModelVersion", registry_pb2.RegisterModelVersionRequest(
            model_version=registry_pb2.ModelVersion(
                name=name, artifact_uri=artifact.uri, artifact_sha256=sha, dataset_id=data_id,
                code_version=self.code_version, params=lineage, metrics=candidate.metrics,
                feature_names=candidate.feature_names, metadata_uri=metadata.uri, eval_uri=eval_uri,
                idempotency_key=request.request_id)))
        return registered

    def _install(self, version: registry_pb2.ModelVersion) -> None:
        """Copies the registered artifact and its metadata (numbered now) to the conventional layout,
        models/<name>/<version>/, before Promote, so that serving and the monitor find them as soon
        as the alias moves. From the registered objects, not from this run's candidate: a retried
        registration may have returned an earlier run's version."""
        versioned = f"models/{version.name}/{version.version}"
        onnx = self.store.get_bytes(self._key(version.artifact_uri), expected_sha256=version.artifact_sha256)
        metadata = {**self.store.get_json(self._key(version.metadata_uri)), "version": version.version}
        self.store.put_bytes(f"{versioned}/model.onnx", onnx)
        self.store.put_json(f"{versioned}/metadata.json", metadata)

    def _key(self, uri: str) -> str:
        bucket, key = split_uri(uri)
        if bucket != self.store.bucket:
            raise ValueError(f"{uri} is not in the trainer's bucket {self.store.bucket!r}")
        return key

    def _call(self, method: str, request):
        """Calls the registry, again after UNAVAILABLE (a registry restarting) until `registry_timeout_s`
        has passed: every call the trainer makes is safe to repeat (reads, or keyed by the request id)."""
        deadline = time.monotonic() + self.settings.registry_timeout_s
        backoff = Backoff(most_s=5.0)
        while True:
            try:
                # wait_for_ready: a registry that is (re)starting is waited for, up to the deadline.
                return getattr(self.registry, method)(request, timeout=max(deadline - time.monotonic(), 0.1),
                                                      wait_for_ready=True)
            except grpc.RpcError as exc:
                pause = backoff.next()
                if exc.code() not in RETRIED or time.monotonic() + pause >= deadline or self.cancelled.is_set():
                    raise RegistryCallFailed(method, exc.code(), exc.details()) from exc
                log.warning("registry call failed; retrying", extra={
                    "method": method, "code": exc.code().name, "details": exc.details(), "retry_in_s": pause})
                if self.cancelled.wait(pause):
                    raise Cancelled(f"trainer stopping while retrying registry {method}") from exc


# UNAVAILABLE: the registry is down or restarting; ABORTED: a promotion raced an alias change.
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


class RegistryCallFailed(RuntimeError):
    """The registry refused or did not answer a call; the message has its status."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"registry {method}: {code.name}: {details}")
        self.code = code


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
