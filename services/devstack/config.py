"""Where the local stack keeps things, and which ports it uses (all from DRIFTLINE_* env)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # loopback only: a dev broker with no auth must not be reachable from outside

DEFAULT_S3_ACCESS_KEY = "driftline"
DEFAULT_S3_SECRET_KEY = "driftline-secret"


def state_dir() -> Path:
    """Logs, pid files and data; removing it resets the stack. The secure stack's default is a
    folder of its own, so it and the plaintext stack never take each other's pid files for theirs."""
    explicit = os.environ.get("DRIFTLINE_STATE_DIR")
    if explicit:
        return Path(explicit).resolve()
    return (REPO_ROOT / ".devstack" / ("secure" if secure() else "")).resolve()


def cache_dir() -> Path:
    """Downloads and builds, shared by every checkout so only the first run pays."""
    default = Path.home() / ".cache" / "driftline"
    return Path(os.environ.get("DRIFTLINE_CACHE_DIR") or default).expanduser().resolve()


def _port(var: str, default: int) -> int:
    return int(os.environ.get(var) or default)


# The secure stack's defaults sit beside the plaintext one's (each takes the next port too), so
# both can run at once.
def kafka_port() -> int:
    return _port("DRIFTLINE_DEVSTACK_KAFKA_PORT", 9094 if secure() else 9092)


def s3_port() -> int:
    return _port("DRIFTLINE_DEVSTACK_S3_PORT", 9002 if secure() else 9000)


def s3_credentials() -> tuple[str, str]:
    """The S3 server's account: DRIFTLINE_S3_ACCESS_KEY / _SECRET_KEY, else the plaintext stack's
    development default, else (secure stack) a secret generated once and kept 0600."""
    access, secret = os.environ.get("DRIFTLINE_S3_ACCESS_KEY"), os.environ.get("DRIFTLINE_S3_SECRET_KEY")
    if not secure():
        return access or DEFAULT_S3_ACCESS_KEY, secret or DEFAULT_S3_SECRET_KEY
    from .tls import secret_file

    return access or "driftline-root", secret or secret_file(tls_dir() / "s3-secrets.json", ("root",))["root"]


def tls_dir() -> Path:
    """The secure stack's CA and server certificates (services/devstack/tls.py)."""
    return state_dir() / "tls"


def secure() -> bool:
    """The secure stack: SASL_SSL and ACLs on Kafka, TLS on S3 (DRIFTLINE_DEVSTACK_SECURE)."""
    return (os.environ.get("DRIFTLINE_DEVSTACK_SECURE") or "").lower() in ("1", "true", "yes")
