"""KServe 0.21.0 Python model server for the serving benchmark: the bench's ONNX models in onnxruntime.

Runs inside .cache/bench-venvs/kserve (KServe's starlette/protobuf pins clash with the main venv):

    python kserve_server.py --http_port P --grpc_port G --enable_latency_logging False \
        --bench_model small=/path/small.onnx --bench_model heavy=/path/heavy.onnx

KServe binds every interface ("[::]" for gRPC, "0.0.0.0" for HTTP) with no option to choose;
the benchmark must stay on loopback, so both binds are rewritten to 127.0.0.1 before KServe starts.
Set KSERVE_LOGLEVEL=WARNING so its per-request logging is not what gets measured.
"""

from __future__ import annotations

import argparse

import grpc.aio._server
import uvicorn

_add_insecure_port = grpc.aio._server.Server.add_insecure_port


def _loopback_port(self, address: str) -> int:
    port = address.rsplit(":", 1)[1]
    return _add_insecure_port(self, f"127.0.0.1:{port}")


grpc.aio._server.Server.add_insecure_port = _loopback_port
_config_init = uvicorn.Config.__init__


def _loopback_config(self, *args, **kwargs) -> None:
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_config

import kserve  # noqa: E402  (after the bind wrappers)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402


class OnnxRuntimeModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        # Default session options, as Driftline and the other peers use them.
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.session.run([self.output], {self.input: np.zeros((1, 16), np.float32)})  # warm-up
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        rows = payload.inputs[0].as_numpy()
        probabilities = self.session.run([self.output], {self.input: rows.astype(np.float32, copy=False)})[0]
        output = InferOutput(name=self.output, shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output],
                             use_binary_outputs=True)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--bench_model", action="append", required=True, help="name=/path/model.onnx")
    args, _ = parser.parse_known_args()
    models = [OnnxRuntimeModel(*spec.split("=", 1)) for spec in args.bench_model]
    kserve.ModelServer().start(models)


if __name__ == "__main__":
    main()
