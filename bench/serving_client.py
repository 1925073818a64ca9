"""The serving benchmark's load generator: one async Open Inference Protocol v2 client for every server.

`run_point` drives `ModelInfer` on one gRPC address with `concurrency` callers, each
sending requests of `rows` rows back to back, for a warm-up and then a measured window.
The request is serialized once (FP32 `raw_input_contents`, as tritonclient sends it) and
sent as bytes over a generic unary call, so the client spends its CPU on gRPC and nothing
else; every answer is parsed and checked (one [rows, 2] FP32 output, raw or typed).
`run_raw_ort` is the limit beside it: the same session calls in-process, no network.

tritonclient[grpc] would downgrade protobuf below 7 in the main venv, so the client uses the
repository's own OIP v2 stubs (`inference/`, generated from protos/inference/grpc_service.proto);
on the wire it is the same protocol tritonclient speaks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from inference import grpc_service_pb2 as oip
from services.common.channels import aio_channel

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/driftline.v1.Predictor/Predict"
FEATURES = 16
CLASSES = 2
MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.max_receive_message_length", MAX_MESSAGE)]


@dataclass
class PointResult:
    requests: int = 0
    rows: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    client_cpu_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)


def features(rows: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (rows, FEATURES)).astype(np.float32)


def infer_request(model: str, rows: int) -> bytes:
    """A serialized ModelInferRequest: input "features" FP32 [rows, 16] as raw_input_contents."""
    x = features(rows)
    request = oip.ModelInferRequest(
        model_name=model,
        inputs=[oip.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, FEATURES])],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        raw_input_contents=[np.ascontiguousarray(x, dtype="<f4").tobytes()])
    return request.SerializeToString()


def check_infer_response(data: bytes, rows: int) -> None:
    response = oip.ModelInferResponse.FromString(data)
    if len(response.outputs) != 1:
        raise ValueError(f"{len(response.outputs)} outputs; expected 1")
    output = response.outputs[0]
    if list(output.shape) != [rows, CLASSES]:
        raise ValueError(f"output shape {list(output.shape)}; expected {[rows, CLASSES]}")
    if response.raw_output_contents:
        size = len(response.raw_output_contents[0])
    else:
        size = 4 * len(output.contents.fp32_contents)
    if size != rows * CLASSES * 4:
        raise ValueError(f"output holds {size} bytes; expected {rows * CLASSES * 4}")


def predict_request(model: str, rows: int) -> bytes:
    """A serialized driftline.v1.PredictRequest with the same features (the Predictor API)."""
    from driftline.v1 import serving_pb2

    x = features(rows)
    return serving_pb2.PredictRequest(
        model_name=model, rows=[serving_pb2.Row(values=r.tolist()) for r in x]).SerializeToString()


def check_predict_response(data: bytes, rows: int) -> None:
    from driftline.v1 import serving_pb2

    response = serving_pb2.PredictResponse.FromString(data)
    if len(response.predictions) != rows:
        raise ValueError(f"{len(response.predictions)} predictions; expected {rows}")


async def wait_ready(address: str, model: str, timeout_s: float, alive=lambda: None) -> None:
    """Waits until ModelReady(model) answers true."""
    from inference import grpc_service_pb2_grpc as oip_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aio_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            alive()
            try:
                if (await stub.ModelReady(oip.ModelReadyRequest(name=model), timeout=2)).ready:
                    return
                last = "ModelReady false"
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{model} at {address} not ready after {timeout_s}s ({last})")


async def run_point(address: str, model: str, rows: int, concurrency: int, duration_s: float,
                    warmup_s: float, min_requests: int = 3, max_requests: int | None = None,
                    timeout_s: float = 120.0, api: str = "oip") -> PointResult:
    """Closed-loop load: `concurrency` callers, each waiting for its answer before the next call.

    Requests that start in the warm-up are not counted. After the window (and once at least
    `min_requests` were counted) callers stop starting new ones; those in flight finish and count.
    Throughput = counted requests / (last counted answer − window start).
    """
    if api == "oip":
        payload, check, method = infer_request(model, rows), check_infer_response, MODEL_INFER
    else:
        payload, check, method = predict_request(model, rows), check_predict_response, PREDICT
    result = PointResult()
    async with aio_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(method)  # bytes in, bytes out
        loop = asyncio.get_running_loop()
        window_start = loop.time() + warmup_s
        window_end = window_start + duration_s
        last_end = window_start

        async def caller() -> None:
            nonlocal last_end
            while True:
                now = loop.time()
                if now >= window_end and result.requests >= min_requests:
                    return
                if max_requests is not None and result.requests >= max_requests:
                    return
                started = time.perf_counter()
                try:
                    answer = await call(payload, timeout=timeout_s)
                except grpc.aio.AioRpcError as exc:
                    if now >= window_start:
                        result.errors[exc.code().name] += 1
                    if len(result.errors) and sum(result.errors.values()) > 1000:
                        return
                    continue
                latency = time.perf_counter() - started
                try:
                    check(answer, rows)
                except Exception as exc:
                    result.errors[f"bad answer: {exc}"] += 1
                    continue
                if now >= window_start:
                    result.requests += 1
                    result.rows += rows
                    result.latencies_s.append(latency)
                    last_end = max(last_end, loop.time())

        cpu = time.process_time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        result.client_cpu_s = time.process_time() - cpu
        result.seconds = last_end - window_start
    return result


def run_raw_ort(session, rows: int, duration_s: float, warmup_s: float, min_requests: int = 3) -> PointResult:
    """The limit: session.run on the same [rows, 16] batch in a loop, in-process, one caller."""
    x = features(rows)
    result = PointResult()
    end_warmup = time.perf_counter() + warmup_s
    session.run(["probabilities"], {"features": x})
    while time.perf_counter() < end_warmup:
        session.run(["probabilities"], {"features": x})
    cpu = time.process_time()
    start = time.perf_counter()
    end = start + duration_s
    while True:
        t0 = time.perf_counter()
        if t0 >= end and result.requests >= min_requests:
            break
        out = session.run(["probabilities"], {"features": x})[0]
        result.latencies_s.append(time.perf_counter() - t0)
        assert out.shape == (rows, CLASSES)
        result.requests += 1
        result.rows += rows
    result.seconds = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - cpu
    return result


# -- ghz: the same load from a Go client ----------------------------------------------------------

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSION = "v0.120.0"
OIP_PROTO = "protos/inference/grpc_service.proto"


def ensure_ghz(root) -> str:
    """The ghz binary, built once from the Go module proxy into .cache/bin (needs Go)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    target = Path(root) / ".cache" / "bin"
    binary = target / "ghz"
    if binary.exists():
        return str(binary)
    if shutil.which("go") is None:
        raise RuntimeError("--client ghz needs Go to build ghz (or put a ghz binary at .cache/bin/ghz)")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "install", f"{GHZ_MODULE}@{GHZ_VERSION}"], check=True,
                   env={**os.environ, "GOBIN": str(target)})
    return str(binary)


async def run_point_ghz(ghz: str, root, address: str, model: str, rows: int, concurrency: int,
                        duration_s: float, warmup_s: float, timeout_s: float = 120.0) -> PointResult:
    """The same closed loop, driven by ghz (Go): `concurrency` workers on one connection send
    the same serialized ModelInferRequest back to back. A separate warm-up run comes first;
    the measured run's per-call latencies come from ghz's JSON details. One answer is checked
    here beforehand (ghz only counts status codes)."""
    import json
    import resource
    import tempfile
    from pathlib import Path

    payload = infer_request(model, rows)
    async with aio_channel(address, options=CHANNEL_OPTIONS) as channel:
        check_infer_response(await channel.unary_unary(MODEL_INFER)(payload, timeout=timeout_s), rows)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(payload)
        data = f.name
    base = [ghz, "--insecure", "--proto", str(Path(root) / OIP_PROTO),
            "--call", "inference.GRPCInferenceService.ModelInfer", "-B", data, "-c", str(concurrency),
            "--connections", "1", "-t", f"{int(timeout_s)}s", "--max-send-message-size", str(MAX_MESSAGE),
            "--max-recv-message-size", str(MAX_MESSAGE), "--count-errors", "--duration-stop", "wait", "-O", "json", address]

    async def ghz_run(seconds: float) -> dict:
        process = await asyncio.create_subprocess_exec(
            *base[:-3], "-z", f"{max(seconds, 0.1):.3f}s", *base[-3:],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        if process.returncode not in (0, 1):  # ghz exits 1 when some calls failed; they are counted
            raise RuntimeError(f"ghz exited {process.returncode}: {err.decode()[-500:]}")
        return json.loads(out)

    try:
        if warmup_s > 0:
            await ghz_run(warmup_s)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = await ghz_run(duration_s)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        Path(data).unlink(missing_ok=True)
    result = PointResult()
    for detail in report.get("details") or []:
        if detail.get("status") == "OK":
            result.latencies_s.append(detail["latency"] / 1e9)
        else:
            result.errors[detail.get("status") or "?"] += 1
    result.requests = len(result.latencies_s)
    result.rows = result.requests * rows
    result.seconds = report["total"] / 1e9
    result.client_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result
