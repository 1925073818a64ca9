"""MinIO (S3-compatible object store), built from source through the Go module proxy.

MinIO publishes no semver tags, so `go install github.com/minio/minio@latest` resolves to a
pseudo-version of its main branch; we pin the one that resolved and built here (go1.26.8,
2026-11-26) so every machine builds the same server.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from services.common.certificates import write_private

from . import config, tls
from .process import ManagedProcess, Say, go_install, port_open

MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


def binary() -> Path:
    return config.cache_dir() / f"minio-{MINIO_VERSION}" / "minio"


def install(say: Say) -> Path:
    return go_install(MINIO_MODULE, MINIO_VERSION, binary(), say, what="s3 (MinIO)", took="several minutes on 2 cores")


def endpoint() -> str:
    """host:port, the form the minio client and DRIFTLINE_S3_ENDPOINT use (https in secure mode)."""
    return f"{config.HOST}:{config.s3_port()}"


def ca_file() -> str:
    """The PEM file that verifies the secure stack's S3 server (DRIFTLINE_S3_CA_FILE); "" when plain."""
    return str(config.tls_dir() / "ca.pem") if config.secure() else ""


def certs_dir() -> Path:
    return config.state_dir() / "minio" / "certs"


def is_ready(timeout: float = 2.0) -> bool:
    if not port_open(config.s3_port()):
        return False
    import ssl

    secure = config.secure()
    context = ssl.create_default_context(cafile=ca_file()) if secure else None
    url = f"{'https' if secure else 'http'}://{endpoint()}/minio/health/live"
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        if response.status != 200:
            return False
    # Live only means the HTTP server runs; a signed request proves the credentials work too.
    from services.common.objectstore import MinioObjectStore

    access, secret = config.s3_credentials()
    MinioObjectStore(endpoint(), access, secret, "", secure, ca_file()).client.list_buckets()
    return True


def _write_certificates() -> None:
    # MinIO serves https when its certs dir holds public.crt and private.key.
    cert, key = tls.ensure_server_cert(config.tls_dir(), "s3", config.tls_dir())
    certs_dir().mkdir(parents=True, exist_ok=True)
    (certs_dir() / "public.crt").write_bytes(cert.read_bytes())
    write_private(certs_dir() / "private.key", key.read_bytes())


def component() -> ManagedProcess:
    state = config.state_dir()
    port = config.s3_port()
    data_dir = state / "minio" / "data"
    access, secret = config.s3_credentials()

    def setup(say: Say) -> None:
        install(say)
        data_dir.mkdir(parents=True, exist_ok=True)
        if config.secure():
            _write_certificates()
        else:  # a stack switched back to plain http must not keep serving https
            for name in ("public.crt", "private.key"):
                (certs_dir() / name).unlink(missing_ok=True)

    return ManagedProcess(
        name="s3",
        command=[str(binary()), "server", str(data_dir), "--quiet",
                 "--address", f"{config.HOST}:{port}",
                 "--console-address", f"{config.HOST}:{port + 1}",
                 # Otherwise MinIO creates ~/.minio/certs outside the state dir.
                 "--certs-dir", str(certs_dir())],
        address=endpoint(),
        ports=[port, port + 1],
        marker=str(data_dir),
        home=data_dir.parent,
        ready=is_ready,
        setup=setup,
        env={
            "MINIO_ROOT_USER": access,
            "MINIO_ROOT_PASSWORD": secret,
            # No web console and no update checks: faster start, and no outbound calls.
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        },
        start_timeout=60.0,
        stop_timeout=10.0,
    )
