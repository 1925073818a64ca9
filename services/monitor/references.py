"""The training-data reference a model version is compared against.

The trainer writes decile bins of every feature (and of the positive-class
score) into the version's metadata.json — the contract is `services.common.reference`;
the registry knows where that file is (`ModelVersion.metadata_uri`). A version
without one — an older trainer, a registry that is down — is tolerated: it is
monitored without PSI, and asked for again every `retry_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

from services.common.reference import DecileBins, FeatureReference, TrainingReference
from services.common.registry_client import RegistryClient
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelReference:
    feature_names: tuple[str, ...]
    features: Mapping[str, FeatureReference]  # features without a reference are simply not compared
    scores: DecileBins | None                 # the positive-class score's bins, when recorded
    # The error rate on the held-out evaluation slice (1 - metrics.accuracy) and its size: the
    # model's error on data it did not train on. The first labelled predictions of a version
    # may be of its own training rows (a backlog scored after the model came up), whose error
    # is lower; the error-stream reference is never taken as better than this.
    eval_error: float | None = None
    eval_rows: int = 0
    # Rows the reference bins were counted on (metrics.train_rows), for the bootstrap; 0 = unknown.
    reference_rows: int = 0

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "ModelReference":
        metrics = metadata.get("metrics") or {}
        accuracy = metrics.get("accuracy")
        reference = TrainingReference.from_metadata(metadata)
        return cls(
            feature_names=tuple(metadata.get("feature_names") or ()),
            features=reference.features,
            scores=reference.scores,
            eval_error=None if accuracy is None else max(0.0, 1.0 - float(accuracy)),
            eval_rows=int(metrics.get("eval_rows") or 0),
            reference_rows=int(metrics.get("train_rows") or 0))


class RegistryReferences:
    """metadata.json of a version, found through `Registry.GetModelVersion`; cached."""

    def __init__(self, registry_address: str, read_json: Callable[[str], Mapping], *,
                 timeout_s: float = 2.0, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, settings: CommonSettings | None = None) -> None:
        self._registry = RegistryClient(registry_address, timeout_s, settings)
        self._read_json = read_json
        self._retry_s = retry_s
        self._clock = clock
        self._found: dict[tuple[str, int], ModelReference] = {}
        self._retry_at: dict[tuple[str, int], float] = {}

    def get(self, model_name: str, version: int) -> ModelReference | None:
        key = (model_name, version)
        if key in self._found:
            return self._found[key]
        if self._clock() < self._retry_at.get(key, 0.0):
            return None
        try:
            found = self._load(model_name, version)
        except Exception as exc:  # any failure: monitor without PSI for now, try again later
            log.warning("no reference for this version yet; PSI waits for it",
                        extra={"model": model_name, "version": version, "reason": str(exc)})
            self._retry_at[key] = self._clock() + self._retry_s
            return None
        self._found[key] = found
        self._retry_at.pop(key, None)
        return found

    def _load(self, model_name: str, version: int) -> ModelReference:
        try:
            record = self._registry.version(model_name, version)
        except grpc.RpcError as exc:
            raise LookupError(f"registry: {exc.code().name} {exc.details()}") from exc
        if not record.metadata_uri:
            raise LookupError("the registry has no metadata_uri for it")
        return ModelReference.from_metadata(self._read_json(record.metadata_uri))

    def close(self) -> None:
        self._registry.close()
