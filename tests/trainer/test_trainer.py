"""The trainer as a real process (`python -m services.trainer`) with a real registry process,
the real broker and object store. Training data is written into the bucket as feature
segments exactly as the storage contract specifies, from river's Agrawal generator."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pyarrow.parquet as pq
import pytest

from driftline.v1 import features_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from helpers_models import FEATURES, STEP_MS, T0_MS, accuracy_of, agrawal_rows, collect, write_segments
from services.common.kafka import Consumer, Producer, Record, ensure_topics
from services.common.objectstore import ObjectStore, split_uri
from services.common.settings import Topics
from support import ServiceRun, free_port, unique_bucket, unique_prefix, wait_for
from trainer_support import write_label_segment

SUCCEEDED, FAILED = training_pb2.TrainingResult.SUCCEEDED, training_pb2.TrainingResult.FAILED
# An MLP on Agrawal function 0 scores about 0.97 on unseen rows; 0.85 leaves room for seeds and platforms.
MIN_ACCURACY = 0.85
WAIT_TIMEOUT_S = 4  # the trainer's bounded wait for rows, short so the "never fills" case is quick
CODE_VERSION = "test-code-1"


@dataclass
class Loop:
    registry: registry_pb2_grpc.RegistryStub
    registry_address: str
    store: ObjectStore
    topics: Topics
    producer: Producer
    results: Consumer
    runs: list[ServiceRun]
    seen: list[Record] = field(default_factory=list)

    def request(self, request: training_pb2.TrainingRequest) -> None:
        self.producer.produce(self.topics.training_requests, request, key=request.model_name)
        self.producer.flush()

    def results_for(self, request_id: str, count: int = 1, timeout: float = 60.0) -> list[training_pb2.TrainingResult]:
        """Waits for `count` results of one request; every result read is kept for later calls."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [r.value for r in self.seen if r.value.request_id == request_id]
            if len(mine) >= count:
                return mine
            assert time.monotonic() < deadline, f"no result for {request_id}:\n{self.runs[-1].log_tail()}"
            for run in self.runs:
                run.assert_running()
            self.seen += self.results.poll_batch(training_pb2.TrainingResult, timeout=0.5)


@pytest.fixture(scope="module")
def loop(kafka_bootstrap, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    prefix, bucket = unique_prefix(), unique_bucket()
    store = s3.store(bucket)
    common = {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_BUCKET": bucket}
    registry_port = free_port()
    registry = ServiceRun("registry", {**common, "DRIFTLINE_GRPC_PORT": str(registry_port),
                                       "DRIFTLINE_REGISTRY_DB": str(tmp / "registry.db")}, tmp / "registry.log")
    trainer = ServiceRun("trainer", {**common, "DRIFTLINE_REGISTRY_ADDRESS": f"127.0.0.1:{registry_port}",
                                     "DRIFTLINE_WAIT_TIMEOUT_S": str(WAIT_TIMEOUT_S),
                                     "DRIFTLINE_POLL_INTERVAL_S": "0.2", "DRIFTLINE_CODE_VERSION": CODE_VERSION},
                         tmp / "trainer.log")
    registry.wait_serving(f"127.0.0.1:{registry_port}", "driftline.v1.Registry")
    topics = Topics(prefix)
    ensure_topics(kafka_bootstrap, [topics.training_requests, topics.training_results])
    results = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", [topics.training_results])
    channel = grpc.insecure_channel(f"127.0.0.1:{registry_port}")
    yield Loop(registry_pb2_grpc.RegistryStub(channel), f"127.0.0.1:{registry_port}", store, topics,
               Producer(kafka_bootstrap), results, [registry, trainer])
    results.close()
    channel.close()
    for run in (trainer, registry):
        assert run.stop() == 0, f"{run.name} did not stop cleanly:\n{run.log_tail()}"


def training_request(model: str, stream: str, *, start_ms: int, end_ms: int | None = None, min_rows: int,
                     request_id: str | None = None, **params: str) -> training_pb2.TrainingRequest:
    request = training_pb2.TrainingRequest(request_id=request_id or uuid.uuid4().hex, model_name=model,
                                           stream=stream, min_rows=min_rows, reason="test", params=params)
    request.window_start.FromMilliseconds(start_ms)
    if end_ms is not None:
        request.window_end.FromMilliseconds(end_ms)
    request.requested_at.GetCurrentTime()
    return request


def names() -> tuple[str, str]:
    """A model name and a stream name unique to the test."""
    suffix = uuid.uuid4().hex[:8]
    return f"m-{suffix}", f"s-{suffix}"


def test_a_request_becomes_a_registered_promoted_model_with_lineage(loop):
    model, stream = names()
    sidecars = write_segments(loop.store, stream, agrawal_rows(2000, function=0, seed=5))
    request = training_request(model, stream, start_ms=T0_MS, end_ms=T0_MS + 1999 * STEP_MS, min_rows=2000)
    loop.request(request)

    (result,) = loop.results_for(request.request_id)
    assert result.status == SUCCEEDED, result.error
    assert (result.model_name, result.version, result.promoted) == (model, 1, True)
    assert result.metrics["accuracy"] >= MIN_ACCURACY, dict(result.metrics)
    assert (result.metrics["train_rows"], result.metrics["eval_rows"]) == (1600, 400)

    # Lineage: the registered version points at the dataset, the code and the parameters.
    version = loop.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=model, version=1))
    assert version.dataset_id == result.dataset_id and version.code_version == CODE_VERSION
    assert version.params["request_id"] == request.request_id and int(version.params["epochs"]) > 0
    assert list(version.feature_names) == FEATURES
    assert version.metrics["accuracy"] == result.metrics["accuracy"]

    # The dataset manifest exists, lists the segments with their real sha256, and hashes to its id.
    manifest = loop.store.get_json(f"datasets/{stream}/versions/{result.dataset_id}.json")
    assert manifest["rows"] == 2000 and manifest["feature_names"] == FEATURES and manifest["stream"] == stream
    assert manifest["segments"] == [{"key": s["key"], "sha256": s["sha256"], "rows": s["rows"]} for s in sidecars]
    for segment in manifest["segments"]:
        loop.store.get_bytes(segment["key"], expected_sha256=segment["sha256"])  # raises on a mismatch
    identity = {k: manifest[k] for k in ("segments", "window_start_ms", "window_end_ms", "feature_names")}
    assert hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest() \
        == result.dataset_id
    assert version.eval_uri == f"s3://{loop.store.bucket}/datasets/{stream}/eval/{result.dataset_id}.parquet"

    # The artifact is what the registry says (sha256) and it predicts unseen rows of the same concept.
    bucket, key = split_uri(version.artifact_uri)
    assert bucket == loop.store.bucket
    artifact = loop.store.get_bytes(key, expected_sha256=version.artifact_sha256)
    assert accuracy_of(artifact, agrawal_rows(1000, function=0, seed=99)) >= MIN_ACCURACY
    assert loop.store.get_bytes(f"models/{model}/1/model.onnx", version.artifact_sha256) == artifact

    metadata = loop.store.get_json(f"models/{model}/1/metadata.json")
    assert (metadata["version"], metadata["dataset_id"], metadata["classes"]) == (1, result.dataset_id, [0, 1])
    assert (metadata["input_name"], metadata["output_name"]) == ("features", "probabilities")
    assert set(metadata["reference"]) == set(FEATURES)
    for histogram in [*metadata["reference"].values(), metadata["scores_reference"]]:
        assert len(histogram["edges"]) == len(histogram["proportions"]) + 1
        assert histogram["edges"] == sorted(histogram["edges"])
        assert sum(histogram["proportions"]) == pytest.approx(1.0)
    assert len(metadata["reference"]["salary"]["proportions"]) == 10  # a continuous feature gets deciles

    (decision,) = loop.registry.GetGateDecisions(registry_pb2.GetGateDecisionsRequest(name=model)).decisions
    assert decision.promoted and decision.candidate_version == 1 and decision.eval_rows == 400


def test_a_duplicate_request_id_trains_once(loop):
    model, stream = names()
    write_segments(loop.store, stream, agrawal_rows(1000, function=0, seed=6))
    request = training_request(model, stream, start_ms=T0_MS, min_rows=1000)
    loop.request(request)
    loop.request(request)  # redelivered, or sent twice by its producer

    first, second = loop.results_for(request.request_id, count=2)
    assert first.status == SUCCEEDED, first.error
    # Re-published from the stored result: identical to the finishing time, so nothing ran twice;
    # and the same record byte for byte, so a reader that keeps distinct records keeps one.
    assert second == first
    assert len({r.message.value() for r in loop.seen if r.value.request_id == request.request_id}) == 1
    listed = loop.registry.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=model)).model_versions
    assert [v.version for v in listed] == [1]


def test_labels_sent_30_s_after_their_events_are_in_the_next_dataset(loop):
    model, stream = names()
    rows = agrawal_rows(1000, function=0, seed=12)
    # The last 300 events came without a label; it was sent 30 s after each of them.
    write_segments(loop.store, stream, rows[:700] + [{**r, "label": None} for r in rows[700:]])
    labels = write_label_segment(loop.store, stream, [
        (r["event_id"], r["label"], r["event_time_ms"] + 30_000, r["event_time_ms"]) for r in rows[700:]])
    request = training_request(model, stream, start_ms=T0_MS, min_rows=1000)  # 700 rows are not enough
    loop.request(request)

    (result,) = loop.results_for(request.request_id)
    assert result.status == SUCCEEDED, result.error
    manifest = loop.store.get_json(f"datasets/{stream}/versions/{result.dataset_id}.json")
    assert manifest["rows"] == 1000
    assert manifest["label_segments"] == [{"key": labels["key"], "sha256": labels["sha256"], "labels": 300}]
    # The held-out slice is the most recent 200 rows: all of them labelled late, each with its own label.
    eval_rows = pq.read_table(io.BytesIO(loop.store.get_bytes(f"datasets/{stream}/eval/{result.dataset_id}.parquet")))
    assert eval_rows.column("label").to_pylist() == [r["label"] for r in rows[800:]]


def test_a_window_that_never_fills_fails_after_the_bounded_wait(loop):
    model, stream = names()
    write_segments(loop.store, stream, agrawal_rows(300, function=0, seed=7))
    request = training_request(model, stream, start_ms=T0_MS, min_rows=5000)
    loop.request(request)

    (result,) = loop.results_for(request.request_id, timeout=WAIT_TIMEOUT_S + 30)
    assert result.status == FAILED and result.model_name == model and not result.version
    assert "300 labelled rows" in result.error and "5000 needed" in result.error, result.error
    with pytest.raises(grpc.RpcError) as caught:
        loop.registry.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=model))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_training_params_fail_and_the_worker_carries_on(loop):
    model, stream = names()
    write_segments(loop.store, stream, agrawal_rows(500, function=0, seed=8))
    bad = training_request(model, stream, start_ms=T0_MS, min_rows=500, epochs="many")
    good = training_request(model, stream, start_ms=T0_MS, min_rows=500, epochs="5")
    loop.request(bad)
    loop.request(good)

    (failed,) = loop.results_for(bad.request_id)
    assert failed.status == FAILED and "epochs='many'" in failed.error, failed.error
    (succeeded,) = loop.results_for(good.request_id)
    assert succeeded.status == SUCCEEDED and succeeded.version == 1, succeeded.error


def test_retraining_after_a_concept_change_is_promoted_over_the_old_model(loop):
    model, stream = names()
    before = agrawal_rows(1500, function=0, seed=9)
    after = agrawal_rows(1500, function=1, seed=10, start=1500)  # the concept changes at row 1500
    write_segments(loop.store, stream, before + after)
    drift_ms = T0_MS + 1500 * STEP_MS

    first = training_request(model, stream, start_ms=T0_MS, end_ms=drift_ms - 1, min_rows=1500)
    loop.request(first)
    (old,) = loop.results_for(first.request_id)
    assert old.status == SUCCEEDED and old.promoted, old.error
    # The first model chose its net on a held-out share (train.py): Agrawal's bands want the steps.
    assert old.metrics["quantile_steps"] == 1 and "selection_steps_accuracy" in old.metrics, dict(old.metrics)

    retrain = training_request(model, stream, start_ms=drift_ms, min_rows=1500)  # open end: up to now
    retrain.trigger = training_pb2.TrainingRequest.DRIFT
    loop.request(retrain)
    (new,) = loop.results_for(retrain.request_id)
    assert new.status == SUCCEEDED and new.version == 2, new.error
    # A drift retrain takes production's net instead of choosing one.
    assert new.metrics["quantile_steps"] == 1 and "selection_steps_accuracy" not in new.metrics, dict(new.metrics)
    assert new.promoted, dict(new.metrics)
    # The gate scored both on the post-drift eval slice; the old model knows only the old concept.
    assert new.metrics["gate_baseline_version"] == 1
    assert new.metrics["gate_candidate_accuracy"] > new.metrics["gate_baseline_accuracy"] + 0.2
    production = loop.registry.GetAlias(registry_pb2.GetAliasRequest(name=model, alias="production"))
    assert production.version == 2 and production.params["window_start_ms"] == str(drift_ms)
    manifest = loop.store.get_json(f"datasets/{stream}/versions/{new.dataset_id}.json")
    assert manifest["rows"] == 1500 and manifest["window_end_ms"] == T0_MS + 2999 * STEP_MS


def publish_features(loop: Loop, stream: str, rows: list[dict]) -> None:
    """The rows as the feature service publishes them on driftline.features."""
    for row in rows:
        record = features_pb2.FeatureRecord(event_id=row["event_id"], entity_id=row["entity_id"], feature_set=stream,
                                            values=[row[name] for name in FEATURES], label=row["label"])
        record.event_time.FromMilliseconds(row["event_time_ms"])
        loop.producer.produce(loop.topics.features, record, key=row["entity_id"])
    loop.producer.flush()


def test_a_drift_retrains_first_rows_come_from_the_features_topic_before_a_segment_holds_them(loop):
    """The rows after a change are on driftline.features and in no segment yet (the feature service
    cuts one every few hundred ms): the drift retrain trains on them, and its dataset names them as
    a part of its own, which reads back against its sha256."""
    model, stream = names()
    before = agrawal_rows(1000, function=0, seed=41)
    after = agrawal_rows(300, function=1, seed=42, start=1000)  # the concept changes at row 1000
    write_segments(loop.store, stream, before)
    first = training_request(model, stream, start_ms=T0_MS, end_ms=T0_MS + 999 * STEP_MS, min_rows=1000)
    loop.request(first)
    (old,) = loop.results_for(first.request_id)
    assert old.status == SUCCEEDED and old.promoted, old.error
    # The trainer follows the topic from where it was when it started: it is running by now.
    publish_features(loop, stream, before[-50:] + after)

    retrain = training_request(model, stream, start_ms=T0_MS + 1000 * STEP_MS, min_rows=300)
    retrain.trigger = training_pb2.TrainingRequest.DRIFT
    loop.request(retrain)
    (new,) = loop.results_for(retrain.request_id)
    assert new.status == SUCCEEDED and new.promoted, new.error
    assert new.metrics["gate_candidate_accuracy"] > new.metrics["gate_baseline_accuracy"] + 0.2, dict(new.metrics)
    manifest = loop.store.get_json(f"datasets/{stream}/versions/{new.dataset_id}.json")
    (part,) = manifest["segments"]
    assert part["key"].startswith(f"datasets/{stream}/recent/") and part["rows"] == manifest["rows"] == 300
    table = pq.read_table(io.BytesIO(loop.store.get_bytes(part["key"], expected_sha256=part["sha256"])))
    assert table.column("event_id").to_pylist() == [r["event_id"] for r in after]
    assert table.column("label").to_pylist() == [r["label"] for r in after]


def test_a_concept_that_returns_is_served_again_by_the_version_that_learnt_it(loop):
    """A → B → A: the drift request back to A scores the earlier versions on the new window's
    held-out rows; v1 (trained on A) beats a fresh candidate, goes through the gate on those rows
    and takes production again, and no version is registered for the request. A concept never
    seen before (C) is trained as usual."""
    model, stream = names()
    rows = (agrawal_rows(1500, function=0, seed=21) + agrawal_rows(1500, function=1, seed=22, start=1500)
            + agrawal_rows(300, function=0, seed=23, start=3000) + agrawal_rows(300, function=4, seed=24, start=3300))
    write_segments(loop.store, stream, rows)
    at = [T0_MS + n * STEP_MS for n in (0, 1500, 3000, 3300, 3600)]

    results = []
    for (start, end), reuse in zip(zip(at, at[1:]), (0, 0, 3, 3)):
        request = training_request(model, stream, start_ms=start, end_ms=end - 1, min_rows=min(end - start, 300))
        request.reuse_candidates = reuse
        loop.request(request)
        (result,) = loop.results_for(request.request_id)
        assert result.status == SUCCEEDED, result.error
        results.append((request, result))
    (_, a), (_, b), (back_request, back), (_, c) = results
    assert (a.version, a.promoted, b.version, b.promoted) == (1, True, 2, True)

    assert back.reused and back.version == 1 and back.promoted, dict(back.metrics)
    decision = next(d for d in loop.registry.GetGateDecisions(registry_pb2.GetGateDecisionsRequest(name=model)).decisions
                    if d.idempotency_key == back_request.request_id)
    assert decision.candidate_version == 1 and decision.baseline_version == 2
    assert decision.eval_uri != a.metrics.get("eval_uri") and decision.eval_uri.endswith(".parquet")
    assert decision.candidate_accuracy > decision.baseline_accuracy + 0.2, decision
    # Decided on every row of the window (v1 scored on them what it did on its own held-out rows),
    # not on the 20 % a fresh candidate would have been evaluated on: nothing was trained for it.
    assert decision.eval_rows == 300, decision
    # The slice the decision is on is the new window's, rows v1 never trained on.
    eval_rows = pq.read_table(io.BytesIO(loop.store.get_bytes(split_uri(decision.eval_uri)[1])))
    assert eval_rows.column("event_time_ms").to_pylist()[0] >= at[2]
    with pytest.raises(grpc.RpcError) as none_registered:
        loop.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(
            name=model, idempotency_key=back_request.request_id))
    assert none_registered.value.code() == grpc.StatusCode.NOT_FOUND

    assert not c.reused and c.version == 3, dict(c.metrics)
    # The same request once more (redelivered after a crash) is answered from the recorded decision.
    loop.request(back_request)
    again = loop.results_for(back_request.request_id, count=2)[-1]
    assert (again.version, again.reused, again.promoted) == (1, True, True)


def test_a_drift_retrain_does_not_wait_behind_a_refresh_which_it_supersedes(loop):
    """The refresh lane waits for rows that are not there yet; the drift request asked after it is
    trained at once by the other lane, and the refresh is answered FAILED, superseded."""
    model, stream = names()
    write_segments(loop.store, stream, agrawal_rows(600, function=0, seed=31))
    refresh = training_request(model, stream, start_ms=T0_MS, min_rows=5000)  # never fills in the test
    refresh.trigger = training_pb2.TrainingRequest.REFRESH
    loop.request(refresh)
    drift = training_request(model, stream, start_ms=T0_MS, min_rows=600)
    drift.trigger = training_pb2.TrainingRequest.DRIFT
    drift.requested_at.FromMilliseconds(refresh.requested_at.ToMilliseconds() + 1)
    loop.request(drift)

    (trained,) = loop.results_for(drift.request_id)
    assert trained.status == SUCCEEDED and trained.promoted, trained.error
    (cancelled,) = loop.results_for(refresh.request_id)
    assert cancelled.status == FAILED and "Superseded" in cancelled.error, cancelled


def test_a_trainer_stopped_while_waiting_leaves_the_request_to_the_next_one(loop, kafka_bootstrap, tmp_path):
    # Its own topics (and so its own consumer group), so the module's trainer does not take the request.
    topics = Topics(unique_prefix())
    ensure_topics(kafka_bootstrap, [topics.training_requests, topics.training_results])
    env = {"DRIFTLINE_TOPIC_PREFIX": topics.prefix, "DRIFTLINE_BUCKET": loop.store.bucket,
           "DRIFTLINE_REGISTRY_ADDRESS": loop.registry_address, "DRIFTLINE_WAIT_TIMEOUT_S": "120",
           "DRIFTLINE_POLL_INTERVAL_S": "0.2"}
    model, stream = names()
    request = training_request(model, stream, start_ms=T0_MS, min_rows=500)
    loop.producer.produce(topics.training_requests, request, key=model)
    loop.producer.flush()

    first = ServiceRun("trainer", env, tmp_path / "first.log")
    wait_for(lambda: "services.trainer.worker: training" in first.log_tail(), 60, "the first trainer to start waiting")
    assert first.stop(timeout=20) == 0, first.log_tail()  # promptly, although its wait had 120 s left

    write_segments(loop.store, stream, agrawal_rows(500, function=0, seed=11))
    second = ServiceRun("trainer", env, tmp_path / "second.log")
    results = Consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", [topics.training_results])
    try:
        (record,) = collect(results, training_pb2.TrainingResult, lambda rs: len(rs) >= 1, 60,
                            alive=second.assert_running)
    finally:
        results.close()
        assert second.stop() == 0, second.log_tail()
    assert record.value.request_id == request.request_id and record.value.status == SUCCEEDED, record.value.error
