"""Model artifacts that are valid ONNX but ask the loading process for a file outside the artifact
(external data by `../` or an absolute path, or any external data at all, since artifacts are
loaded from their bytes) or for code outside onnxruntime (an operator of a custom domain): refused
with the reason, before onnxruntime sees them, by serving's load and by the registry's gate (the
real registry process of the fuzz platform). Models the trainer and the tests make still pass."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from driftline.v1 import registry_pb2, registry_pb2_grpc
from helpers_models import agrawal_rows, trained_onnx
from services.common.onnx_safety import UnsafeModel, check_artifact, unsafe_reasons
from services.serving.onnx_model import InvalidModel, load_model
from tiny_models import FEATURES, WEIGHTS, tiny_model


def external_weights(location: str) -> TensorProto:
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def contract_model(nodes, initializers=(), functions=()) -> bytes:
    """features float32 [N, 3] → probabilities [N, 2] through `nodes`, as serving's contract wants."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], list(initializers))
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(f.domain, 1) for f in functions)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 9
    return model.SerializeToString()


def with_external_data(location: str) -> bytes:
    return contract_model([helper.make_node("MatMul", ["features", "W"], ["probabilities"])],
                          [external_weights(location)])


def with_custom_op(domain: str = "com.example.ops") -> bytes:
    return contract_model([helper.make_node("Exfiltrate", ["features"], ["probabilities"], domain=domain)])


def in_a_subgraph(location: str) -> bytes:
    """The external tensor hidden in an If's branch, where a scan of the top graph would miss it."""
    branch = helper.make_graph([helper.make_node("MatMul", ["features", "W"], ["probabilities"])], "then", [],
                               [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
                               [external_weights(location)])
    condition = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["probabilities"], then_branch=branch, else_branch=branch)
    return contract_model([node], [condition])


UNSAFE = {
    "parent-directory": (with_external_data("../../etc/passwd"), "outside the model's own directory"),
    "absolute-path": (with_external_data("/etc/shadow"), "outside the model's own directory"),
    "windows-path": (with_external_data("C:\\secrets\\w.bin"), "outside the model's own directory"),
    "normalised-escape": (with_external_data("weights/../../w.bin"), "outside the model's own directory"),
    "beside-the-model": (with_external_data("weights.bin"), "read from the server's working directory"),
    "in-a-subgraph": (in_a_subgraph("../w.bin"), "outside the model's own directory"),
    "custom-op": (with_custom_op(), "custom-op library"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_artifacts_are_refused_with_the_reason(case):
    artifact, reason = UNSAFE[case]
    with pytest.raises(UnsafeModel, match=reason):
        check_artifact(artifact)


@pytest.mark.parametrize("case", list(UNSAFE))
def test_serving_refuses_them_before_onnxruntime_opens_them(case):
    artifact, reason = UNSAFE[case]
    with pytest.raises(InvalidModel, match="refused before it is loaded") as refused:
        load_model(artifact, name="m", version=1, sha256="x", feature_names=FEATURES)
    assert reason in str(refused.value)
    assert refused.value.__cause__ is None  # onnxruntime never raised: it was never called


def test_a_custom_op_inside_a_local_function_is_refused_and_the_function_itself_is_not():
    body = helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.example.ops")
    function = helper.make_function("local.fns", "Wrap", ["x"], ["y"], [body],
                                    [helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)])
    artifact = contract_model([helper.make_node("Wrap", ["features"], ["probabilities"], domain="local.fns")],
                              functions=[function])
    reasons = unsafe_reasons(onnx.load_model_from_string(artifact))
    assert len(reasons) == 1 and "node 'Exfiltrate' (function 'Wrap')" in reasons[0], reasons


def test_the_models_driftline_makes_pass():
    check_artifact(tiny_model(WEIGHTS[1]))
    check_artifact(trained_onnx(agrawal_rows(300, seed=2), epochs=1))  # the trainer's exporter (dynamo)


def test_the_registry_gate_refuses_an_unsafe_artifact(fuzz_platform):
    store = fuzz_platform.store()
    with grpc.insecure_channel(fuzz_platform.address("registry")) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        for case in ("parent-directory", "custom-op"):
            artifact, reason = UNSAFE[case]
            ref = store.put_bytes(f"models/unsafe-{case}/1/model.onnx", artifact)
            version = registry.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                model_version=registry_pb2.ModelVersion(name=f"unsafe-{case}", artifact_uri=ref.uri,
                                                        artifact_sha256=ref.sha256, dataset_id="d",
                                                        feature_names=FEATURES)), timeout=10)
            # "production" points nowhere, so only the artifact's own check stands between it and serving.
            decision = registry.Promote(registry_pb2.PromoteRequest(name=f"unsafe-{case}", version=version.version,
                                                                    alias="production"), timeout=30)
            assert not decision.promoted and reason in decision.reason, decision
            with pytest.raises(grpc.RpcError) as nowhere:
                registry.GetAlias(registry_pb2.GetAliasRequest(name=f"unsafe-{case}", alias="production"), timeout=10)
            assert nowhere.value.code() == grpc.StatusCode.NOT_FOUND
