"""What an ONNX artifact must not ask of the process that loads it, checked before onnxruntime sees it.

A valid ONNX model can still make onnxruntime read files or run code that is not in the artifact:
a tensor whose data is "external" names a file by path (``location``), which onnxruntime opens
relative to the model's directory — and a model opened from bytes, as serving and the registry's
gate open them, has no directory, so the path is resolved from the process's working directory,
and ``../`` or an absolute path reaches any file the process may read; a node of a domain that
neither ONNX nor onnxruntime defines runs only if a custom-op library is registered for it, code
that the artifact would choose. Driftline's artifacts are one self-contained file (the trainer
exports with ``external_data=False``) of standard operators, so `check_model` refuses both, with
the tensor or node that asks for them, and serving's load and the gate call it first.

>>> from onnx import helper, TensorProto
>>> node = helper.make_node("Evil", ["x"], ["y"], domain="com.example.ops")
>>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
...                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
>>> unsafe_reasons(helper.make_model(graph))
["node 'Evil' (graph 'g') is of operator domain 'com.example.ops', which onnxruntime runs only from a custom-op library"]
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

# ONNX's own domains ("" and "ai.onnx" are the same one) and onnxruntime's contrib operators, which
# ship inside onnxruntime itself: nothing outside the installed wheel runs for them.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training",
                              "com.microsoft"})


class UnsafeModel(ValueError):
    """The artifact asks onnxruntime for a file or for code outside itself; the message says what."""


def check_artifact(data: bytes, what: str = "the artifact") -> ModelProto:
    """The parsed model of `data`; raises UnsafeModel naming every reason it is refused."""
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise UnsafeModel(f"{what} is not an ONNX model: {exc}") from None
    reasons = unsafe_reasons(model)
    if reasons:
        raise UnsafeModel(f"{what} is refused before it is loaded: {'; '.join(reasons)}")
    return model


def unsafe_reasons(model: ModelProto) -> list[str]:
    """Why `model` must not be loaded from bytes: external data and custom-op domains, [] if none."""
    local = {(f.domain, f.name) for f in model.functions}
    reasons = [_external_reason(tensor, where) for tensor, where in _tensors(model)
               if tensor.data_location == TensorProto.EXTERNAL]
    for node, where in _nodes(model):
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            reasons.append(f"node {node.name or node.op_type!r} ({where}) is of operator domain {node.domain!r}, "
                           "which onnxruntime runs only from a custom-op library")
    return reasons


def escapes(location: str) -> bool:
    """Whether an external-data `location` leaves the model's own directory.

    >>> escapes("weights.bin"), escapes("../weights.bin"), escapes("/etc/passwd"), escapes("a/../../b")
    (False, True, True, True)
    >>> escapes("C:\\\\secrets.bin"), escapes("a\\\\..\\\\..\\\\b")
    (True, True)
    """
    path = location.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return True
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _external_reason(tensor: TensorProto, where: str) -> str:
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    name = f"tensor {tensor.name!r} ({where})"
    if escapes(location):
        return f"{name} names external data {location!r}, outside the model's own directory"
    return (f"{name} names external data {location!r}; an artifact is loaded from its bytes alone, where "
            "that path would be read from the server's working directory")


def _graphs(graph: GraphProto, where: str) -> Iterator[tuple[GraphProto, str]]:
    """`graph` and every subgraph of its nodes (If, Loop, Scan bodies), depth first."""
    yield graph, where
    for node in graph.node:
        for attribute in node.attribute:
            for sub in _attribute_graphs(attribute):
                yield from _graphs(sub, f"{where} > {node.op_type} {attribute.name}")


def _attribute_graphs(attribute: AttributeProto) -> list[GraphProto]:
    if attribute.type == AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def _all_graphs(model: ModelProto) -> Iterator[tuple[GraphProto, str]]:
    yield from _graphs(model.graph, f"graph {model.graph.name!r}")
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                for sub in _attribute_graphs(attribute):
                    yield from _graphs(sub, f"function {function.name!r} > {node.op_type}")


def _nodes(model: ModelProto) -> Iterator[tuple[onnx.NodeProto, str]]:
    for graph, where in _all_graphs(model):
        for node in graph.node:
            yield node, where
    for function in model.functions:
        for node in function.node:
            yield node, f"function {function.name!r}"


def _tensors(model: ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every tensor that can hold data: initializers, sparse ones' parts, tensor-valued attributes."""
    node_lists = [(graph.node, where) for graph, where in _all_graphs(model)]
    node_lists += [(function.node, f"function {function.name!r}") for function in model.functions]
    for graph, where in _all_graphs(model):
        yield from ((t, where) for t in graph.initializer)
        for sparse in graph.sparse_initializer:
            yield from ((t, where) for t in (sparse.values, sparse.indices))
    for nodes, where in node_lists:
        for node in nodes:
            for attribute in node.attribute:
                tensors = [attribute.t] if attribute.HasField("t") else []
                tensors += list(attribute.tensors)
                if attribute.HasField("sparse_tensor"):
                    tensors += [attribute.sparse_tensor.values, attribute.sparse_tensor.indices]
                tensors += [t for s in attribute.sparse_tensors for t in (s.values, s.indices)]
                yield from ((t, where) for t in tensors)
