"""S3 over TLS from a private CA, against a MinIO server of this module (its own port, data,
certificates and generated credentials; the shared one on :9000 is never touched): the object
store verifies the server with `s3_ca_file`, and a client that does not trust that CA, or that
speaks plain http, gets nothing."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import urllib.request
from typing import Iterator

import pytest
import urllib3
from minio.error import InvalidResponseError

from services.common.objectstore import MinioObjectStore, ObjectStores
from services.common.settings import CommonSettings
from services.devstack import s3 as devstack_s3, tls
from private_servers import stop
from support import free_port, unique_bucket, wait_for


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("tls-s3")
    cert, key = tls.ensure_server_cert(home / "tls", "s3", home / "tls")
    certs = home / "certs"
    certs.mkdir()
    (certs / "public.crt").write_bytes(cert.read_bytes())
    (certs / "private.key").write_bytes(key.read_bytes())
    port = free_port()
    access, secret = f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    devstack_s3.install(lambda message: None)
    with open(home / "minio.log", "wb") as log:
        process = subprocess.Popen(
            [str(devstack_s3.binary()), "server", str(home / "data"), "--quiet", "--address", f"127.0.0.1:{port}",
             "--console-address", f"127.0.0.1:{free_port()}", "--certs-dir", str(certs)],
            env={"MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret, "MINIO_BROWSER": "off",
                 "MINIO_UPDATE": "off", "HOME": str(home)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))

    def live() -> bool:
        assert process.poll() is None, (home / "minio.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/minio/health/live", timeout=2,
                                        context=context) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(live, 60, "the TLS MinIO", every=0.25)
        yield {"endpoint": f"127.0.0.1:{port}", "access": access, "secret": secret,
               "ca_file": str(home / "tls" / "ca.pem")}
    finally:
        stop(process, 15)


def test_the_object_store_verifies_the_server_with_the_private_ca(tls_s3):
    settings = CommonSettings(s3_endpoint=tls_s3["endpoint"], s3_access_key=tls_s3["access"],
                              s3_secret_key=tls_s3["secret"], s3_secure=True, s3_ca_file=tls_s3["ca_file"],
                              bucket=unique_bucket())
    store = MinioObjectStore.from_settings(settings)
    ref = store.put_bytes("models/m/1/model.onnx", b"weights")
    assert store.get_bytes("models/m/1/model.onnx", ref.sha256) == b"weights"
    assert ObjectStores.from_settings(settings).read_bytes(ref.uri, ref.sha256) == b"weights"


def test_a_client_without_the_ca_is_refused(tls_s3):
    # The system's CAs do not know the private CA: the handshake fails, no request is answered.
    store = MinioObjectStore(tls_s3["endpoint"], tls_s3["access"], tls_s3["secret"], unique_bucket(), secure=True)
    store.client._http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", retries=urllib3.Retry(total=0))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        store.ensure_bucket()


def test_a_plain_http_client_gets_no_answer(tls_s3):
    store = MinioObjectStore(tls_s3["endpoint"], tls_s3["access"], tls_s3["secret"], unique_bucket(), secure=False)
    store.client._http = urllib3.PoolManager(retries=urllib3.Retry(total=0))
    with pytest.raises(InvalidResponseError, match="Client sent an HTTP request to an HTTPS server"):
        store.ensure_bucket()


def test_wrong_credentials_are_refused_over_tls(tls_s3):
    from minio.error import S3Error

    store = MinioObjectStore(tls_s3["endpoint"], tls_s3["access"], "not-the-secret", unique_bucket(),
                             secure=True, ca_file=tls_s3["ca_file"])
    with pytest.raises(S3Error, match="SignatureDoesNotMatch|InvalidAccessKeyId"):
        store.ensure_bucket()
