"""The ONNX models of the serving benchmark, built with onnx.helper and cached.

    python bench/models.py            # builds (if missing) and prints their paths

Both follow the model contract: input "features" float32 [N, 16] (dynamic N),
output "probabilities" float32 [N, 2] (a softmax), one file, no external data.

* `small`: the MLP the loop serves, 16 → 64 → 64 → 2 (ReLU), ≈ 5.4k weights.
* `heavy`: compute-bound, 16 → 2048 → 2048 → 2048 → 2 (ReLU), ≈ 8.4M weights (≈ 34 MB):
  ≈ 17 MFLOP per row, so one row costs milliseconds and a batch of rows is far cheaper per row
  than the same rows one by one (the weights are read once per call, not once per row).

Weights come from a fixed seed, so every run (and every server) gets the same bytes.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-models"
FEATURES = 16
CLASSES = 2
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class BenchModel:
    name: str
    hidden: tuple[int, ...]
    seed: int

    @property
    def path(self) -> Path:
        return CACHE / f"{self.name}-{FEATURES}-{'x'.join(map(str, self.hidden))}-{CLASSES}.onnx"


MODELS = {
    "small": BenchModel("small", (64, 64), seed=1),
    "heavy": BenchModel("heavy", (2048, 2048, 2048), seed=2),
}


def build(spec: BenchModel) -> bytes:
    """The serialized ONNX model: Gemm + ReLU per hidden layer, Gemm + Softmax out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(spec.seed)
    widths = (FEATURES, *spec.hidden, CLASSES)
    nodes, initializers = [], []
    current = INPUT_NAME
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        # He initialisation keeps activations in range through the deep stack.
        weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.01, fan_out).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(widths) - 2
        gemm_out = "logits" if last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}"))
        if last:
            nodes.append(helper.make_node("Softmax", [gemm_out], [OUTPUT_NAME], axis=-1, name="softmax"))
        else:
            current = f"h{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], name=f"relu{i}"))
    graph = helper.make_graph(
        nodes, f"bench_{spec.name}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", CLASSES])],
        initializers)
    model = helper.make_model(graph, producer_name="driftline-bench",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the peers may install
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ensure(name: str) -> Path:
    """The cached model file, built on first use."""
    spec = MODELS[name]
    if not spec.path.exists():
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = spec.path.with_suffix(".tmp")
        tmp.write_bytes(build(spec))
        tmp.replace(spec.path)
    return spec.path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    for name in MODELS:
        path = ensure(name)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256(path)[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
