"""MLServer 1.7.1 custom runtime for the serving benchmark: the bench's ONNX model in onnxruntime.

Runs inside .cache/bench-venvs/mlserver (MLServer pins protobuf<7, so not in the main venv);
`bench/serving_servers.py` writes the settings.json / model-settings.json that name it
(`"implementation": "mlserver_runtime.OnnxRuntimeModel"`, `parameters.uri` = the .onnx file).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        # Default session options, as Driftline and the other peers use them.
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self._session.run([self._output], {self._input: np.zeros((1, 16), np.float32)})  # warm-up
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        probabilities = self._session.run([self._output], {self._input: rows.astype(np.float32, copy=False)})[0]
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(self._output, probabilities)])
