"""Several streams in one platform, each with its own model: one serving process per model, started
by `up` for every stream of the folder and by `streams add` for a new one (restarting nothing else),
shown by `status`, recorded in platform.json, and asked by `predict MODEL`."""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import numpy as np
import pytest

from driftline.v1 import serving_pb2, serving_pb2_grpc
from services.cli.processes import plan_serving
from services.cli.state import Platform
from services.common.objectstore import MinioObjectStore
from services.feature.segments import SegmentRow, write_segment

from cli_support import HYPERPLANE, SEA
from support import wait_for

DEFAULT_MODEL = "driftline-model"
MODELS = {"default": DEFAULT_MODEL, "sea": "sea", "hyperplane": "hyperplane-model"}


def serving_rows(rows: list[dict]) -> dict[str, dict]:
    return {r["model"]: r for r in rows if r["service"] == "serving"}


def supervision(platform) -> dict[str, dict]:
    return json.loads((platform.home / "supervisor.json").read_text())


def state(platform) -> dict:
    return json.loads((platform.home / "platform.json").read_text())


def labelled_rows(schema: dict, n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(feature names, values, labels): SEA's rule (x1 + x2 <= 8) or a fixed hyperplane's."""
    names = [f["name"] for f in schema["fields"]]
    x = np.random.default_rng(seed).uniform(0, schema["fields"][0]["max"], size=(n, len(names)))
    if schema is SEA:
        y = (x[:, 0] + x[:, 1] <= 8.0).astype(int)
    else:
        weights = np.linspace(1.0, 0.2, len(names))
        y = (x @ weights > weights.sum() / 2).astype(int)
    return names, x, y


def store_segment(platform, s3, schema: dict, n: int = 400) -> list[str]:
    """A feature segment of `n` labelled rows of the stream, as the feature service writes them.

    Written here rather than produced: ingest validates one stream's events today (making it read
    the catalogue is issue 10's work in progress); once it does, `driftline produce --stream` can
    feed these streams like the default one."""
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, platform.env["DRIFTLINE_BUCKET"],
                             secure=s3.secure)
    store.ensure_bucket()
    names, x, y = labelled_rows(schema, n, seed=7)
    now = int(time.time() * 1000) - n
    rows = [SegmentRow(offset=i, event_id=f"{schema['stream']}-{i}", entity_id=f"e{i % 7}", event_time_ms=now + i,
                       label=int(y[i]), values=[float(v) for v in x[i]]) for i in range(n)]
    write_segment(store, schema["stream"], 0, rows, names)
    return names


def test_up_started_one_serving_process_per_model_of_the_streams_folder(platform):
    served = serving_rows(platform.up["services"])
    assert set(served) == set(MODELS.values())
    assert all(row["health"] == "SERVING" for row in served.values())
    assert len({row["address"] for row in served.values()}) == len(MODELS)  # a port each
    assert len({row["pid"] for row in served.values()}) == len(MODELS)  # a process each
    recorded = state(platform)
    for stream, model in MODELS.items():
        entry = recorded["serving"][model]
        assert entry["address"] == served[model]["address"] and entry["stream"] == stream
        assert entry["env"]["DRIFTLINE_MODEL_NAME"] == model
    assert recorded["services"]["registry"]["env"]["DRIFTLINE_SERVING_ADDRESS"] == served[DEFAULT_MODEL]["address"]
    assert {f"serving:{model}" for model in MODELS.values()} <= set(supervision(platform))


def test_status_shows_each_serving_process_by_model(platform):
    report = platform.json("status")
    served = serving_rows(report["services"])
    assert set(served) >= set(MODELS.values())
    assert all(row["health"] == "SERVING" and isinstance(row["restarts"], int) for row in served.values())
    table = platform.ok("status")
    assert all(model in table for model in MODELS.values())


def test_streams_add_on_a_running_platform_serves_its_model_and_restarts_nothing(platform, tmp_path):
    before = supervision(platform)
    schema = {"stream": "mixed", "model": "mixed-model", "fields": [
        {"name": "v", "type": "bool"}, {"name": "w", "type": "bool"}, {"name": "x", "type": "number", "min": 0, "max": 1},
        {"name": "y", "type": "number", "min": 0, "max": 1}], "label": {"type": "integer", "min": 0, "max": 1}}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(schema))
    added = platform.json("streams", "add", path, timeout=90)
    assert added["changed"] and (platform.home / "streams" / "mixed.json").exists()
    assert added["serving"]["started"] and added["serving"]["model"] == "mixed-model"
    assert added["serving"]["health"] == "SERVING"

    after = supervision(platform)
    assert after["serving:mixed-model"]["state"] == "running"
    unchanged = {name: (s["pid"], s["restarts"]) for name, s in before.items()}
    assert {name: (after[name]["pid"], after[name]["restarts"]) for name in before} == unchanged
    assert state(platform)["serving"]["mixed-model"]["address"] == added["serving"]["address"]
    assert "serving:mixed-model: started" in platform.ok("logs", "supervisor", "-n", "0")
    assert platform.ok("logs", "serving", "--model", "mixed-model", "-n", "0").strip()

    again = platform.json("streams", "add", path)  # nothing new: nothing started
    assert not again["changed"] and not again["serving"]["started"]
    assert supervision(platform).keys() == after.keys()


@pytest.fixture(scope="module")
def trained_per_stream(platform, s3):
    """A model for SEA's stream and one for HYPERPLANE's, each trained with `driftline train --wait`."""
    results = {}
    for schema in (SEA, HYPERPLANE):
        store_segment(platform, s3, schema)
        result = platform.json("train", "--stream", schema["stream"], "--rows", "300", "--param", "epochs=5",
                               "--wait", "--timeout", "180", timeout=240)
        assert result["status"] == "SUCCEEDED" and result["promoted"], result
        results[schema["stream"]] = result
    return results


def test_predict_answers_from_each_models_own_process(platform, trained_per_stream):
    rows = {"sea": {"x1": 1.0, "x2": 2.0, "x3": 9.0}, "hyperplane": dict(zip("abcde", (0.9, 0.8, 0.7, 0.9, 0.9)))}
    for stream, row in rows.items():
        model, version = MODELS[stream], trained_per_stream[stream]["version"]

        def answered():
            done = platform.run("predict", model, "--row", json.dumps(row), "--json")
            return json.loads(done.stdout) if done.returncode == 0 else None

        answer = wait_for(answered, 60, f"{model} v{version} to be served", every=1.0)
        assert answer["model_name"] == model and answer["model_version"] == version
        assert answer["label"] in (0, 1) and abs(sum(answer["scores"]) - 1) < 1e-4

    # Each process serves its own model only: asked for another, it says which one it serves.
    addresses = state(platform)["serving"]
    with grpc.insecure_channel(addresses["sea"]["address"]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            serving_pb2_grpc.PredictorStub(channel).Predict(serving_pb2.PredictRequest(
                model_name="hyperplane-model", rows=[serving_pb2.Row(values=[0.5] * 5)]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "'sea'" in refused.value.details()

    wrong = platform.run("predict", "hyperplane-model", "--row", json.dumps(rows["sea"]))
    assert wrong.returncode == 1 and wrong.stderr.startswith("driftline: --row does not fit hyperplane-model v")
    unknown = platform.run("predict", "nosuch", "--row", json.dumps(rows["sea"]))
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith("driftline: unknown model 'nosuch': no serving process for it")


def test_the_default_stream_keeps_the_default_port_when_it_is_free(tmp_path):
    folder = tmp_path / "home" / "streams"
    folder.mkdir(parents=True)
    for schema in (SEA, HYPERPLANE, {"stream": "default", "model": DEFAULT_MODEL, "fields": SEA["fields"]}):
        (folder / f"{schema['stream']}.json").write_text(json.dumps(schema))
    platform = Platform(tmp_path / "home", {"stream": "default"})
    addresses = {"registry": "127.0.0.1:1", "feature": "127.0.0.1:2"}
    planned = plan_serving(platform, addresses, pick=lambda default: default)  # as if every default port were free
    assert list(planned) == [DEFAULT_MODEL, "hyperplane-model", "sea"]  # the default stream's first
    assert planned[DEFAULT_MODEL]["address"] == "127.0.0.1:50054"
    assert {planned[m]["address"] for m in ("sea", "hyperplane-model")}.isdisjoint({"127.0.0.1:50054"})
    assert planned["sea"]["env"]["DRIFTLINE_MODEL_NAME"] == "sea" and planned["sea"]["env"]["DRIFTLINE_STREAM"] == "sea"
    # A plan made again keeps what was planned: a running model's process is never moved.
    platform.doc["serving"] = {"sea": planned["sea"]}
    assert plan_serving(platform, addresses)["sea"] == planned["sea"]


def test_a_killed_serving_process_is_restarted_alone_and_counted(platform):
    before = supervision(platform)
    victim = before["serving:sea"]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted():
        done = platform.run("status", "--json")
        row = serving_rows(json.loads(done.stdout)["services"]).get("sea") if done.returncode == 0 else None
        return row if row and row["restarts"] == victim["restarts"] + 1 and row["health"] == "SERVING" else None

    row = wait_for(restarted, 60, "serving:sea to be restarted", every=1.0)
    assert row["pid"] != victim["pid"]
    after = supervision(platform)
    assert {n: s["pid"] for n, s in after.items() if n != "serving:sea"} == {
        n: s["pid"] for n, s in before.items() if n != "serving:sea"}
    assert "serving:sea: exited with -9" in platform.ok("logs", "supervisor", "-n", "0")
