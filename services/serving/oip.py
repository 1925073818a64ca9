"""Open Inference Protocol v2 (`inference.GRPCInferenceService`) over the serving model.

The same model, batcher and prediction log as `driftline.v1.Predictor`; the
wire format is KServe's / Triton's, so tritonclient and other OIP v2 clients
work unchanged. Inputs come as typed `contents` or as `raw_input_contents`;
outputs always go back as `raw_output_contents` (what tritonclient's
`as_numpy` reads), FP32 little-endian, row-major.
"""

from __future__ import annotations

import time

import numpy as np

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument, NotFound, ServiceError, Unavailable

from .onnx_model import INPUT_NAME, OUTPUT_NAME, LoadedModel
from .prediction_log import ServedRequest, new_request_id
from .traffic import Route

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "driftline"


def expected_input(model: LoadedModel) -> str:
    features = model.feature_count if model.feature_count is not None else -1
    return f"input {INPUT_NAME!r} FP32 [-1, {features}]"


def input_matrix(request: pb.ModelInferRequest, model: LoadedModel, max_rows: int) -> np.ndarray:
    """The request's float32 [N, F] features; raises InvalidArgument saying what was wrong."""
    if len(request.inputs) != 1:
        names = [i.name for i in request.inputs]
        raise InvalidArgument(f"the model takes exactly one input, {expected_input(model)}; got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidArgument(f"unknown input {tensor.name!r}; the model takes {expected_input(model)}")
    if tensor.datatype != "FP32":
        raise InvalidArgument(f"input {INPUT_NAME!r} has datatype {tensor.datatype or '(none)'}; "
                      f"the model takes FP32")
    shape = list(tensor.shape)
    features = model.feature_count
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1 or (features is not None and shape[1] != features):
        raise InvalidArgument(f"input {INPUT_NAME!r} has shape {shape}; the model takes "
                      f"[N, {features if features is not None else 'F'}] with N >= 1")
    rows, columns = shape
    if rows > max_rows:
        raise InvalidArgument(f"{rows} rows in one request; at most {max_rows} are accepted")
    count = rows * columns
    typed = tensor.HasField("contents")
    if request.raw_input_contents:
        if typed:
            raise InvalidArgument(f"input {INPUT_NAME!r} has both typed contents and raw_input_contents; send one")
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(f"{len(request.raw_input_contents)} raw_input_contents for 1 input")
        raw = request.raw_input_contents[0]
        if len(raw) != count * 4:
            raise InvalidArgument(f"raw_input_contents for {INPUT_NAME!r} holds {len(raw)} bytes; "
                          f"shape {shape} FP32 needs {count * 4}")
        matrix = np.frombuffer(raw, dtype="<f4").reshape(rows, columns)
    else:
        values = tensor.contents.fp32_contents
        others = [f.name for f, _ in tensor.contents.ListFields() if f.name != "fp32_contents"]
        if others:
            raise InvalidArgument(f"input {INPUT_NAME!r} is FP32 but came in {others}; use fp32_contents")
        if len(values) != count:
            raise InvalidArgument(f"input {INPUT_NAME!r} has {len(values)} fp32_contents; shape {shape} needs {count}")
        matrix = np.asarray(values, dtype=np.float32).reshape(rows, columns)
    check_finite(matrix)
    return matrix


def check_size(request, max_bytes: int) -> None:
    """Refuses a message over `max_bytes` (gRPC's own receive limit is set above it, so it arrives
    here and the caller learns what was wrong, not a bare RESOURCE_EXHAUSTED)."""
    if max_bytes:
        size = request.ByteSize()
        if size > max_bytes:
            raise InvalidArgument(f"the request message is {size} bytes; at most {max_bytes} are accepted "
                          "(send fewer rows per request)")


def request_key(request: pb.ModelInferRequest) -> str:
    """What routes a ModelInfer call between variants: the parameter "request_key", else the request id."""
    parameter = request.parameters.get("request_key") if request.parameters else None
    if parameter is not None:
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            return str(getattr(parameter, kind))
    return request.id


def check_finite(matrix: np.ndarray) -> None:
    if not np.isfinite(matrix).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
        raise InvalidArgument(f"row {row}, feature {column} is {matrix[row, column]}; the model accepts only "
                      "finite values (no NaN or Inf)")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six KServe v2 RPCs; Triton's others are not registered (UNIMPLEMENTED)."""

    def __init__(self, predictor, server_version: str) -> None:
        self.predictor = predictor  # server.Predictor: model, batcher, prediction log, metrics
        self.server_version = server_version

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.predictor.models.current is not None)

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        router = self.predictor.router
        ready = (request.name == self.model_name and router.current is not None
                 and (not request.version or router.by_version(request.version) is not None))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.server_version, extensions=[])

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        route = self._route(request.name, request.version, "")
        model = route.model
        features = model.feature_count if model.feature_count is not None else -1
        classes = model.class_count if model.class_count is not None else -1
        tensor = pb.ModelMetadataResponse.TensorMetadata
        versions = [str(model.version)]
        served = self.predictor.router.served_versions()
        if not request.version:  # every version this name answers with: production first, then the canary
            versions = [str(m.version) for m in served]
        # The OIP ModelMetadataResponse has no parameters field (and its field numbers are kept to the
        # spec), so what runs the model travels as gRPC response metadata beside it.
        metadata = [("driftline-execution-provider", model.provider), ("driftline-variant", route.variant)]
        if len(served) > 1:
            metadata.append(("driftline-canary-version", str(served[1].version)))
        context.set_trailing_metadata(tuple(metadata))
        return pb.ModelMetadataResponse(
            name=model.name, versions=versions, platform=PLATFORM,
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, features])],
            outputs=[tensor(name=OUTPUT_NAME, datatype="FP32", shape=[-1, classes])])

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        started = time.perf_counter()
        predictor = self.predictor
        request_id = request.id or new_request_id()
        try:
            check_size(request, predictor.max_message_bytes)
            route = self._route(request.model_name, request.model_version, request_key(request) or request_id)
            model = route.model
            for wanted in request.outputs:
                if wanted.name != OUTPUT_NAME:
                    raise InvalidArgument(f"unknown output {wanted.name!r}; the model has output {OUTPUT_NAME!r}")
            rows = input_matrix(request, model, predictor.max_request_rows)
        except ServiceError as refusal:
            predictor.count("infer", refusal.code, started)
            raise
        probabilities = await predictor.run(model, rows, context, "infer", started)
        probabilities = np.ascontiguousarray(probabilities, dtype="<f4")
        predictor.log(ServedRequest(request_id, self.model_name, model.version, rows, probabilities,
                                    probabilities.argmax(axis=1), time.time_ns(), route.variant))
        predictor.mirror(route, rows, rows, request_id)
        predictor.count_ok("infer", started)
        return pb.ModelInferResponse(
            model_name=self.model_name, model_version=str(model.version), id=request.id,
            parameters={"execution_provider": pb.InferParameter(string_param=model.provider),
                        "variant": pb.InferParameter(string_param=route.variant)},
            outputs=[pb.ModelInferResponse.InferOutputTensor(
                name=OUTPUT_NAME, datatype="FP32", shape=list(probabilities.shape))],
            raw_output_contents=[probabilities.tobytes()])

    def _route(self, name: str, version: str, key: str) -> Route:
        """The variant and model for this request, read once: a swap meanwhile does not touch the call."""
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.model_name!r}")
        router = self.predictor.router
        if router.current is None:
            raise Unavailable("no model loaded yet")
        if version:
            route = router.by_version(version)
            if route is None:
                served = ", ".join(str(m.version) for m in router.served_versions())
                raise NotFound(f"version {version!r} of {name!r} is not served; version {served} is")
            return route
        route = router.route(key)
        if route is None:
            raise Unavailable("no model loaded yet")
        return route
