"""The serving tests' stack (used through the `stack` fixture in conftest.py):
a registry stand-in that keeps several aliases (production, canary, shadow) and publishes
real ALIAS_MOVED events on the real topic, and `python -m services.serving` around it.

The broker, the object store, the serving process and the ONNX models are real; the
registry is a small real gRPC server inside the test (tests/support.GrpcThread)."""

from __future__ import annotations

import re
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from driftline.v1 import registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc
from services.common.kafka import Producer, ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.settings import Topics
from tiny_models import FEATURES, WEIGHTS, tiny_model
from support import GrpcThread, ServiceRun, free_port, wait_for

MODEL = "tiny-traffic"


def store_and_topics(kafka_bootstrap: str, s3, topic_prefix: str, bucket_name: str) -> tuple[MinioObjectStore, Topics]:
    """The test's bucket (created) and topics, with serving's registry-events and predictions topics created."""
    store = s3.store(bucket_name)
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.registry_events, topics.predictions])
    return store, topics


def publish_alias_moved(producer: Producer, topics: Topics, model: str, target: registry_pb2.ModelVersion,
                        alias: str, previous: int, key: str | None = None) -> None:
    """The ALIAS_MOVED event the registry publishes when `alias` of `model` moves to `target`
    (keyed by `key`, `model` unless given)."""
    event = registry_pb2.RegistryEvent(
        event_id=uuid.uuid4().hex, kind=registry_pb2.RegistryEvent.ALIAS_MOVED, model_name=model,
        model_version=target, alias=alias, previous_version=previous)
    event.occurred_at.GetCurrentTime()
    producer.produce(topics.registry_events, event, key=key or model)
    producer.flush()


def scraped_metric(metrics_port: int, name: str, **labels: str) -> float:
    """The value of one sample on a /metrics page (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


class Registry(registry_pb2_grpc.RegistryServicer):
    """GetAlias / GetModelVersion of `model` from dicts the test sets; aliases are kept apart."""

    def __init__(self, model: str = MODEL) -> None:
        self.model = model
        self.versions: dict[int, registry_pb2.ModelVersion] = {}
        self.aliases: dict[str, int] = {}
        # Versions whose lookup the registry refuses with INTERNAL, every time.
        self.broken: set[int] = set()

    async def GetAlias(self, request, context):
        version = self.aliases.get(request.alias) if request.name == self.model else None
        if not version:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"alias {request.alias!r} points nowhere")
        return self.versions[version]

    async def GetModelVersion(self, request, context):
        if request.version in self.broken:
            await context.abort(grpc.StatusCode.INTERNAL, "this version's record is broken")
        if request.name != self.model or request.version not in self.versions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")
        return self.versions[request.version]


@dataclass
class Stack:
    bootstrap: str
    topics: Topics
    store: MinioObjectStore
    registry: GrpcThread
    producer: Producer
    tmp: Path
    run: ServiceRun | None = None
    grpc_port: int = 0
    metrics_port: int = 0
    channels: list = field(default_factory=list)
    killed: bool = False

    @property
    def aliases(self) -> dict[str, int]:
        return self.registry.servicer.aliases

    def publish(self, version: int, artifact: bytes | None = None) -> registry_pb2.ModelVersion:
        """Uploads a version's artifact (the tiny model of WEIGHTS[version] unless given) and
        registers it with the stand-in, with the sha256 of the bytes uploaded."""
        data = tiny_model(WEIGHTS[version]) if artifact is None else artifact
        ref = self.store.put_bytes(f"models/{MODEL}/{version}/model.onnx", data)
        record = registry_pb2.ModelVersion(name=MODEL, version=version, artifact_uri=ref.uri,
                                           artifact_sha256=ref.sha256, feature_names=FEATURES)
        self.registry.servicer.versions[version] = record
        return record

    def move(self, alias: str, version: int) -> None:
        """What the registry does on SetAlias: the alias moves (0: points nowhere), an event says so."""
        previous = self.aliases.get(alias, 0)
        if version:
            self.aliases[alias] = version
            target = self.registry.servicer.versions[version]
        else:
            self.aliases.pop(alias, None)
            target = registry_pb2.ModelVersion(name=MODEL)
        publish_alias_moved(self.producer, self.topics, MODEL, target, alias, previous)

    @contextmanager
    def serving(self, **settings: str):
        """`python -m services.serving` for MODEL; settings are DRIFTLINE_<NAME> values."""
        self.grpc_port, self.metrics_port = free_port(), free_port()
        environment = {
            "DRIFTLINE_KAFKA_BOOTSTRAP": self.bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": self.topics.prefix, "DRIFTLINE_BUCKET": self.store.bucket,
            "DRIFTLINE_MODEL_NAME": MODEL, "DRIFTLINE_REGISTRY_ADDRESS": self.registry.address,
            "DRIFTLINE_GRPC_PORT": str(self.grpc_port), "DRIFTLINE_METRICS_PORT": str(self.metrics_port),
            "DRIFTLINE_ALIAS_RETRY_S": "0.2", "DRIFTLINE_LOG_JSON": "false",
            "DRIFTLINE_PREDICTION_SPOOL_DIR": str(self.tmp / "spool"),
            **{f"DRIFTLINE_{k.upper()}": str(v) for k, v in settings.items()}}
        self.run = ServiceRun("serving", environment, self.tmp / f"serving-{self.grpc_port}.log")
        self.killed = False
        try:
            with self.run:
                self.run.wait_serving(self.address, timeout=30)
                yield self
                code = self.run.stop(timeout=20)
                assert code == 0 or self.killed, f"serving did not exit cleanly:\n{self.run.log_tail()}"
        finally:
            for channel in self.channels:
                channel.close()
            self.channels.clear()

    def kill(self) -> None:
        """SIGKILL of the serving process, as a crash."""
        self.killed = True
        self.run.process.kill()
        self.run.process.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self, **options) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address, options=list(options.items()))
        self.channels.append(channel)
        return channel

    def stubs(self, channel: grpc.Channel | None = None):
        channel = channel or self.channel()
        return serving_pb2_grpc.PredictorStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)

    def log_text(self) -> str:
        return self.run.log_text()

    def metric(self, name: str, **labels: str) -> float:
        return scraped_metric(self.metrics_port, name, **labels)

    def wait_version(self, predictor, version: int, variant: str = "production", timeout: float = 30) -> None:
        def answers() -> bool:
            try:
                answer = predict(predictor, [[0.1, 0.2, 0.3]])
            except grpc.RpcError:
                return False
            return (answer.model_version, answer.variant) == (version, variant)

        wait_for(answers, timeout, f"{variant} to answer with v{version}")


def predict(stub, rows, key: str = "", timeout: float = 10) -> serving_pb2.PredictResponse:
    return stub.Predict(serving_pb2.PredictRequest(
        model_name=MODEL, request_key=key, rows=[serving_pb2.Row(values=r) for r in rows]), timeout=timeout)


def infer_request(rows, *, request_id: str = "", key: str | None = None) -> pb.ModelInferRequest:
    matrix = np.asarray(rows, np.float32)
    request = pb.ModelInferRequest(model_name=MODEL, id=request_id, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=list(matrix.shape))])
    request.raw_input_contents.append(matrix.astype("<f4").tobytes())
    if key is not None:
        request.parameters["request_key"].string_param = key
    return request


def as_numpy(response: pb.ModelInferResponse) -> np.ndarray:
    """What tritonclient's as_numpy does for FP32: raw_output_contents only."""
    output = response.outputs[0]
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(output.shape))
