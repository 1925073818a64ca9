"""The generated driftline.v1 stubs are what protos/ says they are."""

import filecmp
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale(tmp_path):
    fresh = _load_generator().generate(tmp_path)
    committed = REPO / "driftline" / "v1"
    names = sorted(p.name for p in fresh)
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file()), \
        "generated file set differs: run `make proto`"
    stale = [n for n in names if not filecmp.cmp(tmp_path / "driftline" / "v1" / n, committed / n, shallow=False)]
    assert not stale, f"stale generated code {stale}: run `make proto`"


def test_grpc_stubs_import_their_siblings_absolutely():
    from driftline.v1 import registry_pb2, registry_pb2_grpc

    assert registry_pb2_grpc.driftline_dot_v1_dot_registry__pb2 is registry_pb2


def test_every_service_of_the_loop_is_declared():
    from driftline.v1 import features_pb2, ingest_pb2, monitor_pb2, registry_pb2, serving_pb2

    declared = {s for m in (features_pb2, ingest_pb2, monitor_pb2, registry_pb2, serving_pb2)
                for s in m.DESCRIPTOR.services_by_name}
    assert declared == {"Ingest", "FeatureStore", "Registry", "Predictor", "Monitor"}
