"""MinIO (S3-compatible object store), built from source through the Go module proxy.

MinIO publishes no semver tags, so `go install github.com/minio/minio@latest` resolves to a
pseudo-version of its main branch; we pin the one that resolved and built here (go1.26.8,
2026-11-26) so every machine builds the same server.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from . import config
from .process import ManagedProcess, Say, go_install, port_open

MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


def binary() -> Path:
    return config.cache_dir() / f"minio-{MINIO_VERSION}" / "minio"


def install(say: Say) -> Path:
    return go_install(MINIO_MODULE, MINIO_VERSION, binary(), say, what="s3 (MinIO)", took="several minutes on 2 cores")


def endpoint() -> str:
    """host:port, the form the minio client and DRIFTLINE_S3_ENDPOINT use (plain http)."""
    return f"{config.HOST}:{config.s3_port()}"


def is_ready(timeout: float = 2.0) -> bool:
    if not port_open(config.s3_port()):
        return False
    url = f"http://{endpoint()}/minio/health/live"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        if response.status != 200:
            return False
    # Live only means the HTTP server runs; a signed request proves the credentials work too.
    from minio import Minio

    access, secret = config.s3_credentials()
    Minio(endpoint(), access_key=access, secret_key=secret, secure=False).list_buckets()
    return True


def component() -> ManagedProcess:
    state = config.state_dir()
    port = config.s3_port()
    data_dir = state / "minio" / "data"
    access, secret = config.s3_credentials()

    def setup(say: Say) -> None:
        install(say)
        data_dir.mkdir(parents=True, exist_ok=True)

    return ManagedProcess(
        name="s3",
        command=[str(binary()), "server", str(data_dir), "--quiet",
                 "--address", f"{config.HOST}:{port}",
                 "--console-address", f"{config.HOST}:{port + 1}",
                 # Otherwise MinIO creates ~/.minio/certs outside the state dir.
                 "--certs-dir", str(state / "minio" / "certs")],
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
