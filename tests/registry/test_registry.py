"""The registry as a real process (`python -m services.registry`) on the real broker and
object store: versions with lineage, aliases, errors, the outbox on
driftline.registry.events, and the promotion gate scoring real ONNX models."""

from __future__ import annotations

import re
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driftline.v1 import registry_pb2, registry_pb2_grpc
from helpers_models import FEATURES, accuracy_of, agrawal_rows, collect, feature_table, parquet_bytes, trained_onnx
from services.common.kafka import Consumer
from services.common.objectstore import ObjectStore
from services.common.settings import Topics
from services.registry import sqlite_store
from support import ServiceRun, free_port, unique_bucket, unique_prefix

Kind = registry_pb2.RegistryEvent.Kind
REGISTRY = "driftline.v1.Registry"


@dataclass
class Registry:
    stub: registry_pb2_grpc.RegistryStub
    store: ObjectStore
    topics: Topics
    bootstrap: str
    run: ServiceRun

    def events(self, model: str, until, timeout: float = 20.0, settle_s: float = 0.0
               ) -> list[registry_pb2.RegistryEvent]:
        """This model's events on the topic, read from the beginning by a fresh group, until
        `until(events)` holds, and then for `settle_s` more (to see anything that should not come)."""
        consumer = Consumer(self.bootstrap, f"g-{uuid.uuid4().hex}", [self.topics.registry_events])
        mine = lambda r: r.key == model.encode()  # noqa: E731
        try:
            records = collect(consumer, registry_pb2.RegistryEvent, lambda rs: until([r.value for r in rs]),
                              timeout, keep=mine, alive=self.run.assert_running)
            if settle_s:
                records += [r for r in consumer.poll_batch(registry_pb2.RegistryEvent, timeout=settle_s) if mine(r)]
        finally:
            consumer.close()
        return [r.value for r in records]


def start_registry(env: dict[str, str], log_path: Path) -> tuple[ServiceRun, str]:
    port = free_port()
    run = ServiceRun("registry", {**env, "DRIFTLINE_GRPC_PORT": str(port), "DRIFTLINE_RELAY_INTERVAL_S": "0.2"},
                     log_path)
    address = f"127.0.0.1:{port}"
    run.wait_serving(address, REGISTRY)
    return run, address


@pytest.fixture(scope="module")
def registry(kafka_bootstrap, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    prefix, bucket = unique_prefix(), unique_bucket()
    store = s3.store(bucket)
    env = {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_BUCKET": bucket,
           "DRIFTLINE_REGISTRY_DB": str(tmp / "db" / "registry.db")}
    run, address = start_registry(env, tmp / "registry.log")
    channel = grpc.insecure_channel(address)
    yield Registry(registry_pb2_grpc.RegistryStub(channel), store, Topics(prefix), kafka_bootstrap, run)
    channel.close()
    assert run.stop() == 0, f"registry did not stop cleanly:\n{run.log_tail()}"


@dataclass
class Models:
    good_uri: str
    good_sha: str
    bad_uri: str
    bad_sha: str
    eval_uri: str
    good_accuracy: float
    bad_accuracy: float


@pytest.fixture(scope="module")
def models(registry) -> Models:
    """A model trained on Agrawal function 0, one trained on shuffled labels, and the eval slice:
    the 500 rows after the 1,500 they were trained on."""
    rows = agrawal_rows(2000, function=0, seed=3)
    train_rows, eval_rows = rows[:1500], rows[1500:]
    good, bad = trained_onnx(train_rows), trained_onnx(train_rows, shuffle_labels=True)
    refs = [registry.store.put_bytes(f"models/m/candidates/{uuid.uuid4().hex}/model.onnx", b) for b in (good, bad)]
    eval_ref = registry.store.put_bytes("datasets/s/eval/d.parquet", parquet_bytes(feature_table(eval_rows)))
    found = Models(refs[0].uri, refs[0].sha256, refs[1].uri, refs[1].sha256, eval_ref.uri,
                   accuracy_of(good, eval_rows), accuracy_of(bad, eval_rows))
    assert found.good_accuracy > 0.85 and found.good_accuracy > found.bad_accuracy + 0.15, found  # the premise
    return found


def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def register(registry: Registry, name: str, uri: str, sha: str, eval_uri: str = "", dataset_id: str = "d1",
             **extra) -> registry_pb2.ModelVersion:
    return registry.stub.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
        model_version=registry_pb2.ModelVersion(name=name, artifact_uri=uri, artifact_sha256=sha,
                                                dataset_id=dataset_id, eval_uri=eval_uri,
                                                feature_names=FEATURES, **extra)))


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# -- versions and aliases --------------------------------------------------------------------

def test_register_get_list_and_alias_round_trip(registry, models):
    name = model_name()
    first = register(registry, name, models.good_uri, models.good_sha, models.eval_uri, dataset_id="ds-1",
                     code_version="abc123", params={"epochs": "15"}, metrics={"accuracy": 0.93},
                     metadata_uri="s3://b/models/x/metadata.json", version=99)
    second = register(registry, name, models.bad_uri, models.bad_sha, dataset_id="ds-2")
    assert (first.version, second.version) == (1, 2)  # assigned by the registry; 99 was ignored
    assert first.created_at.seconds > 0

    got = registry.stub.GetModelVersion(registry_pb2.GetModelVersionRequest(name=name, version=1))
    assert got == first
    assert (got.artifact_uri, got.artifact_sha256, got.dataset_id, got.code_version, got.eval_uri) == (
        models.good_uri, models.good_sha, "ds-1", "abc123", models.eval_uri)
    assert dict(got.params) == {"epochs": "15"} and dict(got.metrics) == {"accuracy": 0.93}
    assert list(got.feature_names) == FEATURES and got.metadata_uri == "s3://b/models/x/metadata.json"

    listed = registry.stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=name))
    assert [v.version for v in listed.model_versions] == [1, 2]

    # The same artifact and dataset again is a retry, not a new version.
    again = register(registry, name, models.good_uri, models.good_sha, models.eval_uri, dataset_id="ds-1")
    assert again.version == 1

    for target in (2, 1):  # moving it back is how a rollback looks
        moved = registry.stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=target,
                                                                    reason="round trip"))
        assert moved.version == target
        alias = registry.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias="production"))
        assert alias.version == target and alias.artifact_sha256 == {1: models.good_sha, 2: models.bad_sha}[target]


def test_unknown_things_are_not_found_and_bad_requests_say_what_is_wrong(registry, models):
    name = model_name()
    stub = registry.stub
    r = registry_pb2
    assert status_of(lambda: stub.GetModelVersion(r.GetModelVersionRequest(name=name, version=1)))[0] \
        == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.ListModelVersions(r.ListModelVersionsRequest(name=name)))[0] \
        == grpc.StatusCode.NOT_FOUND
    register(registry, name, models.good_uri, models.good_sha)
    not_found = {
        "unknown version": lambda: stub.GetModelVersion(r.GetModelVersionRequest(name=name, version=7)),
        "alias pointing nowhere": lambda: stub.GetAlias(r.GetAliasRequest(name=name, alias="production")),
        "alias to unknown version": lambda: stub.SetAlias(r.SetAliasRequest(name=name, alias="production",
                                                                            version=7, reason="test")),
        "promote unknown version": lambda: stub.Promote(r.PromoteRequest(name=name, version=7)),
        "decisions of unknown model": lambda: stub.GetGateDecisions(r.GetGateDecisionsRequest(name="nope")),
    }
    for what, call in not_found.items():
        assert status_of(call)[0] == grpc.StatusCode.NOT_FOUND, what

    invalid = {
        "model_version.name is required": lambda: register(registry, "", models.good_uri, models.good_sha),
        "model_version.artifact_sha256 is required": lambda: register(registry, name, models.good_uri, ""),
        "64 lowercase hex": lambda: register(registry, name, models.good_uri, "abc"),
        "artifact_uri": lambda: register(registry, name, "/tmp/model.onnx", models.good_sha),
        "version must be 1 or more": lambda: stub.GetModelVersion(r.GetModelVersionRequest(name=name)),
        "alias is required": lambda: stub.SetAlias(r.SetAliasRequest(name=name, version=1)),
        "reason is required": lambda: stub.SetAlias(r.SetAliasRequest(name=name, alias="production", version=1)),
        "name": lambda: stub.ListModelVersions(r.ListModelVersionsRequest(name="a/b")),
        "eval_uri": lambda: stub.Promote(r.PromoteRequest(name=name, version=1, eval_uri="/tmp/rows.parquet")),
    }
    for message, call in invalid.items():
        code, details = status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (message, details)


# -- the gate --------------------------------------------------------------------------------

def test_promotes_when_the_alias_points_nowhere(registry, models):
    name = model_name()
    v1 = register(registry, name, models.good_uri, models.good_sha, models.eval_uri)
    decision = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=v1.version))  # alias defaults
    assert decision.promoted and decision.alias == "production" and decision.baseline_version == 0
    assert decision.candidate_accuracy == pytest.approx(models.good_accuracy, abs=1e-6)
    assert decision.eval_rows == 500 and "pointed nowhere" in decision.reason
    assert registry.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias="production")).version == 1


def test_the_gate_refuses_a_worse_model_and_records_why(registry, models):
    name = model_name()
    good = register(registry, name, models.good_uri, models.good_sha, models.eval_uri)
    assert registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=good.version)).promoted
    worse = register(registry, name, models.bad_uri, models.bad_sha, models.eval_uri, dataset_id="shuffled")

    decision = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=worse.version,
                                                                 alias="production"))
    assert not decision.promoted
    assert (decision.candidate_version, decision.baseline_version, decision.eval_rows) == (2, 1, 500)
    assert decision.candidate_accuracy == pytest.approx(models.bad_accuracy, abs=1e-6)
    assert decision.baseline_accuracy == pytest.approx(models.good_accuracy, abs=1e-6)
    assert decision.eval_uri == models.eval_uri
    assert decision.reason.startswith("refused") and "v1" in decision.reason, decision.reason
    assert registry.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias="production")).version == 1

    recorded = registry.stub.GetGateDecisions(registry_pb2.GetGateDecisionsRequest(name=name)).decisions
    assert [d.promoted for d in recorded] == [True, False] and recorded[-1] == decision
    events = registry.events(name, lambda es: any(e.kind == Kind.GATE_DECIDED and not e.decision.promoted
                                                  for e in es))
    refused = [e for e in events if e.kind == Kind.GATE_DECIDED and not e.decision.promoted]
    assert refused[0].decision == decision and refused[0].model_version.version == 2


def test_a_promotion_on_named_rows_scores_both_versions_on_them(registry, models):
    """An earlier version promoted again (concept reuse) is judged on the rows the caller names,
    not on its own old eval slice: here a slice the worse model was not given."""
    name = model_name()
    good = register(registry, name, models.good_uri, models.good_sha, "")  # no eval slice of its own
    worse = register(registry, name, models.bad_uri, models.bad_sha, models.eval_uri, dataset_id="shuffled")
    registry.stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=worse.version,
                                                        reason="test: start from the worse one"))
    refused = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=good.version))
    assert not refused.promoted and "no eval slice" in refused.reason

    decision = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=good.version,
                                                                 eval_uri=models.eval_uri))
    assert decision.promoted and decision.eval_uri == models.eval_uri and decision.eval_rows == 500
    assert decision.candidate_accuracy == pytest.approx(models.good_accuracy, abs=1e-6)
    assert decision.baseline_accuracy == pytest.approx(models.bad_accuracy, abs=1e-6)
    assert registry.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias="production")).version == good.version


def test_a_better_model_replaces_a_worse_one(registry, models):
    name = model_name()
    worse = register(registry, name, models.bad_uri, models.bad_sha, models.eval_uri, dataset_id="shuffled")
    better = register(registry, name, models.good_uri, models.good_sha, models.eval_uri)
    registry.stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=worse.version,
                                                        reason="test: start from the worse one"))

    decision = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=better.version))
    assert decision.promoted and decision.baseline_version == worse.version
    assert decision.candidate_accuracy > decision.baseline_accuracy
    assert decision.reason.startswith("promoted"), decision.reason
    assert registry.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias="production")).version == 2


def test_an_artifact_that_does_not_match_its_sha256_is_refused(registry, models):
    name = model_name()
    tampered = register(registry, name, models.good_uri, models.bad_sha, models.eval_uri)  # wrong hash
    decision = registry.stub.Promote(registry_pb2.PromoteRequest(name=name, version=tampered.version))
    assert not decision.promoted and "does not match" in decision.reason, decision.reason
    assert status_of(lambda: registry.stub.GetAlias(
        registry_pb2.GetAliasRequest(name=name, alias="production")))[0] == grpc.StatusCode.NOT_FOUND


# -- the outbox ------------------------------------------------------------------------------

def test_every_change_is_published_in_order(registry, models):
    name = model_name()
    stub = registry.stub
    register(registry, name, models.good_uri, models.good_sha, models.eval_uri)
    register(registry, name, models.bad_uri, models.bad_sha, models.eval_uri, dataset_id="shuffled")
    stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=2, reason="test"))
    stub.Promote(registry_pb2.PromoteRequest(name=name, version=1))  # better: the alias moves back to 1
    stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="staging", version=1, reason="test"))

    expected = [(Kind.VERSION_REGISTERED, 1, "", 0), (Kind.VERSION_REGISTERED, 2, "", 0),
                (Kind.ALIAS_MOVED, 2, "production", 0), (Kind.GATE_DECIDED, 1, "production", 2),
                (Kind.ALIAS_MOVED, 1, "production", 2), (Kind.ALIAS_MOVED, 1, "staging", 0)]
    events = registry.events(name, lambda es: len(es) >= len(expected), settle_s=0.5)
    assert [(e.kind, e.model_version.version, e.alias, e.previous_version) for e in events] == expected
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.model_name == name and e.occurred_at.seconds > 0 for e in events)
    assert events[0].model_version == stub.GetModelVersion(registry_pb2.GetModelVersionRequest(name=name, version=1))
    assert events[3].decision.promoted and events[3].decision.baseline_version == 2


def test_a_restarted_registry_keeps_its_versions_and_does_not_republish(kafka_bootstrap, s3, registry, models,
                                                                        tmp_path):
    # Its own process and database; the module's topic and bucket.
    env = {"DRIFTLINE_TOPIC_PREFIX": registry.topics.prefix, "DRIFTLINE_BUCKET": registry.store.bucket,
           "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db")}
    name = model_name()
    for attempt, (uri, sha) in enumerate([(models.good_uri, models.good_sha), (models.bad_uri, models.bad_sha)]):
        run, address = start_registry(env, tmp_path / "registry.log")
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            registered = stub.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                model_version=registry_pb2.ModelVersion(name=name, artifact_uri=uri, artifact_sha256=sha)))
            assert registered.version == attempt + 1  # numbering continues across the restart
            listed = stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(name=name)).model_versions
            assert [v.version for v in listed] == list(range(1, attempt + 2))
        assert run.stop() == 0, run.log_tail()

    events = registry.events(name, lambda es: len(es) >= 2, settle_s=1.0)
    assert [e.model_version.version for e in events] == [1, 2]  # each once: sent rows are not sent again


# -- idempotency keys: a retried call makes no second version and no second decision ------------

def test_a_registration_retried_under_its_key_returns_the_first_version(registry, models):
    name = model_name()
    first = register(registry, name, models.good_uri, models.good_sha, models.eval_uri, idempotency_key="req-1")
    # The request ran again (a trainer killed after registering): other bytes, other dataset, same key.
    again = register(registry, name, models.bad_uri, models.bad_sha, dataset_id="d2", idempotency_key="req-1")
    assert again == first and first.idempotency_key == "req-1"
    other = register(registry, name, models.bad_uri, models.bad_sha, dataset_id="d2", idempotency_key="req-2")
    assert other.version == 2

    by_key = lambda key: registry_pb2.GetModelVersionRequest(name=name, idempotency_key=key)  # noqa: E731
    assert registry.stub.GetModelVersion(by_key("req-1")) == first
    assert status_of(lambda: registry.stub.GetModelVersion(by_key("req-3")))[0] == grpc.StatusCode.NOT_FOUND
    code, details = status_of(lambda: registry.stub.GetModelVersion(
        registry_pb2.GetModelVersionRequest(name=name, version=1, idempotency_key="req-1")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not both" in details
    events = registry.events(name, lambda es: len(es) >= 2, settle_s=0.5)
    assert [(e.kind, e.model_version.version) for e in events] == [(Kind.VERSION_REGISTERED, 1),
                                                                  (Kind.VERSION_REGISTERED, 2)]


def test_a_promotion_retried_under_its_key_after_a_registry_crash_is_decided_once(registry, models, tmp_path):
    # Its own process and database, killed with SIGKILL: the answer to the first Promote is lost.
    env = {"DRIFTLINE_TOPIC_PREFIX": registry.topics.prefix, "DRIFTLINE_BUCKET": registry.store.bucket,
           "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db")}
    name = model_name()
    promote = registry_pb2.PromoteRequest(name=name, version=1, idempotency_key="req-1")
    run, address = start_registry(env, tmp_path / "first.log")
    with grpc.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        stub.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(model_version=registry_pb2.ModelVersion(
            name=name, artifact_uri=models.good_uri, artifact_sha256=models.good_sha, eval_uri=models.eval_uri,
            feature_names=FEATURES, idempotency_key="req-1")))
        decided = stub.Promote(promote)
        assert decided.promoted and decided.idempotency_key == "req-1"
    run.process.kill()
    assert run.process.wait(10) == -9

    run, address = start_registry(env, tmp_path / "second.log")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            assert stub.Promote(promote) == decided  # the recorded decision; the gate did not run again
            recorded = stub.GetGateDecisions(registry_pb2.GetGateDecisionsRequest(name=name)).decisions
            assert list(recorded) == [decided]
            code, details = status_of(lambda: stub.Promote(registry_pb2.PromoteRequest(
                name=name, version=1, alias="staging", idempotency_key="req-1")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "was used to promote v1" in details
    finally:
        assert run.stop() == 0, run.log_tail()
    events = registry.events(name, lambda es: len(es) >= 3, settle_s=1.0)
    # A kill before the relay marked its rows sent publishes them again: the same events, by event_id.
    distinct = list({e.event_id: e for e in events}.values())
    assert [e.kind for e in distinct] == [Kind.VERSION_REGISTERED, Kind.GATE_DECIDED, Kind.ALIAS_MOVED]


def test_a_database_from_before_idempotency_keys_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    old_schema = re.sub(r",\s+idempotency_key\s+TEXT\s+NOT NULL DEFAULT ''", "", sqlite_store.SCHEMA)
    assert "idempotency_key" not in old_schema  # the premise: the schema as it was
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO model_versions VALUES ('m', 1, 's3://b/k', ?, 'd', 'c', '{}', '{}', '[]', '', '', 1)",
                   ("a" * 64,))
    store = sqlite_store.SqliteRegistryStore(path)
    try:
        assert store.get_version("m", 1).idempotency_key == ""
        stored, created = store.register_version(registry_pb2.ModelVersion(
            name="m", artifact_uri="s3://b/k2", artifact_sha256="b" * 64, idempotency_key="req-1"))
        assert created and stored.version == 2 and store.version_by_key("m", "req-1") == stored
    finally:
        store.close()


# -- the audit log ---------------------------------------------------------------------------

def test_alias_moves_and_gate_decisions_are_audited_in_order(registry, models):
    """Without authentication the caller is "anonymous"; a refusal and a no-op move are kept too."""
    name = model_name()
    stub = registry.stub
    register(registry, name, models.good_uri, models.good_sha, models.eval_uri)
    register(registry, name, models.bad_uri, models.bad_sha, models.eval_uri, dataset_id="shuffled")
    stub.Promote(registry_pb2.PromoteRequest(name=name, version=1, reason="first"))
    stub.Promote(registry_pb2.PromoteRequest(name=name, version=2))  # worse: refused
    stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=2, reason="override"))
    stub.SetAlias(registry_pb2.SetAliasRequest(name=name, alias="production", version=2, reason="again"))

    records = stub.GetAuditLog(registry_pb2.GetAuditLogRequest(name=name)).records
    A = registry_pb2.AuditRecord
    assert [(r.action, r.version, r.previous_version, r.moved, r.promoted, r.reason, r.subject) for r in records] == [
        (A.PROMOTE, 1, 0, True, True, "first", "anonymous"), (A.PROMOTE, 2, 1, False, False, "", "anonymous"),
        (A.SET_ALIAS, 2, 1, True, False, "override", "anonymous"),
        (A.SET_ALIAS, 2, 2, False, False, "again", "anonymous")]
    assert records[1].gate_reason.startswith("refused") and all(r.at.seconds > 0 for r in records)
    assert status_of(lambda: stub.GetAuditLog(registry_pb2.GetAuditLogRequest(name="nope")))[0] \
        == grpc.StatusCode.NOT_FOUND
