"""Authentication and roles against the real services (`python -m services.<name>` on loopback,
on the real broker and object store) with a key pair made by `driftline tokens`: every RPC of
every contract and every HTTP endpoint asked with no token, a token without its role and a
token with it; expired, revoked and foreign tokens; services that call the registry with their
own token; and the audit log of a promotion and of a SetAlias through `driftline models audit`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message_factory

from driftline.v1 import (
    features_pb2, ingest_pb2, monitor_pb2, registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc,
)
from inference import grpc_service_pb2
from services.common import auth
from services.common.kafka import ensure_topics
from services.common.settings import Topics
from support import ROOT, ServiceRun, free_port, unique_bucket, unique_prefix, wait_for
from tiny_models import FEATURES, WEIGHTS, tiny_model

MODEL = "auth-model"
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Where each service of the contracts runs: (generated module, service, process).
SERVICES = [(registry_pb2, "Registry", "registry"), (ingest_pb2, "Ingest", "ingest"),
            (features_pb2, "FeatureStore", "feature"), (serving_pb2, "Predictor", "serving"),
            (grpc_service_pb2, "GRPCInferenceService", "serving"), (monitor_pb2, "Monitor", "monitor")]
# The processes started here, each with its own principal's token when it calls another (the
# trainer, which has no gRPC server, is not started).
SERVICE_ROLES = {name: auth.SERVICE_ROLES.get(name, ()) for name in ("registry", "ingest", "feature", "serving",
                                                                      "monitor")}


def methods():
    """(path, process, method descriptor) of every RPC of every contract."""
    for module, service, process in SERVICES:
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            yield f"/{descriptor.full_name}/{method.name}", process, method


METHODS = {path: (process, method) for path, process, method in methods()}
HTTP = ["dashboard /", "dashboard /api/state", "dashboard /events", "dashboard /metrics", "monitor-metrics /metrics",
        "registry-metrics /metrics"]


def cli(home: Path, *args: str, token: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DRIFTLINE_HOME": str(home), "DRIFTLINE_TOKEN": token,
                                           **(env or {})})


@dataclass
class Platform:
    home: Path
    key: Ed25519PrivateKey
    ports: dict[str, int] = field(default_factory=dict)
    runs: dict[str, ServiceRun] = field(default_factory=dict)

    def token(self, *roles: str, subject: str = "tester", **kw) -> str:
        return auth.issue(self.key, subject, roles, **kw)[0]

    def address(self, process: str) -> str:
        return f"127.0.0.1:{self.ports[process]}"

    def call(self, path: str, token: str | None, request=None, timeout: float = 10.0):
        """The method's answer, or the grpc.RpcError it ended with."""
        process, method = METHODS[path]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        with grpc.insecure_channel(self.address(process)) as channel:
            kind = channel.unary_stream if method.server_streaming else channel.unary_unary
            rpc = kind(path, request_serializer=request_type.SerializeToString,
                       response_deserializer=response_type.FromString)
            try:
                answer = rpc(request or request_type(), timeout=timeout, metadata=metadata)
                return next(iter(answer), None) if method.server_streaming else answer
            except grpc.RpcError as exc:
                return exc

    def http(self, endpoint: str, token: str | None) -> tuple[int, str]:
        where, path = endpoint.split(" ")
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports[where]}{path}",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # /events: the headers are enough
                return response.status, ""
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def platform(kafka_bootstrap, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    home = tmp / "home"
    made = cli(home, "tokens", "create", "--role", "admin", "--subject", "bootstrap", "--json")
    assert made.returncode == 0, made.stderr
    keys = home / "auth"
    plat = Platform(home, auth.load_private_key(keys / "private.pem"))
    prefix, bucket = unique_prefix(), unique_bucket()
    topics = Topics(prefix)
    ensure_topics(kafka_bootstrap, [*topics.all(), *(topics.dead_letters(s) for s in SERVICE_ROLES)])
    store = s3.store(bucket)
    for name in SERVICE_ROLES:
        plat.ports[name] = free_port()
    plat.ports.update({"dashboard": free_port(), "monitor-metrics": free_port(), "registry-metrics": free_port()})
    common = {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_BUCKET": bucket, "DRIFTLINE_LOG_LEVEL": "WARNING",
              "DRIFTLINE_AUTH_PUBLIC_KEY_FILE": str(keys / "public.pem"),
              "DRIFTLINE_AUTH_REVOKED_FILE": str(keys / "revoked"),
              "DRIFTLINE_REGISTRY_ADDRESS": f"127.0.0.1:{plat.ports['registry']}"}
    own = {
        "registry": {"DRIFTLINE_REGISTRY_DB": str(tmp / "registry.db"), "DRIFTLINE_RELAY_INTERVAL_S": "0.2",
                     "DRIFTLINE_METRICS_PORT": str(plat.ports["registry-metrics"])},
        "ingest": {}, "feature": {},
        "monitor": {"DRIFTLINE_DASHBOARD_PORT": str(plat.ports["dashboard"]), "DRIFTLINE_CALIBRATION_STREAMS": "16",
                    "DRIFTLINE_METRICS_PORT": str(plat.ports["monitor-metrics"])},
        "serving": {"DRIFTLINE_MODEL_NAME": MODEL, "DRIFTLINE_PREDICTION_SPOOL_DIR": str(tmp / "spool"),
                    "DRIFTLINE_ALIAS_RETRY_S": "0.2"},
    }
    try:
        for name, roles in SERVICE_ROLES.items():
            if name == "serving":  # after its model is in production, so that it has one to fetch
                continue
            env = {**common, **own[name], "DRIFTLINE_GRPC_PORT": str(plat.ports[name]), "DRIFTLINE_INSTANCE_ID": name}
            if roles:
                env["DRIFTLINE_TOKEN"] = plat.token(*roles, subject=name)
            plat.runs[name] = ServiceRun(name, env, tmp / f"{name}.log")
        plat.runs["registry"].wait_serving(plat.address("registry"), timeout=60)
        ref = store.put_bytes(f"models/{MODEL}/1/model.onnx", tiny_model(WEIGHTS[1]))
        admin = [("authorization", f"Bearer {plat.token('admin')}")]
        with grpc.insecure_channel(plat.address("registry")) as channel:
            registry = registry_pb2_grpc.RegistryStub(channel)
            version = registry.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                model_version=registry_pb2.ModelVersion(name=MODEL, artifact_uri=ref.uri, artifact_sha256=ref.sha256,
                                                        dataset_id="auth", feature_names=FEATURES)),
                timeout=10, metadata=admin)
            registry.Promote(registry_pb2.PromoteRequest(name=MODEL, version=version.version), timeout=30,
                             metadata=admin)
        env = {**common, **own["serving"], "DRIFTLINE_GRPC_PORT": str(plat.ports["serving"]),
               "DRIFTLINE_INSTANCE_ID": "serving", "DRIFTLINE_TOKEN": plat.token("read", subject="serving")}
        plat.runs["serving"] = ServiceRun("serving", env, tmp / "serving.log")
        for name in ("ingest", "feature", "monitor", "serving"):  # health checking stays open: no token here
            plat.runs[name].wait_serving(plat.address(name), timeout=90)
        yield plat
    except BaseException:
        sys.stderr.write("\n".join(f"--- {n} ---\n{r.log_tail(3000)}" for n, r in plat.runs.items()))
        raise
    finally:
        for run in reversed(list(plat.runs.values())):
            run.stop()


# -- the table -------------------------------------------------------------------------------

def test_every_method_of_every_contract_has_a_role():
    assert sorted(set(METHODS) - set(auth.METHOD_ROLES)) == []
    assert sorted(set(auth.METHOD_ROLES) - set(METHODS)) == []  # no entry for a method that is gone


def _wrong_roles(role: str) -> list[str]:
    return [r for r in auth.ROLES if r not in (role, "admin")]


@pytest.mark.parametrize("path", sorted(METHODS))
def test_rpc_without_a_token_is_unauthenticated(platform, path):
    answer = platform.call(path, None)
    assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.UNAUTHENTICATED, answer
    assert "no token" in answer.details() and auth.METHOD_ROLES[path] in answer.details()


@pytest.mark.parametrize("path", sorted(METHODS))
def test_rpc_with_a_token_without_its_role_is_permission_denied(platform, path):
    role = auth.METHOD_ROLES[path]
    answer = platform.call(path, platform.token(*_wrong_roles(role)))
    assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.PERMISSION_DENIED, answer
    assert f"needs role {role!r}" in answer.details()


@pytest.mark.parametrize("path", sorted(METHODS))
def test_rpc_with_its_role_gets_past_authentication(platform, path):
    answer = platform.call(path, platform.token(auth.METHOD_ROLES[path]), timeout=3)
    # An empty request may well be refused by the method itself (INVALID_ARGUMENT, NOT_FOUND, a
    # watch that sends nothing in 3 s), but never for want of a token.
    assert not (isinstance(answer, grpc.RpcError) and answer.code() in AUTH_CODES), answer.details()


@pytest.mark.parametrize("endpoint", HTTP)
def test_http_without_a_token_is_401(platform, endpoint):
    status, body = platform.http(endpoint, None)
    assert status == 401 and "no token" in body


@pytest.mark.parametrize("endpoint", HTTP)
def test_http_with_a_token_without_read_is_403(platform, endpoint):
    status, body = platform.http(endpoint, platform.token(*_wrong_roles("read")))
    assert status == 403 and "needs role 'read'" in body


@pytest.mark.parametrize("endpoint", HTTP)
def test_http_with_read_is_200(platform, endpoint):
    assert platform.http(endpoint, platform.token("read")) == (200, "")


def test_healthz_stays_open(platform):
    assert platform.http("dashboard /healthz", None) == (200, "")


@pytest.mark.parametrize("where", ["monitor-metrics", "registry-metrics"])
def test_a_metrics_endpoints_open_probe_answers_ok_and_shows_no_metrics(platform, where):
    """The Prometheus app serves its metrics on any path: the open probe must not be a way round
    the token."""
    with urllib.request.urlopen(f"http://127.0.0.1:{platform.ports[where]}/healthz", timeout=10) as response:
        assert (response.status, response.read()) == (200, b"ok")


def test_a_browser_trades_its_token_for_a_cookie(platform):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    base = f"http://127.0.0.1:{platform.ports['dashboard']}"
    with opener.open(f"{base}/?token={platform.token('read')}", timeout=10) as page:  # redirected to /
        assert page.status == 200 and page.url == f"{base}/"
    with opener.open(f"{base}/api/state", timeout=10) as state:  # no header: the cookie
        assert state.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"{base}/?token={platform.token('predict')}", timeout=10)
    assert refused.value.code == 403


# -- tokens that do not verify -----------------------------------------------------------------

GET_ALIAS = "/driftline.v1.Registry/GetAlias"


def _refusal(platform, token: str) -> str:
    answer = platform.call(GET_ALIAS, token, registry_pb2.GetAliasRequest(name=MODEL, alias="production"))
    assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.UNAUTHENTICATED, answer
    return answer.details()


def test_expired_tokens_are_refused(platform):
    issued = platform.token("read", ttl_s=60, now=1_700_000_000)
    assert "expired at 2023-11-14T22:14:20Z" in _refusal(platform, issued)


def test_tokens_signed_by_another_key_are_refused(platform):
    forged, _ = auth.issue(Ed25519PrivateKey.generate(), "mallory", ["admin"])
    assert "bad signature" in _refusal(platform, forged)


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c"])
def test_malformed_tokens_are_refused(platform, garbage):
    assert "token refused" in _refusal(platform, garbage)


def test_a_revoked_token_is_refused_once_the_list_is_reread(platform):
    created = cli(platform.home, "tokens", "create", "--role", "read", "--subject", "leaver", "--ttl", "1h", "--json")
    assert created.returncode == 0, created.stderr
    entry = json.loads(created.stdout)
    request = registry_pb2.GetAliasRequest(name=MODEL, alias="production")
    assert platform.call(GET_ALIAS, entry["token"], request).version == 1

    revoked = cli(platform.home, "tokens", "revoke", entry["jti"])
    assert revoked.returncode == 0, revoked.stderr

    def refused():
        answer = platform.call(GET_ALIAS, entry["token"], request)
        return isinstance(answer, grpc.RpcError) and answer.details()

    assert f"revoked (jti {entry['jti']}" in wait_for(refused, 10, "the registry to re-read the revoked list")
    listed = cli(platform.home, "tokens", "list", "--json")
    rows = {row["jti"]: row for row in json.loads(listed.stdout)}
    assert rows[entry["jti"]]["revoked"] is True and rows[entry["jti"]]["sub"] == "leaver"
    assert all("token" not in row for row in rows.values())  # the ledger never holds a token


def test_the_issuers_private_key_is_readable_by_its_owner_only(platform):
    mode = stat.S_IMODE((platform.home / "auth" / "private.pem").stat().st_mode)
    assert mode == 0o600


# -- services call with their own token ----------------------------------------------------------

def test_serving_fetched_its_model_with_its_own_token_and_answers_a_predict_token(platform):
    with grpc.insecure_channel(platform.address("serving")) as channel:
        answer = serving_pb2_grpc.PredictorStub(channel).Predict(
            serving_pb2.PredictRequest(model_name=MODEL, rows=[serving_pb2.Row(values=[0.1, 0.2, 0.3])]),
            timeout=10, metadata=[("authorization", f"Bearer {platform.token('predict')}")])
    assert answer.model_version == 1  # production's: serving read it from the registry as "serving"


# -- the audit log -------------------------------------------------------------------------------

def test_alias_moves_and_gate_decisions_are_audited_with_who_and_why(platform):
    name = "audited-model"  # two versions of the fixture's artifact (other datasets), no eval slice
    admin = platform.token("admin", subject="oncall")
    ci = platform.token("train", "promote", subject="ci-bot")
    first = platform.call("/driftline.v1.Registry/GetModelVersion", admin,
                          registry_pb2.GetModelVersionRequest(name=MODEL, version=1))
    versions = [platform.call("/driftline.v1.Registry/RegisterModelVersion", ci, registry_pb2.RegisterModelVersionRequest(
        model_version=registry_pb2.ModelVersion(name=name, artifact_uri=first.artifact_uri,
                                                artifact_sha256=first.artifact_sha256, dataset_id=f"ds-{n}",
                                                feature_names=FEATURES))).version for n in (1, 2)]
    assert versions == [1, 2]
    decision = platform.call("/driftline.v1.Registry/Promote", ci,
                             registry_pb2.PromoteRequest(name=name, version=1, reason="first model of the stream"))
    assert decision.promoted

    set_alias = "/driftline.v1.Registry/SetAlias"
    bypass = registry_pb2.SetAliasRequest(name=name, alias="production", version=2)
    denied = platform.call(set_alias, ci, bypass)  # promote cannot pass the gate by
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "needs role 'admin'" in denied.details()
    unexplained = platform.call(set_alias, admin, bypass)
    assert unexplained.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason is required" in unexplained.details()
    bypass.reason = "hotfix INC-42: v1 mislabels the new region"
    assert platform.call(set_alias, admin, bypass).version == 2

    env = {"DRIFTLINE_REGISTRY_ADDRESS": platform.address("registry")}
    shown = cli(platform.home, "models", "audit", name, "--json", token=platform.token("read"), env=env)
    assert shown.returncode == 0, shown.stderr
    records = json.loads(shown.stdout)
    assert [(r["action"], r["subject"], r["version"], r["previous_version"], r["moved"], r["reason"])
            for r in records] == [
        ("PROMOTE", "ci-bot", 1, 0, True, "first model of the stream"),
        ("SET_ALIAS", "oncall", 2, 1, True, "hotfix INC-42: v1 mislabels the new region")]
    assert records[0]["promoted"] and "pointed nowhere" in records[0]["gate_reason"]
    assert all(r["at"] for r in records)

    table = cli(platform.home, "models", "audit", name, token=platform.token("read"), env=env)
    assert table.returncode == 0 and "oncall" in table.stdout and "INC-42" in table.stdout
    without = cli(platform.home, "models", "audit", name, env=env)
    assert without.returncode != 0 and "UNAUTHENTICATED" in without.stderr


def test_a_caller_without_a_token_is_refused_before_its_request_is_decoded(platform):
    with grpc.insecure_channel(platform.address("registry")) as channel:
        raw = channel.unary_unary(GET_ALIAS, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            raw(b"\xff\xff", timeout=10)  # not a GetAliasRequest: with a token, INVALID_ARGUMENT
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as invalid:
            raw(b"\xff\xff", timeout=10, metadata=[("authorization", f"Bearer {platform.token('read')}")])
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
