"""ONNX export with torch.onnx (dynamo), checked against torch before it is trusted.

One self-contained file (external_data=False: a side `.onnx.data` file would
not survive being stored and loaded as bytes), input "features" float32 [N, F]
with a dynamic batch, output "probabilities" float32 [N, C].
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime as ort
import torch

from .model import MLPClassifier

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
TOLERANCE = 1e-5

# The exporter is chatty: it warns that torchvision (not used here) is missing and logs
# every optimisation pass at INFO. Its real problems still come through as errors.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
for _name in ("onnx_ir", "onnxscript"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class ExportMismatch(RuntimeError):
    """onnxruntime does not reproduce torch's outputs."""


def export_onnx(model: MLPClassifier, n_features: int) -> bytes:
    example = torch.zeros(2, n_features)
    with warnings.catch_warnings():
        # torch 2.13's own pytree internals raise a FutureWarning on every export.
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            model, (example,), dynamo=True, external_data=False, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto.SerializeToString()


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
