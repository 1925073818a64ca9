"""ONNX export of the MLP, written node by node from its weights, checked against torch
before it is trusted.

One self-contained file (initializers inside it: a side `.onnx.data` file would not survive
being stored and loaded as bytes), input "features" float32 [N, F] with a dynamic batch, output
"probabilities" float32 [N, C]. The graph is the model's own: Sub(mean), Div(std), beside them
the steps over the thresholds (Unsqueeze, Greater, Cast, Reshape, Concat), three Gemm with two
Relu between, Softmax. torch.onnx's dynamo exporter traced the same graph in 4-8 s on a
loaded 2-core machine, most of a retrain's time after a drift; writing it takes milliseconds,
and `check_matches_torch` still compares it with torch on the eval rows.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from .model import MLPClassifier

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
TOLERANCE = 1e-5
OPSET = 18


class ExportMismatch(RuntimeError):
    """onnxruntime does not reproduce torch's outputs."""


def export_onnx(model: MLPClassifier, n_features: int) -> bytes:
    """The model as ONNX bytes: standardise, Linear/ReLU layers as Gemm (weights [out, in],
    transB), softmax over the classes."""
    tensors = {"mean": model.mean, "std": model.std}
    nodes = [helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["standardised"])]
    current, layer = "standardised", 0
    if model.thresholds.shape[1]:
        tensors.update(thresholds=model.thresholds, last_axis=torch.tensor([2]), flat=torch.tensor([0, -1]))
        nodes += [helper.make_node("Unsqueeze", [INPUT_NAME, "last_axis"], ["column"]),
                  helper.make_node("Greater", ["column", "thresholds"], ["above"]),
                  helper.make_node("Cast", ["above"], ["above_f"], to=TensorProto.FLOAT),
                  helper.make_node("Reshape", ["above_f", "flat"], ["steps"]),
                  helper.make_node("Concat", ["standardised", "steps"], ["h0"], axis=1)]
        current = "h0"
    for module in model.net:
        if isinstance(module, torch.nn.Linear):
            layer += 1
            weight, bias = f"w{layer}", f"b{layer}"
            tensors[weight], tensors[bias] = module.weight, module.bias
            nodes.append(helper.make_node("Gemm", [current, weight, bias], [f"z{layer}"], transB=1))
            current = f"z{layer}"
        elif isinstance(module, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"]))
            current = f"r{layer}"
        else:
            raise TypeError(f"no ONNX export for {type(module).__name__}")
    nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], axis=-1))
    n_classes = model.net[-1].out_features
    graph = helper.make_graph(
        nodes, "mlp_classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[numpy_helper.from_array(_constant(t), name) for name, t in tensors.items()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="driftline-trainer")
    onnx_model.ir_version = 10  # what onnxruntime 1.2x reads; helper's default follows the onnx package
    return onnx_model.SerializeToString()


def _constant(tensor: torch.Tensor) -> np.ndarray:
    """float32 for weights and thresholds; int64 for the shapes and axes ONNX wants as int64."""
    array = tensor.detach().numpy()
    return array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def predict_proba(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def check_matches_torch(sess: ort.InferenceSession, model: MLPClassifier, sample: np.ndarray) -> float:
    """Max absolute difference between onnxruntime and torch on `sample`; raises above TOLERANCE."""
    with torch.no_grad():
        expected = model(torch.from_numpy(sample.astype(np.float32))).numpy()
    diff = float(np.max(np.abs(predict_proba(sess, sample) - expected)))
    if diff > TOLERANCE:
        raise ExportMismatch(f"onnxruntime differs from torch by {diff:.2e} (tolerance {TOLERANCE:g})")
    return diff
