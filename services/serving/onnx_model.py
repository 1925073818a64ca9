"""One loaded ONNX model: an onnxruntime session plus what identifies it.

A `LoadedModel` is immutable. Serving swaps whole `LoadedModel` references, so a
request that picked one up finishes on it even while a newer one is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from services.common.onnx_safety import UnsafeModel, check_artifact
from services.common.settings import comma_list

# The model contract (see contracts: Models): one float32 [N, F] input, one [N, C] output.
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Best first: what "auto" takes from whatever onnxruntime offers.
PREFERENCE = (TENSORRT, CUDA, CPU)
_SHORT = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}


class InvalidModel(ValueError):
    """The artifact is not an ONNX model serving can run under the model contract."""


def execution_providers(preference: str | Sequence[str] = "auto",
                        available: Sequence[str] | None = None) -> list[str]:
    """The providers to open a session with, best first; CPU is always the fallback.

    `preference` is "auto" (TensorRT, then CUDA, then CPU: whichever onnxruntime offers),
    one of "tensorrt", "cuda", "cpu" (that one, with what is below it as fallback), or an
    explicit list of provider names or short names (a list, or one comma-separated string,
    as the setting `execution_provider` takes).

    >>> execution_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> execution_providers("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> execution_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> execution_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> execution_providers("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> execution_providers("cuda,cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> execution_providers(["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    available = list(ort.get_available_providers() if available is None else available)
    parts = [part.strip() for part in comma_list(preference) if part.strip()]
    if [part.lower() for part in parts] == ["auto"]:
        return [p for p in PREFERENCE if p in available] or [CPU]
    names = [_SHORT.get(part.lower(), part) for part in parts]
    if not names:
        raise ValueError("execution provider must be auto, tensorrt, cuda, cpu or a list of provider names")
    for name in names:
        if name not in available and name != CPU:
            if name not in PREFERENCE and not name.endswith("ExecutionProvider"):
                raise ValueError(f"execution provider must be auto, tensorrt, cuda, cpu or provider names, "
                                 f"not {','.join(parts)!r}")
            raise ValueError(f"{name} was asked for but onnxruntime offers only {available}")
    if len(names) == 1 and names[0] in PREFERENCE:
        # One of the known ones: take it, then the rest of the preference order below it.
        names = list(PREFERENCE[PREFERENCE.index(names[0]):])
        names = [names[0], *(p for p in names[1:] if p in available)]
    if CPU not in names:
        names.append(CPU)
    return names


@dataclass(frozen=True)
class SessionConfig:
    """How sessions are opened: providers (best first) and onnxruntime's thread settings."""

    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    # Whether idle onnxruntime pool threads spin waiting for work (its default) or sleep at once.
    spin_threads: bool = True
    # Options per provider name, e.g. TensorRT's engine cache.
    provider_options: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads:
            options.inter_op_num_threads = self.inter_op_threads
        if not self.spin_threads:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options

    def options_for(self, provider: str) -> dict[str, str]:
        return dict(dict(self.provider_options).get(provider, ()))


def open_session(artifact: bytes, config: SessionConfig) -> ort.InferenceSession:
    """A session on the best provider that opens; a provider that fails (TensorRT without its
    libraries, a CUDA build without a device) is dropped and the next one tried."""
    providers = list(config.providers) or [CPU]
    errors = []
    while providers:
        try:
            return ort.InferenceSession(artifact, sess_options=config.session_options(),
                                        providers=[(p, config.options_for(p)) for p in providers])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            errors.append(f"{providers[0]}: {exc}")
            if len(providers) == 1 or _is_model_error(exc):
                raise
            providers = providers[1:]
    raise RuntimeError("; ".join(errors))  # not reached


def _is_model_error(exc: Exception) -> bool:
    """Errors about the model itself, which no other provider would fix."""
    text = str(exc)
    return any(mark in text for mark in ("INVALID_PROTOBUF", "INVALID_GRAPH", "NO_MODEL", "Protobuf parsing failed"))


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
               feature_names: Sequence[str] = (), providers: Sequence[str] = (CPU,),
               config: SessionConfig | None = None, warmup_rows: Sequence[int] = (2,)) -> LoadedModel:
    """Opens a session on verified artifact bytes, checks the contract and warms it up.

    Warm-up runs real batches (of each size in `warmup_rows`) so the first requests after
    a swap do not pay for onnxruntime's lazy initialisation (on CUDA/TensorRT: kernel
    selection, engine builds), and a model that cannot run is refused here, before it
    replaces one that can.
    """
    config = config or SessionConfig(providers=tuple(providers))
    try:
        check_artifact(artifact, f"{name} v{version}")
    except UnsafeModel as exc:
        raise InvalidModel(str(exc)) from None
    try:
        session = open_session(artifact, config)
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise InvalidModel(f"onnxruntime cannot load {name} v{version}: {exc}") from exc
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise InvalidModel(f"{name} v{version} must have input {INPUT_NAME!r} and output "
                           f"{OUTPUT_NAME!r}; it has {sorted(inputs)} → {sorted(outputs)}")
    if inputs[INPUT_NAME].type != "tensor(float)":
        raise InvalidModel(f"{name} v{version} input {INPUT_NAME!r} is {inputs[INPUT_NAME].type}; "
                           "the model contract is float32")
    shape = inputs[INPUT_NAME].shape
    feature_count = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    if feature_count is None and feature_names:
        feature_count = len(feature_names)
    out_shape = {o.name: o.shape for o in session.get_outputs()}[OUTPUT_NAME]
    class_count = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    model = LoadedModel(name, version, sha256, session, feature_count,
                        tuple(session.get_providers()), class_count)
    if feature_count:
        for rows in sorted({max(1, int(n)) for n in warmup_rows} or {2}):
            try:
                probabilities = model.predict(np.zeros((rows, feature_count), np.float32))
            except Exception as exc:
                raise InvalidModel(f"{name} v{version} failed its warm-up batch of {rows} rows: {exc}") from exc
            if probabilities.ndim != 2 or probabilities.shape[0] != rows:
                raise InvalidModel(f"{name} v{version} answered shape {probabilities.shape} "
                                   f"for {rows} rows; expected [{rows}, classes]")
            if class_count is None:
                class_count = int(probabilities.shape[1])
                model = replace(model, class_count=class_count)
    return model
