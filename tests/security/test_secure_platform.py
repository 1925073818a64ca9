"""`driftline up --secure` as a user runs it, in a DRIFTLINE_HOME of its own on a secure local stack
of its own (free ports, its own data; the shared stack is never touched): every process with its
own certificate (mTLS), token and Kafka principal over SASL_SSL, S3 over https. A labelled stream
sent with `driftline produce` gets the platform's first model trained, promoted by the trainer's
token and served; `driftline predict` and `models audit` work with the operator's token and no
flag; a client without a token, without a client certificate or in plaintext gets nothing; and
`driftline down` leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.demo.stream import DriftingStream
from services.devstack.supervisor import free_port_pair
from support import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from cli_support import Cli, platform_processes  # noqa: E402

MODEL = "driftline-model"
ROWS = 600  # labelled rows sent; the monitor asks for the first model at FIRST_MODEL_ROWS of them
FIRST_MODEL_ROWS = 300
ROW = {"salary": 50000.0, "commission": 0.0, "age": 30, "elevel": 1, "car": 3, "zipcode": 2, "hvalue": 100000.0,
       "hyears": 10, "loan": 20000.0, "salary_entity_mean": 50000.0}


class SecurePlatform:
    def __init__(self, root: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"sec{tag}."
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DRIFTLINE_") or k == "DRIFTLINE_CACHE_DIR"}
        self.env.update(DRIFTLINE_HOME=str(root / "home"), DRIFTLINE_STATE_DIR=str(root / "stack"),
                        DRIFTLINE_DEVSTACK_KAFKA_PORT=str(free_port_pair()),
                        DRIFTLINE_DEVSTACK_S3_PORT=str(free_port_pair()),
                        DRIFTLINE_TOPIC_PREFIX=self.prefix, DRIFTLINE_BUCKET=f"sec-{tag}", DRIFTLINE_LOG_JSON="false",
                        DRIFTLINE_FIRST_MODEL_MIN_ROWS=str(FIRST_MODEL_ROWS), COLUMNS="200")
        self.home = root / "home"
        self.cli = Cli(self.env)
        self.doc: dict = {}
        self.up = False

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return self.cli.run(*args, timeout=timeout)

    def json(self, *args: str, timeout: float = 120.0):
        return self.cli.json(*args, timeout=timeout)

    def log_tail(self) -> str:
        return self.cli.logs_hint()

    def processes(self) -> list[str]:
        return platform_processes(self.env)

    def down(self) -> subprocess.CompletedProcess:
        done = self.run("down", "--json", timeout=180)
        self.up = False
        return done

    # -- gRPC as an outsider -------------------------------------------------------------------

    def client(self, name: str) -> str:
        return self.doc["secure"]["client_env"][name]

    def registry_call(self, credentials: grpc.ChannelCredentials | None, token: str | None = None):
        """ListModelVersions on the registry; the reply, or the grpc.RpcError it ended with."""
        address = self.doc["services"]["registry"]["address"]
        channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            with channel:
                return registry_pb2_grpc.RegistryStub(channel).ListModelVersions(
                    registry_pb2.ListModelVersionsRequest(name=MODEL), timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return exc

    def tls(self, with_certificate: bool = True) -> grpc.ChannelCredentials:
        read = lambda name: Path(self.client(name)).read_bytes()  # noqa: E731
        if not with_certificate:
            return grpc.ssl_channel_credentials(read("DRIFTLINE_TLS_CA_FILE"))
        return grpc.ssl_channel_credentials(read("DRIFTLINE_TLS_CA_FILE"), read("DRIFTLINE_TLS_KEY_FILE"),
                                            read("DRIFTLINE_TLS_CERT_FILE"))


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    platform = SecurePlatform(tmp_path_factory.mktemp("secure"))
    started = platform.run("up", "--secure", "--any-ports", "--json", "--timeout", "180", timeout=400)
    platform.up = True
    try:
        assert started.returncode == 0, f"up --secure failed:\n{started.stdout}\n{started.stderr}\n{platform.log_tail()}"
        platform.doc = json.loads((platform.home / "platform.json").read_text())
        yield platform
    finally:
        if platform.up:
            platform.down()


@pytest.fixture(scope="module")
def served(platform, tmp_path_factory):
    """ROWS labelled rows sent with `driftline produce`; the first model the platform trains for them,
    once serving answers with it."""
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    with path.open("w") as f:
        for event in DriftingStream(drift_at=10**9, seed=3).take(ROWS):
            event.pop("event_id")
            f.write(json.dumps(event) + "\n")
    assert platform.json("produce", path, "--stream", "default")["sent"] == ROWS

    def production():
        models = {m["model"]: m for m in platform.json("models", "list")}
        return models.get(MODEL, {}).get("aliases", {}).get("production")

    version = wait_for(production, 150, "the first model in production", every=1.0)
    answer = wait_for(lambda: (done := platform.run("predict", MODEL, "--row", json.dumps(ROW), "--json")).returncode == 0
                      and json.loads(done.stdout), 60, "serving to answer with the first model", every=0.5)
    return version, answer


def test_every_process_has_its_own_identity_and_status_says_secure(platform):
    report = platform.json("status")
    assert report["platform"]["secure"] == "TLS, tokens, SASL_SSL"
    assert {row["service"]: row["health"] for row in report["services"]} == {
        "registry": "SERVING", "ingest": "SERVING", "feature": "SERVING", "serving": "SERVING",
        "monitor": "SERVING", "trainer": "RUNNING"}
    shared = platform.doc["env"]
    assert shared["DRIFTLINE_TLS_CLIENT_AUTH"] == "true" and shared["DRIFTLINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert shared["DRIFTLINE_S3_SECURE"] == "true" and "DRIFTLINE_KAFKA_SASL_PASSWORD" not in shared
    for name, entry in [*platform.doc["services"].items(), ("serving", platform.doc["serving"][MODEL])]:
        env = entry["env"]
        assert env["DRIFTLINE_KAFKA_SASL_USERNAME"] == name and env["DRIFTLINE_TLS_CERT_FILE"].endswith(f"/{name}.pem")
    assert platform.doc["services"]["trainer"]["env"]["DRIFTLINE_TOKEN_FILE"].endswith("/trainer.token")
    token = Path(platform.doc["secure"]["operator_token_file"])
    assert token.stat().st_mode & 0o777 == 0o600
    ledger = {entry["sub"]: entry["roles"] for entry in platform.json("tokens", "list")}
    assert ledger == {"serving": ["read"], "monitor": ["read"], "trainer": ["promote", "read", "train"],
                      "operator": ["admin"]}


def test_the_first_model_is_trained_promoted_by_the_trainer_and_served(platform, served):
    version, answer = served
    assert answer["model_version"] == version and answer["label"] in (0, 1)
    audit = platform.json("models", "audit", MODEL)
    moves = [r for r in audit if r["alias"] == "production" and r["moved"]]
    assert [(r["action"], r["version"], r["subject"]) for r in moves] == [("PROMOTE", version, "trainer")]


def test_a_client_with_a_certificate_but_no_token_is_unauthenticated(platform, served):
    refused = platform.registry_call(platform.tls())
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused
    operator = Path(platform.doc["secure"]["operator_token_file"]).read_text().strip()
    answered = platform.registry_call(platform.tls(), operator)
    assert [v.version for v in answered.model_versions] == [served[0]]


def test_a_client_without_a_certificate_or_in_plaintext_is_refused(platform):
    operator = Path(platform.doc["secure"]["operator_token_file"]).read_text().strip()
    for credentials in (platform.tls(with_certificate=False), None):
        refused = platform.registry_call(credentials, operator if credentials else None)
        assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAVAILABLE, refused


def test_down_leaves_no_process(platform):
    stopped = platform.down()
    assert stopped.returncode == 0, f"{stopped.stdout}\n{stopped.stderr}"
    assert {"supervisor", "registry", "trainer", "kafka", "s3"} <= set(json.loads(stopped.stdout)["stopped"])
    deadline = time.monotonic() + 10  # init reaps the orphaned supervisor when it gets to it
    while platform.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert platform.processes() == []
