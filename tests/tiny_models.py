"""A tiny real ONNX classifier under the model contract, in versions that disagree on
purpose, so an answer's scores tell which version gave it. Shared by the serving tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = ["f0", "f1", "f2"]
WEIGHTS = {
    1: [[1.0, -1.0], [0.5, 0.0], [0.0, 0.5]],
    2: [[-1.0, 1.0], [0.0, 0.5], [0.5, 0.0]],
    3: [[0.2, -0.3], [-0.4, 0.1], [0.9, 0.0]],
    4: [[0.0, 1.0], [1.0, 0.0], [-0.5, 0.5]],
}


def tiny_model(weights) -> bytes:
    """features float32 [N, 3] → softmax(features · W) as probabilities float32 [N, 2]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.asarray(weights, np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def expected_scores(version: int, rows) -> np.ndarray:
    logits = np.asarray(rows, np.float64) @ np.asarray(WEIGHTS[version])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
