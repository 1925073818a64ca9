"""TLS and mTLS on the gRPC servers and clients, with certificates made by `driftline certs init`
run as a user runs it: real gRPC over loopback, a TLS server refusing plaintext, an mTLS server
refusing a client without a certificate or with one from another CA, the loopback rule, and a
real `python -m services.registry` probed over mTLS by `python -m services.common.healthcheck`."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from driftline.v1 import features_pb2, features_pb2_grpc, registry_pb2
from services.common import channels
from services.common.grpc_server import GrpcServer, Service, service_name
from services.common.registry_client import RegistryClient
from services.common.settings import CommonSettings
from services.common.telemetry import GRPC_REQUESTS
from services.common.tls import InsecureBind
from support import ROOT, ServiceRun, free_port, unique_bucket, unique_prefix, wait_for

FEATURE_STORE = service_name(features_pb2.DESCRIPTOR, "FeatureStore")
SERVICES = ("registry", "ingest", "feature", "serving", "monitor", "trainer", "cli")
# Settings read from a test's own arguments only, never from the environment of the run.
Settings = lambda **values: CommonSettings.model_construct(**values)  # noqa: E731


def certs_init(folder: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "services.cli", "certs", "init", "--dir", str(folder), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    certs_init(folder := tmp_path_factory.mktemp("certs"))
    return folder


@pytest.fixture(scope="module")
def token_key(tmp_path_factory) -> Path:
    """A token issuer's public key: with it a server authenticates, so the only thing a bind
    beyond loopback may lack here is TLS (authentication has the same rule, tests/security's auth tests)."""
    path = tmp_path_factory.mktemp("auth") / "public.pem"
    path.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Path:
    """A second development CA, made the same way: its certificates must not pass for the first's."""
    certs_init(folder := tmp_path_factory.mktemp("other-certs"))
    return folder


def server_tls(pki: Path, client_auth: bool = False) -> CommonSettings:
    return Settings(tls_cert_file=str(pki / "registry.pem"), tls_key_file=str(pki / "registry.key"),
                    tls_ca_file=str(pki / "ca.pem"), tls_client_auth=client_auth)


def client_tls(ca: Path, identity: Path | None = None) -> CommonSettings:
    """A client that trusts `ca` (a folder's ca.pem) and presents `identity`'s cli certificate."""
    values = {"tls_ca_file": str(ca / "ca.pem")}
    if identity is not None:
        values |= {"tls_cert_file": str(identity / "cli.pem"), "tls_key_file": str(identity / "cli.key")}
    return Settings(**values)


class CountingFeatureStore(features_pb2_grpc.FeatureStoreServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def GetOnlineFeatures(self, request, context):
        self.calls += 1
        return features_pb2.GetOnlineFeaturesResponse(
            rows=[features_pb2.OnlineFeatures(entity_id=e) for e in request.entity_ids])


class TlsServer:
    """A GrpcServer (one counting FeatureStore) on its own event loop, as a service runs it."""

    count = 0

    def __init__(self, settings: CommonSettings, host: str = "127.0.0.1") -> None:
        TlsServer.count += 1
        self.name = f"tls-test-{TlsServer.count}"
        self.servicer = CountingFeatureStore()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = GrpcServer(self.name, [Service(
                self.servicer, features_pb2_grpc.add_FeatureStoreServicer_to_server, FEATURE_STORE)],
                host=host, settings=settings)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.address = f"127.0.0.1:{self.server.port}"  # loopback is dialled whatever the bind

    def counted(self) -> float:
        """Calls the server's own metrics saw end, whatever their status."""
        return sum(sample.value for metric in GRPC_REQUESTS.collect() for sample in metric.samples
                   if sample.name.endswith("_total") and sample.labels.get("service") == self.name)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def serve():
    started: list[TlsServer] = []

    def start(settings: CommonSettings, host: str = "127.0.0.1") -> TlsServer:
        started.append(TlsServer(settings, host))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def ask(address: str, settings: CommonSettings | None, plaintext: bool = False):
    """One GetOnlineFeatures call over a fresh channel: the answer, or the grpc.RpcError."""
    open_channel = grpc.insecure_channel(address) if plaintext else channels.channel(address, settings)
    with open_channel as channel:
        try:
            return features_pb2_grpc.FeatureStoreStub(channel).GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entity_ids=["e1"]), timeout=5)
        except grpc.RpcError as exc:
            return exc


# -- driftline certs init ----------------------------------------------------------------------------


def test_certs_init_writes_a_ca_and_a_certificate_per_service_signed_by_it(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for name in SERVICES:
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        names = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
        assert names == {"localhost", "127.0.0.1", "::1", name}
    for key in [pki / "ca.key", *(pki / f"{name}.key" for name in SERVICES)]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_certs_init_keeps_what_is_there_adds_hosts_and_makes_all_anew_with_force(tmp_path):
    certs_init(tmp_path)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    serving_before = (tmp_path / "serving.pem").read_bytes()
    again = certs_init(tmp_path, "--json")
    assert again.stdout.count('"kept"') == 1 + len(SERVICES) and '"written"' not in again.stdout
    assert (tmp_path / "serving.pem").read_bytes() == serving_before

    certs_init(tmp_path, "--hosts", "10.1.2.3,serving.driftline.svc")
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    cert = x509.load_pem_x509_certificate((tmp_path / "serving.pem").read_bytes())
    names = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    assert {"10.1.2.3", "serving.driftline.svc", "serving"} <= names

    forced = certs_init(tmp_path, "--force", "--json")
    assert forced.stdout.count('"written"') == 1 + len(SERVICES)
    assert (tmp_path / "ca.pem").read_bytes() != ca_before


def test_certs_init_refuses_to_replace_a_broken_ca_without_force(tmp_path):
    certs_init(tmp_path)
    (tmp_path / "ca.key").write_text("not a key")
    done = subprocess.run([sys.executable, "-m", "services.cli", "certs", "init", "--dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--force" in done.stderr and "ca.key" in done.stderr


# -- TLS and mTLS over loopback ----------------------------------------------------------------------


def test_a_tls_server_answers_a_client_that_trusts_its_ca(pki, serve):
    server = serve(server_tls(pki))
    assert server.server.tls
    answer = ask(server.address, client_tls(pki))
    assert [row.entity_id for row in answer.rows] == ["e1"]
    assert server.servicer.calls == 1


def test_a_plaintext_client_is_refused_by_a_tls_server_which_handles_nothing(pki, serve):
    server = serve(server_tls(pki))
    refused = ask(server.address, None, plaintext=True)
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.calls == 0 and server.counted() == 0


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(pki, other_pki, serve):
    server = serve(server_tls(pki))
    refused = ask(server.address, client_tls(other_pki))
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.calls == 0 and server.counted() == 0


def test_an_mtls_server_refuses_a_client_without_a_certificate_or_with_another_cas(pki, other_pki, serve):
    server = serve(server_tls(pki, client_auth=True))
    for client in (client_tls(pki), client_tls(pki, identity=other_pki)):
        refused = ask(server.address, client)
        assert isinstance(refused, grpc.RpcError), client
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.calls == 0 and server.counted() == 0

    answer = ask(server.address, client_tls(pki, identity=pki))
    assert [row.entity_id for row in answer.rows] == ["e1"]
    assert server.servicer.calls == 1 and server.counted() == 1


def test_the_asyncio_channel_speaks_mtls_too(pki, serve):
    server = serve(server_tls(pki, client_auth=True))

    async def call():
        async with channels.aio_channel(server.address, client_tls(pki, identity=pki)) as channel:
            return await features_pb2_grpc.FeatureStoreStub(channel).GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entity_ids=["a", "b"]), timeout=5)

    assert [row.entity_id for row in asyncio.run(call()).rows] == ["a", "b"]


# -- the loopback rule -------------------------------------------------------------------------------


def _bind(host: str, settings: CommonSettings) -> GrpcServer:
    async def make() -> GrpcServer:
        server = GrpcServer("bind-test", [], host=host, settings=settings)
        await server.server.stop(0)
        return server

    return asyncio.run(make())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_plaintext_server_beyond_loopback_refuses_to_start_and_says_why(host, token_key):
    with pytest.raises(InsecureBind) as refused:
        _bind(host, Settings(auth_public_key_file=str(token_key)))
    message = str(refused.value)
    assert f"refusing to bind {host}:0 without TLS" in message
    for setting in ("DRIFTLINE_TLS_CERT_FILE", "DRIFTLINE_TLS_KEY_FILE", "DRIFTLINE_ALLOW_INSECURE"):
        assert setting in message


def test_allow_insecure_lets_plaintext_bind_beyond_loopback(serve):
    server = serve(Settings(allow_insecure=True), host="0.0.0.0")
    assert not server.server.tls
    assert [row.entity_id for row in ask(server.address, None, plaintext=True).rows] == ["e1"]


def test_tls_binds_beyond_loopback_without_allow_insecure(pki, token_key, serve):
    server = serve(server_tls(pki).model_copy(update={"auth_public_key_file": str(token_key)}), host="0.0.0.0")
    assert server.server.tls
    with channels.channel(server.address, client_tls(pki)) as channel:  # health stays open to probes
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_loopback_plaintext_is_still_the_default_developer_loop(serve):
    server = serve(Settings())
    assert not server.server.tls
    assert [row.entity_id for row in ask(server.address, Settings()).rows] == ["e1"]


# -- settings that cannot work fail when they are read ----------------------------------------------


@pytest.mark.parametrize("values, says", [
    ({"tls_cert_file": "{pki}/registry.pem"}, "DRIFTLINE_TLS_KEY_FILE is not"),
    ({"tls_key_file": "{pki}/registry.key"}, "DRIFTLINE_TLS_CERT_FILE is not"),
    ({"tls_client_auth": "true", "tls_cert_file": "{pki}/registry.pem", "tls_key_file": "{pki}/registry.key"},
     "DRIFTLINE_TLS_CLIENT_AUTH needs DRIFTLINE_TLS_CA_FILE"),
    ({"tls_ca_file": "{pki}/no-such.pem"}, "DRIFTLINE_TLS_CA_FILE={pki}/no-such.pem: no such file"),
])
def test_tls_settings_that_cannot_work_fail_at_start(pki, monkeypatch, values, says):
    for field, value in values.items():
        monkeypatch.setenv(f"DRIFTLINE_{field.upper()}", value.format(pki=pki))
    with pytest.raises(ValidationError) as failed:
        CommonSettings()
    assert says.format(pki=pki) in str(failed.value)


# -- a real service process ---------------------------------------------------------------------------


def tls_env(pki: Path, identity: str) -> dict[str, str]:
    return {"DRIFTLINE_TLS_CERT_FILE": str(pki / f"{identity}.pem"),
            "DRIFTLINE_TLS_KEY_FILE": str(pki / f"{identity}.key"),
            "DRIFTLINE_TLS_CA_FILE": str(pki / "ca.pem")}


def probe(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_TLS_")}
    return subprocess.run([sys.executable, "-m", "services.common.healthcheck", address, "driftline.v1.Registry"],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_a_registry_process_serves_mtls_and_the_healthcheck_probes_it(pki, other_pki, kafka_bootstrap, s3, tmp_path):
    port = free_port()
    env = {"DRIFTLINE_TOPIC_PREFIX": unique_prefix(), "DRIFTLINE_BUCKET": unique_bucket(),
           "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db"), "DRIFTLINE_GRPC_PORT": str(port),
           "DRIFTLINE_TLS_CLIENT_AUTH": "true", **tls_env(pki, "registry")}
    address = f"127.0.0.1:{port}"
    with ServiceRun("registry", env, tmp_path / "registry.log") as run:
        def healthy() -> bool:
            run.assert_running()
            return probe(address, tls_env(pki, "cli")).returncode == 0

        wait_for(healthy, 60, "the registry to answer the health probe over mTLS", every=0.3)
        plaintext = probe(address, {})
        assert plaintext.returncode == 1 and "unavailable (the server closed the connection" in plaintext.stderr
        no_certificate = probe(address, {"DRIFTLINE_TLS_CA_FILE": str(pki / "ca.pem")})
        assert no_certificate.returncode == 1 and "unavailable (the server closed" in no_certificate.stderr
        other_ca = probe(address, tls_env(other_pki, "cli"))
        assert other_ca.returncode == 1
        assert "unavailable (TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in other_ca.stderr

        client = RegistryClient(address, settings=client_tls(pki, identity=pki))
        try:
            assert client.alias("no-such-model", "production") is None  # NOT_FOUND: the registry answered
            with pytest.raises(grpc.RpcError) as unknown:
                client.stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(name="no-such-model"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in unknown.value.details()
        finally:
            client.close()


def test_a_registry_process_asked_to_bind_beyond_loopback_in_plaintext_exits_saying_why(
        token_key, kafka_bootstrap, s3, tmp_path):
    env = {"DRIFTLINE_TOPIC_PREFIX": unique_prefix(), "DRIFTLINE_BUCKET": unique_bucket(),
           "DRIFTLINE_REGISTRY_DB": str(tmp_path / "registry.db"), "DRIFTLINE_GRPC_PORT": str(free_port()),
           "DRIFTLINE_GRPC_HOST": "0.0.0.0", "DRIFTLINE_AUTH_PUBLIC_KEY_FILE": str(token_key)}
    run = ServiceRun("registry", env, tmp_path / "registry.log")
    try:
        code = run.process.wait(60)
    finally:
        run.stop()
    log = run.log_text()
    assert code == 2, log
    assert "refusing to start: refusing to bind 0.0.0.0:" in log and "without TLS" in log
    assert "DRIFTLINE_TLS_CERT_FILE" in log
    assert "Traceback" not in log
