"""Serving's Open Inference Protocol v2 (KServe / Triton gRPC) and its dynamic batcher.

The client is the generated `inference` stubs: tritonclient[grpc] 2.73 pins
protobuf<7 and this project runs protobuf 7 (see the report in the issue), so
`as_numpy` is reproduced here the way tritonclient does it — from
raw_output_contents only. The serving process, the broker, the object store and
the ONNX models are real; the registry is a small real gRPC server in the test.
The first tests drive the batcher directly (no infrastructure)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from driftline.v1 import registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from services.serving.batcher import Batcher, DeadlineExpired, QueueFull
from services.serving.onnx_model import load_model
from services.serving.server import INFERENCE
from serving_stack import store_and_topics
from support import GrpcThread, ServiceRun, free_port, wait_for
from tiny_models import FEATURES, WEIGHTS, expected_scores, tiny_model

MODEL = "tiny-oip"


def loaded(version: int):
    return load_model(tiny_model(WEIGHTS[version]), name=MODEL, version=version, sha256="x",
                      feature_names=FEATURES)


# -- the batcher on its own ---------------------------------------------------------------------

def test_batcher_merges_concurrent_requests_and_gives_each_its_own_rows():
    model = loaded(1)

    async def scenario():
        batcher = Batcher(max_batch_rows=64, max_queue_delay_s=0.05, model_name=MODEL)
        rows = [np.random.default_rng(i).normal(size=(1, 3)).astype(np.float32) for i in range(20)]
        answers = await asyncio.gather(*(batcher.predict(model, r) for r in rows))
        await batcher.close()
        return rows, answers, batcher.batches_run

    rows, answers, batches = asyncio.run(scenario())
    assert batches < len(rows)  # 20 single-row requests, fewer session calls
    for r, a in zip(rows, answers):
        np.testing.assert_allclose(a, expected_scores(1, r), rtol=1e-5)


def test_batcher_never_mixes_models_so_queued_requests_finish_on_their_model():
    old, new = loaded(1), loaded(2)
    row = np.array([[1.0, 2.0, 3.0]], np.float32)

    async def scenario():
        batcher = Batcher(max_batch_rows=64, max_queue_delay_s=0.05, model_name=MODEL)
        answers = await asyncio.gather(*(batcher.predict(m, row) for m in (old, old, new, new, old)))
        await batcher.close()
        return answers, batcher.batches_run

    answers, batches = asyncio.run(scenario())
    for model, answer in zip((1, 1, 2, 2, 1), answers):
        np.testing.assert_allclose(answer, expected_scores(model, row), rtol=1e-5)
    assert batches == 3  # old+old, new+new, old


def test_batcher_refuses_when_full_and_does_not_run_expired_requests():
    model = loaded(1)
    row = np.ones((1, 3), np.float32)

    async def scenario():
        batcher = Batcher(max_batch_rows=64, max_queue_delay_s=0.3, max_queued=2, model_name=MODEL)
        expiring = asyncio.ensure_future(batcher.predict(model, row, timeout_s=0.05))
        waiting = asyncio.ensure_future(batcher.predict(model, row, timeout_s=5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.predict(model, row)
        # At once, not after the queue delay: the queued requests are still waiting for their batch.
        still_waiting = not expiring.done() and not waiting.done()
        with pytest.raises(DeadlineExpired):
            await expiring
        answer = await waiting
        await batcher.close()
        return still_waiting, answer, batcher.batches_run

    refused_at_once, answer, batches = asyncio.run(scenario())
    assert refused_at_once
    np.testing.assert_allclose(answer, expected_scores(1, row), rtol=1e-5)
    assert batches == 1  # the expired request did not run


def test_a_lone_request_skips_the_wait_once_waiting_gathers_nobody_and_overlap_turns_it_back_on():
    model = loaded(1)
    row = np.array([[0.5, -1.0, 2.0]], np.float32)

    async def scenario():
        batcher = Batcher(max_batch_rows=64, max_queue_delay_s=0.05, model_name=MODEL, inline_max_s=0.01)

        async def how_cut():
            """One request alone: its answer, and whether it waited the delay out or was cut at once."""
            timed_out, skipped = batcher.waits_timed_out, batcher.waits_skipped
            answer = await batcher.predict(model, row)
            return answer, ("waited" if batcher.waits_timed_out > timed_out
                            else "at once" if batcher.waits_skipped > skipped else "?")

        _, first = await how_cut()  # nothing known yet: it waits the delay out, and nobody comes
        batcher.max_queue_delay_s = 5.0
        lone = [await how_cut() for _ in range(10)]  # one caller at a time: none waits the 5 s
        before = batcher.batches_run
        burst = await asyncio.gather(*(batcher.predict(model, row) for _ in range(8)))
        burst_batches = batcher.batches_run - before
        batcher.max_queue_delay_s = 0.05
        _, after_overlap = await how_cut()  # requests overlapped: waiting for company is back on
        batcher.max_queue_delay_s = 5.0
        _, lone_again = await how_cut()  # ... until a wait gathers nobody again
        await batcher.close()
        return first, lone, burst, burst_batches, after_overlap, lone_again, batcher.batches_inline

    first, lone, burst, burst_batches, after_overlap, lone_again, inline = asyncio.run(scenario())
    assert first == "waited"
    assert [cut for _, cut in lone] == ["at once"] * 10
    assert burst_batches == 1  # arrivals in the same loop turn still share one batch
    assert after_overlap == "waited"
    assert lone_again == "at once"
    assert inline > 0  # the tiny model's small batches ran on the loop, not a worker thread
    for answer in [a for a, _ in lone] + burst:
        np.testing.assert_allclose(answer, expected_scores(1, row), rtol=1e-5)


# -- serving as a process ---------------------------------------------------------------------

class RegistryStandIn(registry_pb2_grpc.RegistryServicer):
    def __init__(self) -> None:
        self.versions: dict[int, registry_pb2.ModelVersion] = {}
        self.production: int | None = None

    async def GetAlias(self, request, context):
        if request.name != MODEL or self.production is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "points nowhere")
        return self.versions[self.production]

    async def GetModelVersion(self, request, context):
        if request.version not in self.versions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")
        return self.versions[request.version]


class Serving:
    def __init__(self, channel: grpc.Channel, metrics_port: int, run: ServiceRun):
        self.channel = channel
        self.oip = pb_grpc.GRPCInferenceServiceStub(channel)
        self.predictor = serving_pb2_grpc.PredictorStub(channel)
        self.metrics_port = metrics_port
        self.run = run

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def stack(kafka_bootstrap, s3, topic_prefix, bucket_name, tmp_path):
    store, _ = store_and_topics(kafka_bootstrap, s3, topic_prefix, bucket_name)
    registry = GrpcThread(RegistryStandIn(), registry_pb2_grpc.add_RegistryServicer_to_server)
    try:
        def publish(version: int, production: bool = True) -> None:
            ref = store.put_bytes(f"models/{MODEL}/{version}/model.onnx", tiny_model(WEIGHTS[version]))
            registry.servicer.versions[version] = registry_pb2.ModelVersion(
                name=MODEL, version=version, artifact_uri=ref.uri, artifact_sha256=ref.sha256,
                feature_names=FEATURES)
            if production:
                registry.servicer.production = version  # found by serving's alias poller (retry 0.2 s)

        @contextmanager
        def serving(**settings: str):
            grpc_port, metrics_port = free_port(), free_port()
            env = {"DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
                   "DRIFTLINE_TOPIC_PREFIX": topic_prefix, "DRIFTLINE_BUCKET": bucket_name,
                   "DRIFTLINE_MODEL_NAME": MODEL, "DRIFTLINE_REGISTRY_ADDRESS": registry.address,
                   "DRIFTLINE_GRPC_PORT": str(grpc_port), "DRIFTLINE_METRICS_PORT": str(metrics_port),
                   "DRIFTLINE_ALIAS_RETRY_S": "0.2", "DRIFTLINE_LOG_JSON": "false",
                   **{f"DRIFTLINE_{k.upper()}": v for k, v in settings.items()}}
            log = tmp_path / f"serving-{grpc_port}.log"
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            with ServiceRun("serving", env, log) as run:
                running = Serving(channel, metrics_port, run)

                def live() -> bool:
                    run.assert_running()
                    try:
                        return running.oip.ServerLive(pb.ServerLiveRequest(), timeout=1).live
                    except grpc.RpcError:
                        return False

                try:
                    wait_for(live, 30, f"serving to start (log: {log})")
                    yield running
                finally:
                    channel.close()
                assert run.stop(timeout=20) == 0, f"serving did not exit cleanly: {run.log_tail(3000)}"

        yield publish, serving
    finally:
        registry.stop()


def infer_request(rows, *, raw: bool = True, name: str = "features", datatype: str = "FP32",
                  shape=None, model: str = MODEL, version: str = "", request_id: str = "") -> pb.ModelInferRequest:
    matrix = np.asarray(rows, np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=list(matrix.shape if shape is None else shape))
    if not raw:
        tensor.contents.fp32_contents.extend(matrix.ravel().tolist())
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id, inputs=[tensor])
    if raw:
        request.raw_input_contents.append(matrix.astype("<f4").tobytes())
    return request


def as_numpy(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """What tritonclient's InferResult.as_numpy does for FP32: raw_output_contents only."""
    for index, output in enumerate(response.outputs):
        if output.name == name:
            assert output.datatype == "FP32"
            return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(list(output.shape))
    raise KeyError(name)


def refused(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=5)
    return failure.value.code(), failure.value.details()


ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]


def test_oip_readiness_metadata_inference_and_errors(stack):
    publish, serving = stack
    with serving(max_request_rows="8") as s:
        # Live before any model; not ready; inference says UNAVAILABLE.
        assert s.oip.ServerLive(pb.ServerLiveRequest()).live
        assert not s.oip.ServerReady(pb.ServerReadyRequest()).ready
        assert not s.oip.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
        assert refused(s.oip.ModelInfer, infer_request(ROWS)) == (grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        health = health_pb2_grpc.HealthStub(s.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=INFERENCE)).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING

        publish(1)
        wait_for(lambda: s.oip.ServerReady(pb.ServerReadyRequest()).ready, 30, "v1 to load")
        assert s.oip.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
        assert s.oip.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1")).ready
        assert not s.oip.ModelReady(pb.ModelReadyRequest(name=MODEL, version="7")).ready
        assert not s.oip.ModelReady(pb.ModelReadyRequest(name="nope")).ready
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(service=INFERENCE)).status
                 == health_pb2.HealthCheckResponse.SERVING, 30, "OIP health SERVING")
        meta = s.oip.ServerMetadata(pb.ServerMetadataRequest())
        assert meta.name == "driftline" and meta.version

        model = s.oip.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        assert (model.name, list(model.versions), model.platform) == (MODEL, ["1"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("features", "FP32", [-1, 3])]
        assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("probabilities", "FP32", [-1, 2])]

        # Typed contents and raw contents give the same answer, always as raw_output_contents.
        for raw in (False, True):
            answer = s.oip.ModelInfer(infer_request(ROWS, raw=raw, request_id=f"r-{raw}"), timeout=5)
            assert (answer.model_name, answer.model_version, answer.id) == (MODEL, "1", f"r-{raw}")
            assert len(answer.raw_output_contents) == 1 and not answer.outputs[0].HasField("contents")
            np.testing.assert_allclose(as_numpy(answer, "probabilities"), expected_scores(1, ROWS), rtol=1e-5)
            assert answer.parameters["execution_provider"].string_param.endswith("ExecutionProvider")
        asked = infer_request(ROWS, version="1")
        asked.outputs.add(name="probabilities")
        assert s.oip.ModelInfer(asked, timeout=5).model_version == "1"
        # Predict answers on the same server, through the same batcher.
        predicted = s.predictor.Predict(serving_pb2.PredictRequest(
            model_name=MODEL, rows=[serving_pb2.Row(values=r) for r in ROWS]), timeout=5)
        assert predicted.model_version == 1

        # What a client can get wrong, and what it is told.
        bad_nan = infer_request([[1.0, float("nan"), 3.0]])
        bad_inf = infer_request([[1.0, 2.0, float("inf")]], raw=False)
        two_inputs = infer_request(ROWS)
        two_inputs.inputs.add(name="extra", datatype="FP32", shape=[1])
        wrong_output = infer_request(ROWS)
        wrong_output.outputs.add(name="logits")
        short_raw = infer_request(ROWS)
        short_raw.raw_input_contents[0] = b"\0" * 12
        cases = [
            (infer_request(ROWS, model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
            (infer_request(ROWS, version="9"), grpc.StatusCode.NOT_FOUND, "version '9'"),
            (infer_request(ROWS, name="x"), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'x'"),
            (infer_request(ROWS, datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT, "datatype FP64"),
            (infer_request([[1.0, 2.0]]), grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 2]"),
            (infer_request(ROWS, shape=[6]), grpc.StatusCode.INVALID_ARGUMENT, "shape [6]"),
            (infer_request([[0.0, 0.0, 0.0]] * 9), grpc.StatusCode.INVALID_ARGUMENT, "9 rows in one request"),
            (bad_nan, grpc.StatusCode.INVALID_ARGUMENT, "row 0, feature 1 is nan"),
            (bad_inf, grpc.StatusCode.INVALID_ARGUMENT, "row 0, feature 2 is inf"),
            (two_inputs, grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
            (wrong_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
            (short_raw, grpc.StatusCode.INVALID_ARGUMENT, "holds 12 bytes"),
        ]
        for request, code, message in cases:
            got_code, details = refused(s.oip.ModelInfer, request)
            assert (got_code, message in details) == (code, True), (message, got_code, details)
        assert refused(s.oip.ModelMetadata, pb.ModelMetadataRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND
        nan_predict = serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=[1, float("nan"), 3])])
        assert refused(s.predictor.Predict, nan_predict)[0] == grpc.StatusCode.INVALID_ARGUMENT

        # Triton's superset beyond the six RPCs is not served.
        config = s.channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")
        assert refused(config, b"")[0] == grpc.StatusCode.UNIMPLEMENTED
        # Reflection names the service (grpcurl works).
        reflection = reflection_pb2_grpc.ServerReflectionStub(s.channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5))
        assert INFERENCE in {svc.name for svc in answer.list_services_response.service}

        assert s.metric("driftline_serving_requests_total", model=MODEL, api="infer", outcome="ok") == 3
        assert s.metric("driftline_serving_requests_total", model=MODEL, api="infer",
                        outcome="invalid_argument") == 10
        assert s.metric("driftline_serving_requests_total", model=MODEL, api="infer", outcome="unavailable") == 1
        provider = answer_provider(s)
        assert s.metric("driftline_serving_model_info", model=MODEL, version="1", provider=provider) == 1
        assert s.metric("driftline_serving_request_duration_seconds_count", model=MODEL, api="infer") >= 14


def answer_provider(s: Serving) -> str:
    return s.oip.ModelInfer(infer_request(ROWS), timeout=5).parameters["execution_provider"].string_param


def test_concurrent_single_row_calls_are_batched(stack):
    publish, serving = stack
    publish(1)
    with serving(max_queue_delay_ms="20", max_batch_rows="64") as s:
        wait_for(lambda: s.oip.ServerReady(pb.ServerReadyRequest()).ready, 30, "v1 to load")
        rng = np.random.default_rng(7)
        work = [rng.normal(size=(1, 3)).astype(np.float32) for _ in range(160)]

        def call(i: int):
            row = work[i]
            if i % 4 == 0:  # Predict and ModelInfer share the batcher
                answer = s.predictor.Predict(serving_pb2.PredictRequest(
                    model_name=MODEL, rows=[serving_pb2.Row(values=row[0].tolist())]), timeout=10)
                return row, np.array([answer.predictions[0].scores])
            return row, as_numpy(s.oip.ModelInfer(infer_request(row), timeout=10), "probabilities")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(len(work))))
        for row, scores in results:
            np.testing.assert_allclose(scores, expected_scores(1, row), rtol=1e-5)

        batches = s.metric("driftline_serving_batch_size_requests_count", model=MODEL)
        single = s.metric("driftline_serving_batch_size_requests_bucket", model=MODEL, le="1.0")
        requests = s.metric("driftline_serving_batch_size_requests_sum", model=MODEL)
        assert requests >= len(work)
        assert batches - single > 0, "no batch held more than one request"
        assert batches < requests
        assert s.metric("driftline_serving_queue_delay_seconds_count", model=MODEL) >= len(work)


def test_a_request_expiring_in_the_queue_is_not_run_and_a_full_queue_refuses_at_once(stack):
    publish, serving = stack
    publish(1)
    with serving(max_queue_delay_ms="1500", max_queued_requests="2") as s:
        wait_for(lambda: s.oip.ServerReady(pb.ServerReadyRequest()).ready, 30, "v1 to load")
        rows_before = s.metric("driftline_serving_batch_size_rows_count", model=MODEL)

        code, _ = refused(lambda r, timeout: s.oip.ModelInfer(r, timeout=0.3), infer_request(ROWS))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: s.metric("driftline_serving_requests_total", model=MODEL, api="infer",
                                  outcome="deadline_exceeded") == 1, 30, "the expiry to be counted")
        time.sleep(1.7)  # past the batch window it would have run in
        assert s.metric("driftline_serving_batch_size_rows_count", model=MODEL) == rows_before

        # Two requests wait out the 1.5 s window; the third finds the queue full and is told at once.
        first = s.oip.ModelInfer.future(infer_request(ROWS), timeout=10)
        second = s.predictor.Predict.future(serving_pb2.PredictRequest(
            model_name=MODEL, rows=[serving_pb2.Row(values=r) for r in ROWS]), timeout=10)
        time.sleep(0.3)  # both have arrived and wait for the batch window
        code, details = refused(s.oip.ModelInfer, infer_request(ROWS))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in details
        assert not first.done()  # still waiting for its batch: the refusal did not wait for it
        np.testing.assert_allclose(as_numpy(first.result(), "probabilities"), expected_scores(1, ROWS), rtol=1e-5)
        assert second.result().model_version == 1
        assert s.metric("driftline_serving_batch_size_requests_bucket", model=MODEL, le="2.0") - \
            s.metric("driftline_serving_batch_size_requests_bucket", model=MODEL, le="1.0") >= 1
        assert s.metric("driftline_serving_requests_total", model=MODEL, api="infer",
                        outcome="resource_exhausted") == 1
