"""One training request, start to finish: dataset version → model → ONNX →
upload → register → promote. Raises on any failure; the worker reports it."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pyarrow as pa
import torch

from driftline.v1 import registry_pb2, registry_pb2_grpc, training_pb2
from services.common.datasets import dataset_id, eval_key, manifest_key
from services.common.objectstore import ObjectStore, sha256_of
from services.common.reference import DecileBins, TrainingReference

from .dataset import Dataset, SegmentReader, Window, features_and_labels, to_parquet, wait_for_rows
from .export import INPUT_NAME, OUTPUT_NAME, check_matches_torch, export_onnx, predict_proba, session
from .reference import feature_references
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
                 code_version: str, cancelled: threading.Event) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.code_version = code_version
        self.cancelled = cancelled
        self.defaults = TrainParams(epochs=settings.epochs, batch_size=settings.batch_size, hidden=settings.hidden,
                                    learning_rate=settings.learning_rate, seed=settings.seed)
        torch.set_num_threads(settings.torch_threads)

    def run(self, request: training_pb2.TrainingRequest) -> training_pb2.TrainingResult:
        s = self.settings
        name = request.model_name or s.model_name
        stream = request.stream or s.stream
        params = self.defaults.with_overrides(request.params)  # bad params fail before any waiting
        window = Window(request.window_start.ToMilliseconds() if request.HasField("window_start") else 0,
                        request.window_end.ToMilliseconds() if request.HasField("window_end") else None)
        min_rows = max(request.min_rows or s.default_min_rows, MIN_TRAINABLE_ROWS)

        dataset = wait_for_rows(SegmentReader(self.store, stream), window, min_rows,
                                timeout_s=s.wait_timeout_s, poll_s=s.poll_interval_s, cancelled=self.cancelled)
        train_rows, eval_rows = dataset.time_split(s.holdout_fraction)
        data_id, eval_uri = self._store_dataset(dataset, eval_rows, stream)
        candidate = self._train(train_rows, eval_rows, dataset.feature_names, params)
        version = self._register(request, name, stream, dataset, data_id, params, candidate, eval_uri)
        decision = self._call("Promote", registry_pb2.PromoteRequest(
            name=name, version=version.version, alias=s.promote_alias))
        log.info("trained and gated", extra={"request_id": request.request_id, "version": version.version,
                                             "dataset_id": data_id, "accuracy": candidate.metrics["accuracy"],
                                             "promoted": decision.promoted, "reason": decision.reason})
        result = training_pb2.TrainingResult(
            request_id=request.request_id, model_name=name, status=training_pb2.TrainingResult.SUCCEEDED,
            version=version.version, dataset_id=data_id, promoted=decision.promoted,
            metrics={**candidate.metrics, "gate_candidate_accuracy": decision.candidate_accuracy,
                     "gate_baseline_accuracy": decision.baseline_accuracy,
                     "gate_baseline_version": float(decision.baseline_version)})
        result.finished_at.GetCurrentTime()
        return result

    def _store_dataset(self, dataset: Dataset, eval_rows: pa.Table, stream: str) -> tuple[str, str]:
        """Writes the manifest and the eval slice; returns (dataset id, eval slice URI)."""
        manifest = dataset.manifest(stream)
        data_id = dataset_id(manifest)
        self.store.put_json(manifest_key(stream, data_id), manifest)
        return data_id, self.store.put_bytes(eval_key(stream, data_id), to_parquet(eval_rows)).uri

    def _train(self, train_rows: pa.Table, eval_rows: pa.Table, feature_names: list[str],
               params: TrainParams) -> Candidate:
        x_train, y_train = features_and_labels(train_rows, feature_names)
        x_eval, y_eval = features_and_labels(eval_rows, feature_names)
        n_classes = max(2, int(max(y_train.max(), y_eval.max())) + 1)
        trained = train(x_train, y_train, n_classes, params)

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
        }
        return Candidate(onnx_bytes, feature_names, n_classes, metrics,
                         TrainingReference(feature_references(x_train, feature_names),
                                           scores=DecileBins.fit(train_proba[:, 1])))

    def _register(self, request: training_pb2.TrainingRequest, name: str, stream: str, dataset: Dataset,
                  data_id: str, params: TrainParams, candidate: Candidate, eval_uri: str) -> registry_pb2.ModelVersion:
        """Uploads the artifact, registers it, then writes the versioned copies.

        The registry assigns the version number, so the registered artifact
        lives at a content-addressed key (models/<name>/candidates/<sha256>/):
        two trainers never overwrite each other, and a retried registration of
        the same bytes is recognised by the registry as the same version.
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
                feature_names=candidate.feature_names, metadata_uri=metadata.uri, eval_uri=eval_uri)))
        # The conventional layout, written before Promote so that serving and the monitor
        # find it as soon as the alias moves.
        versioned = f"models/{name}/{registered.version}"
        self.store.put_bytes(f"{versioned}/model.onnx", candidate.onnx)
        self.store.put_json(f"{versioned}/metadata.json", candidate.metadata(name, data_id, registered.version))
        return registered

    def _call(self, method: str, request):
        try:
            # wait_for_ready: a registry that is (re)starting is waited for, up to the timeout.
            return getattr(self.registry, method)(request, timeout=self.settings.registry_timeout_s,
                                                  wait_for_ready=True)
        except grpc.RpcError as exc:
            raise RegistryCallFailed(f"registry {method}: {exc.code().name}: {exc.details()}") from exc


class RegistryCallFailed(RuntimeError):
    """The registry refused or did not answer a call; the message has its status."""


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
