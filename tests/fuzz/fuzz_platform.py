"""Every service as a real process on one broker and one object store, for the fuzzers to attack:
registry, ingest, feature, serving (with a real model in production), monitor and trainer, on
topics and a bucket of their own, over gRPC on loopback as the tests start them elsewhere."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from driftline.v1 import registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc
from services.common.kafka import ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.settings import Topics
from support import ServiceRun, free_port, unique_bucket, unique_prefix, wait_for
from tiny_models import FEATURES, WEIGHTS, tiny_model

from fuzzkit import MODEL
CONSUMERS = ("ingest", "feature", "serving", "monitor", "trainer")


@dataclass
class Infrastructure:
    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_secure: bool = False


@dataclass
class FuzzPlatform:
    infra: Infrastructure
    tmp: Path
    prefix: str = field(default_factory=unique_prefix)
    bucket: str = field(default_factory=unique_bucket)
    runs: dict[str, ServiceRun] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def address(self, server: str) -> str:
        return f"127.0.0.1:{self.ports[server]}"

    def alive(self, server: str) -> bool:
        return self.runs[server].process.poll() is None

    def pid(self, server: str) -> int:
        return self.runs[server].process.pid

    def env(self, **more: str) -> dict[str, str]:
        infra = self.infra
        return {"DRIFTLINE_KAFKA_BOOTSTRAP": infra.kafka_bootstrap, "DRIFTLINE_S3_ENDPOINT": infra.s3_endpoint,
                "DRIFTLINE_S3_ACCESS_KEY": infra.s3_access_key, "DRIFTLINE_S3_SECRET_KEY": infra.s3_secret_key,
                "DRIFTLINE_S3_SECURE": "true" if infra.s3_secure else "false",
                "DRIFTLINE_TOPIC_PREFIX": self.prefix, "DRIFTLINE_BUCKET": self.bucket,
                "DRIFTLINE_MAX_ATTEMPTS": "2", **more}

    def store(self) -> MinioObjectStore:
        infra = self.infra
        store = MinioObjectStore(infra.s3_endpoint, infra.s3_access_key, infra.s3_secret_key, self.bucket,
                                 infra.s3_secure)
        store.ensure_bucket()
        return store

    def _start(self, name: str, **env: str) -> None:
        port = self.ports[name] = free_port()
        self.runs[name] = ServiceRun(name, self.env(DRIFTLINE_GRPC_PORT=str(port), DRIFTLINE_INSTANCE_ID=name, **env),
                                     self.tmp / f"{name}.log")

    def start(self) -> FuzzPlatform:
        topics = self.topics
        ensure_topics(self.infra.kafka_bootstrap, [*topics.all(), *(topics.dead_letters(s) for s in CONSUMERS)])
        store = self.store()
        self._start("registry", DRIFTLINE_REGISTRY_DB=str(self.tmp / "registry.db"), DRIFTLINE_RELAY_INTERVAL_S="0.2")
        for name in ("ingest", "feature"):
            self._start(name)
        # A request for rows that never come gives up in a second, not the deployed five minutes.
        self._start("trainer", DRIFTLINE_REGISTRY_ADDRESS=self.address("registry"), DRIFTLINE_WAIT_TIMEOUT_S="1",
                    DRIFTLINE_POLL_INTERVAL_S="0.2")
        self._start("monitor", DRIFTLINE_REGISTRY_ADDRESS=self.address("registry"),
                    DRIFTLINE_DASHBOARD_PORT=str(free_port()), DRIFTLINE_CALIBRATION_STREAMS="16")
        self.runs["registry"].wait_serving(self.address("registry"), timeout=60)
        ref = store.put_bytes(f"models/{MODEL}/1/model.onnx", tiny_model(WEIGHTS[1]))
        with grpc.insecure_channel(self.address("registry")) as channel:
            registry = registry_pb2_grpc.RegistryStub(channel)
            version = registry.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                model_version=registry_pb2.ModelVersion(name=MODEL, artifact_uri=ref.uri, artifact_sha256=ref.sha256,
                                                        dataset_id="fuzz", feature_names=FEATURES)), timeout=10)
            registry.Promote(registry_pb2.PromoteRequest(name=MODEL, version=version.version, alias="production"),
                             timeout=30)
        self._start("serving", DRIFTLINE_MODEL_NAME=MODEL, DRIFTLINE_REGISTRY_ADDRESS=self.address("registry"),
                    DRIFTLINE_PREDICTION_SPOOL_DIR=str(self.tmp / "spool"), DRIFTLINE_ALIAS_RETRY_S="0.2")
        for name in ("ingest", "feature", "monitor", "serving"):
            self.runs[name].wait_serving(self.address(name), timeout=90)
        with grpc.insecure_channel(self.address("serving")) as channel:
            predictor = serving_pb2_grpc.PredictorStub(channel)

            def answers() -> bool:
                try:
                    predictor.Predict(serving_pb2.PredictRequest(model_name=MODEL, rows=[
                        serving_pb2.Row(values=[0.1, 0.2, 0.3])]), timeout=5)
                except grpc.RpcError:
                    return False
                return True

            wait_for(answers, 60, "serving to answer with its production model")
        self.runs["trainer"].assert_running()
        return self

    def stop(self) -> dict[str, int]:
        """Stops every process (SIGTERM); their exit codes."""
        codes = {}
        for name, run in reversed(list(self.runs.items())):
            codes[name] = run.stop()
        return codes

    def log_tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{run.log_tail(3000)}" for name, run in self.runs.items())


@contextlib.contextmanager
def running(infra: Infrastructure, tmp: Path):
    platform = FuzzPlatform(infra, tmp)
    try:
        yield platform.start()
    except BaseException:
        import sys
        sys.stderr.write(platform.log_tails())
        raise
    finally:
        platform.stop()
