"""The generated stubs (driftline.v1 and the OIP v2 `inference` package) are what protos/ says they are."""

import filecmp
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = (Path("driftline", "v1"), Path("inference"))


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale(tmp_path):
    fresh = _load_generator().generate(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in fresh)
    committed = sorted(str(p.relative_to(REPO)) for package in GENERATED
                       for p in (REPO / package).iterdir() if p.is_file())
    assert names == committed, "generated file set differs: run `make proto`"
    assert {str(p) for p in GENERATED} <= {str(Path(n).parent) for n in names}
    stale = [n for n in names if not filecmp.cmp(tmp_path / n, REPO / n, shallow=False)]
    assert not stale, f"stale generated code {stale}: run `make proto`"


def test_grpc_stubs_import_their_siblings_absolutely():
    from driftline.v1 import registry_pb2, registry_pb2_grpc
    from inference import grpc_service_pb2, grpc_service_pb2_grpc

    assert registry_pb2_grpc.driftline_dot_v1_dot_registry__pb2 is registry_pb2
    assert grpc_service_pb2_grpc.inference_dot_grpc__service__pb2 is grpc_service_pb2


def test_every_service_of_the_loop_is_declared():
    from driftline.v1 import features_pb2, ingest_pb2, monitor_pb2, registry_pb2, serving_pb2

    declared = {s for m in (features_pb2, ingest_pb2, monitor_pb2, registry_pb2, serving_pb2)
                for s in m.DESCRIPTOR.services_by_name}
    assert declared == {"Ingest", "FeatureStore", "Registry", "Predictor", "Monitor"}


def test_open_inference_protocol_keeps_the_public_field_numbers():
    """KServe v2 / Triton wire numbers: a renumbered field silently breaks every OIP client."""
    from inference import grpc_service_pb2 as pb

    def numbers(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert pb.DESCRIPTOR.package == "inference"
    assert [m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]
    assert numbers(pb.ModelInferRequest) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                                             "inputs": 5, "outputs": 6, "raw_input_contents": 7}
    assert numbers(pb.ModelInferRequest.InferInputTensor) == {"name": 1, "datatype": 2, "shape": 3,
                                                              "parameters": 4, "contents": 5}
    assert numbers(pb.ModelInferRequest.InferRequestedOutputTensor) == {"name": 1, "parameters": 2}
    assert numbers(pb.ModelInferResponse) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                                              "outputs": 5, "raw_output_contents": 6}
    assert numbers(pb.ModelInferResponse.InferOutputTensor) == {"name": 1, "datatype": 2, "shape": 3,
                                                                "parameters": 4, "contents": 5}
    assert numbers(pb.InferTensorContents) == {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4, "uint64_contents": 5,
        "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8}
    assert numbers(pb.InferParameter) == {"bool_param": 1, "int64_param": 2, "string_param": 3,
                                          "double_param": 4, "uint64_param": 5}
    assert numbers(pb.ModelMetadataResponse) == {"name": 1, "versions": 2, "platform": 3, "inputs": 4,
                                                 "outputs": 5}
    assert numbers(pb.ModelMetadataResponse.TensorMetadata) == {"name": 1, "datatype": 2, "shape": 3}
    assert numbers(pb.ServerMetadataResponse) == {"name": 1, "version": 2, "extensions": 3}
    assert numbers(pb.ModelReadyRequest) == {"name": 1, "version": 2}
    assert numbers(pb.ModelMetadataRequest) == {"name": 1, "version": 2}
    assert numbers(pb.ServerLiveResponse) == {"live": 1}
    assert numbers(pb.ServerReadyResponse) == {"ready": 1}
    assert numbers(pb.ModelReadyResponse) == {"ready": 1}
