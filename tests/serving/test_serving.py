"""Serving as a real process (`python -m services.serving`) against the real broker and
object store. The registry is a small real gRPC server inside the test (GetAlias and
GetModelVersion from a dict), so these tests do not depend on services.registry; its
ALIAS_MOVED events are real RegistryEvent records on the real topic."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from driftline.v1 import registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc
from services.common.kafka import Consumer, Producer
from services.common.objectstore import MinioObjectStore
from services.common.settings import Topics
from services.serving import onnx_model, prediction_log
from services.serving.prediction_log import PredictionLogger, ServedRequest
from services.serving.server import PREDICTOR
from services.serving.spool import Spool
from serving_stack import Registry, publish_alias_moved, scraped_metric, store_and_topics
from tiny_models import FEATURES, WEIGHTS, expected_scores, tiny_model
from support import GrpcThread, ServiceRun, free_port, wait_for

MODEL = "tiny"


# -- the loop around one serving process ---------------------------------------------------

@dataclass
class Loop:
    bootstrap: str
    topics: Topics
    store: MinioObjectStore
    registry: GrpcThread
    producer: Producer
    log_path: Path
    run: ServiceRun | None = None
    grpc_port: int = 0
    metrics_port: int = 0

    def publish_version(self, version: int) -> registry_pb2.ModelVersion:
        """Uploads a version's artifact and registers it with the stand-in (no alias move)."""
        ref = self.store.put_bytes(f"models/{MODEL}/{version}/model.onnx", tiny_model(WEIGHTS[version]))
        record = registry_pb2.ModelVersion(name=MODEL, version=version, artifact_uri=ref.uri,
                                           artifact_sha256=ref.sha256, feature_names=FEATURES)
        self.registry.servicer.versions[version] = record
        return record

    def move_production(self, record: registry_pb2.ModelVersion, previous: int = 0,
                        update_registry: bool = True, alias: str = "production", model: str = MODEL) -> None:
        """What the registry does on SetAlias/Promote: the alias moves, an event says so."""
        if update_registry:
            self.registry.servicer.aliases["production"] = record.version
        publish_alias_moved(self.producer, self.topics, model, record, alias, previous, key=MODEL)

    @contextmanager
    def serving(self, **env: str):
        self.grpc_port, self.metrics_port = free_port(), free_port()
        environment = {
            "DRIFTLINE_KAFKA_BOOTSTRAP": self.bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": self.topics.prefix, "DRIFTLINE_BUCKET": self.store.bucket,
            "DRIFTLINE_MODEL_NAME": MODEL, "DRIFTLINE_REGISTRY_ADDRESS": self.registry.address,
            "DRIFTLINE_GRPC_PORT": str(self.grpc_port), "DRIFTLINE_METRICS_PORT": str(self.metrics_port),
            "DRIFTLINE_ALIAS_RETRY_S": "0.2", "DRIFTLINE_LOG_JSON": "false",
            "DRIFTLINE_PREDICTION_SPOOL_DIR": str(self.log_path.parent / "spool"), **env}
        self.run = ServiceRun("serving", environment, self.log_path)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            # The server as a whole ("") serves at once; the Predictor only once a model is loaded.
            self.run.wait_serving(f"127.0.0.1:{self.grpc_port}", timeout=30)
            yield serving_pb2_grpc.PredictorStub(channel), health_pb2_grpc.HealthStub(channel)
        finally:
            channel.close()
            assert self.run.stop(timeout=20) == 0, f"serving did not exit cleanly (log: {self.log_path})"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        return scraped_metric(self.metrics_port, name, **labels)


@pytest.fixture
def loop(kafka_bootstrap, s3, topic_prefix, bucket_name, tmp_path):
    store, topics = store_and_topics(kafka_bootstrap, s3, topic_prefix, bucket_name)
    registry = GrpcThread(Registry(MODEL), registry_pb2_grpc.add_RegistryServicer_to_server)
    running = Loop(kafka_bootstrap, topics, store, registry, Producer(kafka_bootstrap), tmp_path / "serving.log")
    yield running
    registry.stop()


def predict(stub, rows, event_ids=None, model_name: str = MODEL) -> serving_pb2.PredictResponse:
    request = serving_pb2.PredictRequest(model_name=model_name)
    for i, values in enumerate(rows):
        request.rows.add(values=values, event_id=(event_ids or [""] * len(rows))[i])
    return stub.Predict(request, timeout=5)


def served_version(stub) -> int:
    return predict(stub, [[0.1, 0.2, 0.3]]).model_version


ROWS = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]


# -- the tests -------------------------------------------------------------------------------

def test_predict_answers_with_the_production_version_and_health_is_serving(loop):
    loop.move_production(loop.publish_version(1))
    with loop.serving() as (stub, health):
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(service=PREDICTOR)).status
                 == health_pb2.HealthCheckResponse.SERVING, 30, "Predictor to report SERVING")
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
            health_pb2.HealthCheckResponse.SERVING

        response = predict(stub, ROWS)
        assert (response.model_name, response.model_version, response.variant) == (MODEL, 1, "production")
        assert response.request_id
        scores = np.array([p.scores for p in response.predictions])
        np.testing.assert_allclose(scores, expected_scores(1, ROWS), rtol=1e-5)
        assert [p.label for p in response.predictions] == list(scores.argmax(axis=1))
        # A batch too big to run inline goes through a worker thread, with the same answers.
        many = np.random.default_rng(0).normal(size=(100, 3)).tolist()
        np.testing.assert_allclose([p.scores for p in predict(stub, many).predictions],
                                   expected_scores(1, many), rtol=1e-5, atol=1e-7)
        # An empty model name means "the model this server serves".
        assert predict(stub, ROWS[:1], model_name="").model_version == 1


def test_no_production_version_answers_unavailable_until_one_appears(loop):
    record = loop.publish_version(1)
    with loop.serving() as (stub, health):
        with pytest.raises(grpc.RpcError) as failure:
            predict(stub, ROWS)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no model loaded yet" in failure.value.details()
        assert health.Check(health_pb2.HealthCheckRequest(service=PREDICTOR)).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING

        loop.registry.servicer.aliases["production"] = record.version  # no event: the retry loop finds it
        wait_for(lambda: _answers_version(stub, 1), 30, "serving to load v1 by polling the alias")
        assert health.Check(health_pb2.HealthCheckRequest(service=PREDICTOR)).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_invalid_input_is_refused_with_what_was_expected(loop):
    loop.move_production(loop.publish_version(1))
    with loop.serving() as (stub, _):
        wait_for(lambda: _answers_version(stub, 1), 30, "v1")
        cases = [
            (serving_pb2.PredictRequest(model_name=MODEL), grpc.StatusCode.INVALID_ARGUMENT, "no rows"),
            (serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=[1.0, 2.0])]),
             grpc.StatusCode.INVALID_ARGUMENT, "row 0 has 2 features; the model expects 3"),
            (serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=[1, 2, 3]),
                                                                 serving_pb2.Row(values=[1, 2, 3, 4])]),
             grpc.StatusCode.INVALID_ARGUMENT, "row 1 has 4 features; the model expects 3"),
            (serving_pb2.PredictRequest(model_name="nope", rows=[serving_pb2.Row(values=[1, 2, 3])]),
             grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ]
        for request, code, message in cases:
            with pytest.raises(grpc.RpcError) as failure:
                stub.Predict(request, timeout=5)
            assert (failure.value.code(), message in failure.value.details()) == (code, True), \
                failure.value.details()


def test_serving_refuses_an_artifact_whose_hash_does_not_match(loop):
    first = loop.publish_version(1)
    loop.move_production(first)
    with loop.serving() as (stub, _):
        wait_for(lambda: _answers_version(stub, 1), 30, "v1")
        second = loop.publish_version(2)
        # Moves of another alias or of another model are not this server's business.
        loop.move_production(second, previous=1, update_registry=False, alias="staging")
        loop.move_production(second, previous=1, update_registry=False, model="another-model")
        tampered = registry_pb2.ModelVersion()
        tampered.CopyFrom(second)
        tampered.artifact_sha256 = "0" * 64  # the registry's word and the bytes disagree
        loop.move_production(tampered, previous=1, update_registry=False)

        wait_for(lambda: loop.metric("driftline_serving_model_loads_total", model=MODEL,
                                     outcome="refused_integrity") == 1, 30, "the refusal to be counted")
        assert "artifact refused" in loop.log_text()
        assert served_version(stub) == 1  # the old model keeps serving

        # The follower is still alive: the correct record swaps in.
        loop.move_production(second, previous=1)
        wait_for(lambda: _answers_version(stub, 2), 30, "v2 after the correct event")
        assert loop.metric("driftline_serving_model_loads_total", model=MODEL, outcome="loaded") == 2


def test_hot_swap_while_clients_call_predict_fails_no_call(loop):
    loop.move_production(loop.publish_version(1))
    with loop.serving() as (stub, _):
        wait_for(lambda: _answers_version(stub, 1), 30, "v1")
        stop = threading.Event()
        versions: list[list[int]] = [[], []]
        failures: list[str] = []

        def client(seen: list[int]) -> None:
            while not stop.is_set():
                try:
                    seen.append(predict(stub, ROWS).model_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

        clients = [threading.Thread(target=client, args=(seen,)) for seen in versions]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: all(len(seen) >= 20 for seen in versions), 30, "calls on v1")
            loop.move_production(loop.publish_version(2), previous=1)
            wait_for(lambda: all(seen.count(2) >= 20 for seen in versions), 30, "calls on v2")
        finally:
            stop.set()
            for thread in clients:
                thread.join(10)

        assert failures == []
        for seen in versions:
            switch = seen.index(2)
            assert switch > 0 and set(seen[:switch]) == {1} and set(seen[switch:]) == {2}


def test_every_predict_is_logged_to_the_predictions_topic(loop):
    loop.move_production(loop.publish_version(1))
    consumer = Consumer(loop.bootstrap, f"test-{uuid.uuid4().hex}", [loop.topics.predictions])
    try:
        with loop.serving() as (stub, _):
            wait_for(lambda: _answers_version(stub, 1), 30, "v1")
            answers = [predict(stub, ROWS, event_ids=[f"e{i}-a", f"e{i}-b"]) for i in range(3)]

            wanted = {a.request_id for a in answers}
            logs = {}

            def all_logged() -> bool:
                for record in consumer.poll_batch(serving_pb2.PredictionLog, timeout=0.5):
                    logs[record.value.request_id] = record
                return wanted <= set(logs)

            wait_for(all_logged, 30, "the prediction logs")
    finally:
        consumer.close()
    for answer, i in zip(answers, range(3)):
        record = logs[answer.request_id]
        entry = record.value
        assert record.key == MODEL.encode()
        assert (entry.model_name, entry.model_version, entry.variant) == (MODEL, 1, "production")
        assert entry.served_at.seconds > 0
        # Columnar: flat little-endian buffers, no message per row.
        assert len(entry.rows) == 0
        assert list(entry.event_ids) == [f"e{i}-a", f"e{i}-b"]
        assert (entry.feature_count, entry.score_count) == (len(ROWS[0]), len(answer.predictions[0].scores))
        assert np.frombuffer(entry.features_f32, "<f4").reshape(-1, entry.feature_count).tolist() == ROWS
        assert (np.frombuffer(entry.scores_f32, "<f4").reshape(-1, entry.score_count).tolist()
                == [list(p.scores) for p in answer.predictions])
        assert np.frombuffer(entry.labels_i32, "<i4").tolist() == [p.label for p in answer.predictions]


def test_a_prediction_log_is_columnar_whatever_its_size():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4096, 16)).astype(np.float32)
    probabilities = rng.uniform(size=(4096, 2)).astype(np.float32)
    labels = probabilities.argmax(axis=1)
    # ModelInfer: the matrix as served, no event ids.
    log = prediction_log.to_log(ServedRequest("r", MODEL, 2, features, probabilities, labels, 5_000_000_000,
                                              "canary"))
    assert (log.request_id, log.model_name, log.model_version, log.variant) == ("r", MODEL, 2, "canary")
    assert log.served_at.ToNanoseconds() == 5_000_000_000
    assert len(log.rows) == 0 and len(log.event_ids) == 0
    assert (log.feature_count, log.score_count) == (16, 2)
    assert np.array_equal(np.frombuffer(log.features_f32, "<f4").reshape(4096, 16), features)
    assert np.array_equal(np.frombuffer(log.scores_f32, "<f4").reshape(4096, 2), probabilities)
    assert np.array_equal(np.frombuffer(log.labels_i32, "<i4"), labels)
    served = ServedRequest("r", MODEL, 2, features, probabilities, labels, 5_000_000_000, "canary")
    assert serving_pb2.PredictionLog.FromString(prediction_log.encode_log(served)) == log  # what is produced
    # Predict: its rows' event ids too (none at all when no row has one), with or without the matrix.
    rows = [serving_pb2.Row(values=v, event_id=f"e{i}" if i % 2 else "") for i, v in enumerate(features[:3])]
    for matrix in (features[:3], None):
        log = prediction_log.to_log(ServedRequest("p", MODEL, 1, rows, probabilities[:3], labels[:3], 0,
                                                  features=matrix))
        assert list(log.event_ids) == ["", "e1", ""]
        assert np.array_equal(np.frombuffer(log.features_f32, "<f4").reshape(3, 16), features[:3])
    no_ids = [serving_pb2.Row(values=v) for v in features[:3]]
    assert len(prediction_log.to_log(ServedRequest("p", MODEL, 1, no_ids, probabilities[:3], labels[:3], 0)
                                     ).event_ids) == 0


def test_a_full_prediction_log_queue_drops_and_counts_instead_of_blocking(kafka_bootstrap, tmp_path):
    # Not started: nothing drains.
    logger = PredictionLogger(kafka_bootstrap, "unused", Spool(tmp_path, 1 << 20), max_queued=1)
    served = ServedRequest("r", MODEL, 1, [], np.zeros((0, 2)), np.zeros(0), 0)
    before = _dropped_logs(), _dropped_logs("queue_full")
    for _ in range(3):
        logger.submit(served)  # would hang here if a full queue made the request path wait
    assert logger.dropped == 2
    assert (_dropped_logs() - before[0], _dropped_logs("queue_full") - before[1]) == (2, 2)
    logger.spool.close()


def _dropped_logs(reason: str = "") -> float:
    if reason:
        return REGISTRY.get_sample_value("driftline_serving_prediction_logs_dropped_total", {"reason": reason}) or 0.0
    return REGISTRY.get_sample_value("driftline_serving_prediction_logs_total", {"outcome": "dropped"}) or 0.0


def test_execution_provider_choice():
    with pytest.raises(ValueError, match="CUDAExecutionProvider was asked for"):
        onnx_model.execution_providers("cuda", ["CPUExecutionProvider"])


def _answers_version(stub, version: int) -> bool:
    try:
        return served_version(stub) == version
    except grpc.RpcError:
        return False
