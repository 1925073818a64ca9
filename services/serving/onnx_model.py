"""One loaded ONNX model: an onnxruntime session plus what identifies it.

A `LoadedModel` is immutable. Serving swaps whole `LoadedModel` references, so a
request that picked one up finishes on it even while a newer one is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

# The model contract (see contracts: Models): one float32 [N, F] input, one [N, C] output.
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class InvalidModel(ValueError):
    """The artifact is not an ONNX model serving can run under the model contract."""


def execution_providers(preference: str = "auto",
                        available: Sequence[str] | None = None) -> list[str]:
    """The providers to open a session with, best first; CPU is always the fallback.

    >>> execution_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> execution_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> execution_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    available = list(ort.get_available_providers() if available is None else available)
    preference = preference.lower()
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"execution provider must be auto, cpu or cuda, not {preference!r}")
    if preference == "cuda" and CUDA not in available:
        raise ValueError(f"{CUDA} was asked for but onnxruntime offers only {available}")
    if preference != "cpu" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    sha256: str
    session: ort.InferenceSession
    # None when the graph leaves the feature dimension symbolic and the registry named no features.
    feature_count: int | None
    providers: tuple[str, ...]
    # Output columns (classes); None when the graph leaves it symbolic and no warm-up ran.
    class_count: int | None = None

    @property
    def provider(self) -> str:
        """The execution provider doing the work (the first the session took)."""
        return self.providers[0] if self.providers else CPU

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 [N, C], for float32 rows [N, F]."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]


def load_model(artifact: bytes, *, name: str, version: int, sha256: str,
               feature_names: Sequence[str] = (), providers: Sequence[str] = (CPU,)) -> LoadedModel:
    """Opens a session on verified artifact bytes, checks the contract and warms it up.

    Warm-up runs one real batch so the first request after a swap does not pay for
    onnxruntime's lazy initialisation (and a model that cannot run is refused here,
    before it replaces one that can).
    """
    try:
        session = ort.InferenceSession(artifact, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise InvalidModel(f"onnxruntime cannot load {name} v{version}: {exc}") from exc
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise InvalidModel(f"{name} v{version} must have input {INPUT_NAME!r} and output "
                           f"{OUTPUT_NAME!r}; it has {sorted(inputs)} → {sorted(outputs)}")
    shape = inputs[INPUT_NAME].shape
    feature_count = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    if feature_count is None and feature_names:
        feature_count = len(feature_names)
    out_shape = {o.name: o.shape for o in session.get_outputs()}[OUTPUT_NAME]
    class_count = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    model = LoadedModel(name, version, sha256, session, feature_count,
                        tuple(session.get_providers()), class_count)
    if feature_count:
        try:
            probabilities = model.predict(np.zeros((2, feature_count), np.float32))
        except Exception as exc:
            raise InvalidModel(f"{name} v{version} failed its warm-up batch: {exc}") from exc
        if probabilities.ndim != 2 or probabilities.shape[0] != 2:
            raise InvalidModel(f"{name} v{version} answered shape {probabilities.shape} "
                               "for 2 rows; expected [2, classes]")
        if class_count is None:
            model = replace(model, class_count=int(probabilities.shape[1]))
    return model
