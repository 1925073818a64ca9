"""The floor of a Python gRPC (grpc.aio) OIP v2 server on this machine: how fast can any
server in this process model answer ModelInfer, before it does anything of its own?

    python bench/peers/floor_server.py --port P --model small --onnx /path/model.onnx --mode echo|ort

* `echo`: a generic handler, bytes in → one prepared ModelInferResponse out (no protobuf parsing,
  no model): the cost of grpc.aio itself per unary call.
* `ort`: the least a real server does: parse the request, run the session inline on the event
  loop (no batching, no thread hop, no logging, no metrics), answer raw_output_contents.
* `--interceptor`: the same behind a pass-through grpc.aio server interceptor (it only awaits the
  continuation): what the interceptor mechanism itself costs per call.
* `--metrics`: the same with Driftline's call metrics (services.common.grpc_server.CallMetrics:
  each handler wrapped once at registration, counted and timed per call).

Runs in the main venv, serves only ModelReady and ModelInfer, binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np
import onnxruntime as ort

from inference import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


class _PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        return await continuation(details)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--mode", choices=("echo", "ort"), default="echo")
    parser.add_argument("--interceptor", action="store_true",
                        help="add a pass-through grpc.aio server interceptor, to measure what one costs per call")
    parser.add_argument("--metrics", action="store_true",
                        help="wrap the handlers in Driftline's CallMetrics (services.common.grpc_server)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    one_row = session.run(["probabilities"], {"features": np.zeros((1, 16), np.float32)})[0]
    canned = pb.ModelInferResponse(
        model_name=args.model, model_version="1",
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32", shape=[1, 2])],
        raw_output_contents=[one_row.tobytes()]).SerializeToString()

    async def ready(request: bytes, context) -> bytes:
        return pb.ModelReadyResponse(ready=True).SerializeToString()

    async def echo(request: bytes, context) -> bytes:
        # Answers one row whatever was asked; the bench's floor runs use single-row points only.
        return canned

    async def infer(request: bytes, context) -> bytes:
        message = pb.ModelInferRequest.FromString(request)
        tensor = message.inputs[0]
        rows = np.frombuffer(message.raw_input_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
        out = session.run(["probabilities"], {"features": rows})[0]
        return pb.ModelInferResponse(
            model_name=args.model, model_version="1",
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32",
                                                            shape=list(out.shape))],
            raw_output_contents=[out.tobytes()]).SerializeToString()

    handlers = {
        "ModelReady": grpc.unary_unary_rpc_method_handler(ready),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(echo if args.mode == "echo" else infer),
    }

    async def serve() -> None:
        interceptors = [_PassThrough()] if args.interceptor else []
        server = grpc.aio.server(interceptors=interceptors)
        if args.metrics:
            from services.common.grpc_server import CallMetrics

            def add(servicer, target) -> None:
                target.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
                target.add_registered_method_handlers(SERVICE, handlers)

            CallMetrics("floor").register(add, None, server)
        else:
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
