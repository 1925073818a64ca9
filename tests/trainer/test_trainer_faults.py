"""The trainer under faults, as real processes on the real broker and object store: killed
with SIGKILL in the middle of a request, a registry killed and restarted while the trainer
calls it, and poison requests (undecodable, or failing every time) that go to the trainer's
dead-letter topic while the requests behind them are trained. Each invariant is the issue's:
every request gets its result, and no request registers or promotes more than once."""

from __future__ import annotations

import io
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driftline.v1 import registry_pb2, registry_pb2_grpc, training_pb2
from helpers_models import T0_MS, agrawal_rows, collect, trained_onnx, write_segments
from services.common.kafka import Consumer, Producer, ensure_topics, header
from services.common.objectstore import ObjectStore
from services.common.settings import Topics
from support import ServiceRun, free_port, unique_bucket, unique_prefix, wait_for

SUCCEEDED, FAILED = training_pb2.TrainingResult.SUCCEEDED, training_pb2.TrainingResult.FAILED
REGISTRY = "driftline.v1.Registry"


@dataclass
class Registry:
    env: dict[str, str]
    port: int
    log_dir: Path
    run: ServiceRun | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.run = ServiceRun("registry", self.env, self.log_dir / f"registry-{uuid.uuid4().hex[:6]}.log")
        self.run.wait_serving(self.address, REGISTRY)

    def kill(self) -> None:
        self.run.process.send_signal(signal.SIGKILL)
        assert self.run.process.wait(10) == -9


@dataclass
class Stack:
    """A registry of its own (so a test may kill it), the bucket, and topics of one test."""

    kafka: str
    store: ObjectStore
    registry: Registry
    topics: Topics
    producer: Producer
    log_dir: Path

    def trainer(self, name: str, **env: str) -> ServiceRun:
        return ServiceRun("trainer", {
            "DRIFTLINE_TOPIC_PREFIX": self.topics.prefix, "DRIFTLINE_BUCKET": self.store.bucket,
            "DRIFTLINE_REGISTRY_ADDRESS": self.registry.address, "DRIFTLINE_WAIT_TIMEOUT_S": "4",
            "DRIFTLINE_POLL_INTERVAL_S": "0.2", "DRIFTLINE_INSTANCE_ID": "trainer-0", **env},
            self.log_dir / f"{name}.log")

    def send(self, value: training_pb2.TrainingRequest | bytes, key: str = "m") -> None:
        raw = value if isinstance(value, bytes) else value.SerializeToString()
        self.producer.produce_raw(self.topics.training_requests, raw, key=key)
        self.producer.flush()

    def stub(self, channel: grpc.Channel) -> registry_pb2_grpc.RegistryStub:
        return registry_pb2_grpc.RegistryStub(channel)

    def read(self, topic: str, message_type, until, timeout: float, alive=lambda: None, settle_s: float = 0.0):
        consumer = Consumer(self.kafka, f"g-{uuid.uuid4().hex}", [topic])
        try:
            records = collect(consumer, message_type, until, timeout, alive=alive)
            if settle_s:  # anything that should not come has the time to
                records += consumer.poll_batch(message_type, timeout=settle_s)
        finally:
            consumer.close()
        return records


@pytest.fixture
def stack(kafka_bootstrap, s3, tmp_path):
    topics = Topics(unique_prefix())
    store = s3.store(unique_bucket())
    ensure_topics(kafka_bootstrap, [topics.training_requests, topics.training_results,
                                    topics.dead_letters("trainer")])
    registry = Registry({"DRIFTLINE_TOPIC_PREFIX": topics.prefix, "DRIFTLINE_BUCKET": store.bucket,
                         "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db"),
                         "DRIFTLINE_RELAY_INTERVAL_S": "0.2", "DRIFTLINE_GRPC_PORT": ""}, free_port(), tmp_path)
    registry.env["DRIFTLINE_GRPC_PORT"] = str(registry.port)
    registry.start()
    yield Stack(kafka_bootstrap, store, registry, topics, Producer(kafka_bootstrap), tmp_path)
    if registry.run.process.poll() is None:
        assert registry.run.stop() == 0, registry.run.log_tail()


def request_for(model: str, stream: str, min_rows: int) -> training_pb2.TrainingRequest:
    request = training_pb2.TrainingRequest(request_id=uuid.uuid4().hex, model_name=model, stream=stream,
                                           min_rows=min_rows, reason="test")
    request.window_start.FromMilliseconds(T0_MS)
    return request


def results_of(stack: Stack, request_id: str, trainer: ServiceRun, settle_s: float = 2.0
               ) -> list[training_pb2.TrainingResult]:
    """The results published for one request, once there is one and `settle_s` later."""
    mine = lambda rs: [r.value for r in rs if r.value.request_id == request_id]  # noqa: E731
    records = stack.read(stack.topics.training_results, training_pb2.TrainingResult, lambda rs: mine(rs), 90,
                         alive=trainer.assert_running, settle_s=settle_s)
    return mine(records)


def versions_and_decisions(stack: Stack, model: str):
    with grpc.insecure_channel(stack.registry.address) as channel:
        stub = stack.stub(channel)
        versions = stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=model)).model_versions
        decisions = stub.GetGateDecisions(registry_pb2.GetGateDecisionsRequest(name=model)).decisions
    return list(versions), list(decisions)


def assert_answered_once(stack: Stack, request: training_pb2.TrainingRequest, trainer: ServiceRun):
    """One result (a copy re-published from the stored result is the same record), one version, one
    decision, all of this request."""
    results = results_of(stack, request.request_id, trainer)
    assert results[0].status == SUCCEEDED, f"{results[0].error}\n{trainer.log_tail()}"
    assert all(r == results[0] for r in results), results
    versions, decisions = versions_and_decisions(stack, request.model_name)
    assert [(v.version, v.idempotency_key) for v in versions] == [(1, request.request_id)]
    assert [(d.candidate_version, d.idempotency_key) for d in decisions] == [(1, request.request_id)]
    assert results[0].version == 1 and results[0].promoted == decisions[0].promoted
    return results[0]


def test_a_trainer_killed_mid_request_answers_once_after_its_restart(stack):
    model, stream = f"m-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    write_segments(stack.store, stream, agrawal_rows(1500, seed=31))
    request = request_for(model, stream, 1500)
    stack.send(request, model)

    first = stack.trainer("first")
    wait_for(lambda: "services.trainer.worker: training" in first.log_text(), 60, "the first trainer to start")
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(10) == -9
    with stack.trainer("second") as second:  # same instance id: it takes the partition back at once
        result = assert_answered_once(stack, request, second)
    assert stack.store.get_bytes(f"models/{model}/1/model.onnx")  # the layout serving reads is complete
    assert result.dataset_id


def test_a_request_registered_before_its_trainer_died_is_not_trained_again(stack):
    """The state a SIGKILL right after RegisterModelVersion leaves: the version registered under
    the request id, its artifact staged, no numbered copy, no decision, no result. No segments
    exist, so a trainer that trained again would fail its wait for rows."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    request = request_for(model, f"s-{uuid.uuid4().hex[:8]}", 1000)
    onnx = trained_onnx(agrawal_rows(500, seed=32), epochs=2)
    artifact = stack.store.put_bytes(f"models/{model}/candidates/x/model.onnx", onnx)
    metadata = stack.store.put_json(f"models/{model}/candidates/x/metadata.json", {"name": model, "version": 0})
    with grpc.insecure_channel(stack.registry.address) as channel:
        stack.stub(channel).RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
            model_version=registry_pb2.ModelVersion(
                name=model, artifact_uri=artifact.uri, artifact_sha256=artifact.sha256, dataset_id="d-earlier",
                metadata_uri=metadata.uri, metrics={"accuracy": 0.5}, idempotency_key=request.request_id)))
    stack.send(request, model)

    with stack.trainer("trainer") as trainer:
        result = assert_answered_once(stack, request, trainer)
    assert (result.dataset_id, result.metrics["accuracy"]) == ("d-earlier", 0.5)
    assert stack.store.get_bytes(f"models/{model}/1/model.onnx", expected_sha256=artifact.sha256) == onnx
    assert stack.store.get_json(f"models/{model}/1/metadata.json") == {"name": model, "version": 1}


def test_a_registry_killed_and_restarted_during_a_promotion_promotes_once(stack):
    model, stream = f"m-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    write_segments(stack.store, stream, agrawal_rows(1000, seed=33))
    request = request_for(model, stream, 1000)
    stack.send(request, model)

    with stack.trainer("trainer") as trainer:
        wait_for(lambda: "registered; promoting" in trainer.log_text(), 90, "the trainer to promote", every=0.01)
        # The Promote is in flight, answered, or about to be sent: every case must end in one decision.
        stack.registry.kill()
        stack.registry.start()  # same port, same database
        assert_answered_once(stack, request, trainer)


def test_poison_requests_go_to_the_dead_letter_topic_and_the_requests_behind_them_are_trained(stack, s3):
    model, stream = f"m-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    write_segments(stack.store, stream, agrawal_rows(500, seed=34))
    undecodable = b"\x0a\x05ab"  # field 1 says 5 bytes follow; 2 do
    poison = request_for(model, stream, 500)
    # Its stored result is not an object the store vouches for (no sha256): reading it fails every time.
    s3.client().put_object(stack.store.bucket, f"training/results/{poison.request_id}.json", io.BytesIO(b"{}"), 2)
    good = request_for(model, stream, 500)
    for value in (undecodable, poison, good):
        stack.send(value, model)

    with stack.trainer("trainer", DRIFTLINE_MAX_ATTEMPTS="2") as trainer:
        records = stack.read(stack.topics.training_results, training_pb2.TrainingResult,
                             lambda rs: {r.value.request_id for r in rs} >= {poison.request_id, good.request_id},
                             90, alive=trainer.assert_running)
    results = {r.value.request_id: r.value for r in records}
    assert results[poison.request_id].status == FAILED, results[poison.request_id]
    assert "dead-lettered" in results[poison.request_id].error, results[poison.request_id].error
    assert "IntegrityError" in results[poison.request_id].error, results[poison.request_id].error
    assert results[good.request_id].status == SUCCEEDED, results[good.request_id].error

    dead = raw_records(stack.kafka, stack.topics.dead_letters("trainer"), 2)
    assert [m.value() for m in dead] == [undecodable, poison.SerializeToString()]  # as they were sent
    assert [m.key() for m in dead] == [model.encode()] * 2
    for message, offset, stage, reason in zip(dead, (0, 1), ("decode", "handle"),
                                              ("not a driftline.v1.TrainingRequest", "IntegrityError")):
        headers = message.headers()
        assert header(headers, "driftline.errors.stage") == stage
        assert reason in header(headers, "driftline.errors.reason")
        assert header(headers, "driftline.errors.service") == "trainer"
        assert (header(headers, "driftline.errors.topic"), header(headers, "driftline.errors.offset")) == (
            stack.topics.training_requests, str(offset))


def raw_records(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    """The first `count` records of a topic, undecoded."""
    consumer = Consumer(bootstrap, f"g-{uuid.uuid4().hex}", [topic])
    try:
        found: list = []
        wait_for(lambda: found.extend(consumer.poll_messages(timeout=0.5)) or len(found) >= count, timeout,
                 f"{count} records on {topic}", every=0)
    finally:
        consumer.close()
    return found
