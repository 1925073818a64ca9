"""TLS for gRPC, from the `tls_*` settings, and the rule that keeps plaintext on loopback.

A server with `tls_cert_file` and `tls_key_file` binds TLS, and with `tls_client_auth` it also
requires a client certificate signed by `tls_ca_file` (mTLS). A client verifies servers against
`tls_ca_file` whenever it is set and presents its own certificate and key when it has them
(`services/common/channels.py` makes every channel). Plaintext stays the developer loop's
default, but only on a loopback address: a server asked to bind anything else without TLS
refuses to start and says which settings fix that, unless `allow_insecure` says plaintext is
meant. `driftline certs init` writes a development CA and a certificate per service.

>>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("127.0.0.7")
(True, True, True, True)
>>> is_loopback("0.0.0.0"), is_loopback(""), is_loopback("[::]"), is_loopback("registry")
(False, False, False, False)
>>> from types import SimpleNamespace as S
>>> settings_problem(S(tls_cert_file="a.pem", tls_key_file="", tls_ca_file="", tls_client_auth=False))
'DRIFTLINE_TLS_CERT_FILE is set but DRIFTLINE_TLS_KEY_FILE is not: a certificate needs its key'
>>> settings_problem(S(tls_cert_file="", tls_key_file="", tls_ca_file="", tls_client_auth=True))
'DRIFTLINE_TLS_CLIENT_AUTH needs DRIFTLINE_TLS_CA_FILE: the CA that signs the client certificates'
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from .settings import CommonSettings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
FILE_SETTINGS = {"tls_cert_file": "DRIFTLINE_TLS_CERT_FILE", "tls_key_file": "DRIFTLINE_TLS_KEY_FILE",
                 "tls_ca_file": "DRIFTLINE_TLS_CA_FILE"}


class InsecureBind(RuntimeError):
    """A server would have listened beyond loopback without TLS or authentication."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind host or the host of an address) is this machine's loopback only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_problem(settings) -> str | None:
    """Why the TLS settings cannot work (one sentence naming the settings), or None.

    Checked when the settings are read, so a process fails at start, not at its first call."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if bool(cert) != bool(key):
        have, lack = ("CERT", "KEY") if cert else ("KEY", "CERT")
        return (f"DRIFTLINE_TLS_{have}_FILE is set but DRIFTLINE_TLS_{lack}_FILE is not: "
                "a certificate needs its key")
    if settings.tls_client_auth and not settings.tls_ca_file:
        return "DRIFTLINE_TLS_CLIENT_AUTH needs DRIFTLINE_TLS_CA_FILE: the CA that signs the client certificates"
    for field, env in FILE_SETTINGS.items():
        path = getattr(settings, field)
        if path and not os.path.isfile(path):
            return f"{env}={path}: no such file"
        if path and not os.access(path, os.R_OK):
            return f"{env}={path}: not readable by this process"
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None when it has no certificate (plaintext)."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    pair = (_read(settings.tls_key_file), _read(settings.tls_cert_file))
    if not settings.tls_client_auth:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=_read(settings.tls_ca_file),
                                       require_client_auth=True)


def channel_credentials(settings: CommonSettings) -> grpc.ChannelCredentials | None:
    """A client's TLS credentials (the CA, and its own certificate when it has one), or None
    when no CA is configured (plaintext)."""
    if not settings.tls_ca_file:
        return None
    if settings.tls_cert_file and settings.tls_key_file:
        return grpc.ssl_channel_credentials(root_certificates=_read(settings.tls_ca_file),
                                            private_key=_read(settings.tls_key_file),
                                            certificate_chain=_read(settings.tls_cert_file))
    return grpc.ssl_channel_credentials(root_certificates=_read(settings.tls_ca_file))


def unavailable_reason(details: str) -> str:
    """Why a gRPC peer was UNAVAILABLE, from the call's details: a TLS failure said as such, since
    gRPC reports it like a server that is not there.

    >>> unavailable_reason("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: "
    ...     "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    ...     "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK")
    'TLS handshake failed: CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate'
    >>> unavailable_reason("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed")
    'the server closed the connection: a TLS server dialled without DRIFTLINE_TLS_CA_FILE, or an mTLS server refusing this client certificate?'
    >>> unavailable_reason("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused")
    'no gRPC server answers'
    """
    if "handshake failed" in details.lower():
        reason = details.rsplit("OPENSSL_internal:", 1)[-1].removesuffix(": OK")
        return f"TLS handshake failed: {reason}"
    if details.endswith("Socket closed"):
        return ("the server closed the connection: a TLS server dialled without DRIFTLINE_TLS_CA_FILE, "
                "or an mTLS server refusing this client certificate?")
    return "no gRPC server answers"


def refuse_beyond_loopback(bind: str, settings: CommonSettings, *, lacking: str, fix: str,
                           host_setting: str = "DRIFTLINE_GRPC_HOST") -> None:
    """Raises InsecureBind when `bind` (host:port) is not loopback and the server is `lacking`
    something (e.g. "without TLS"), unless `allow_insecure`; `fix` names the settings that add it.
    The same rule serves TLS and authentication, so both refusals read alike."""
    host = bind.rpartition(":")[0] if ":" in bind else bind
    if is_loopback(host):
        return
    if settings.allow_insecure:
        log.warning("serving beyond loopback %s, as DRIFTLINE_ALLOW_INSECURE allows", lacking,
                    extra={"bind": bind})
        return
    raise InsecureBind(
        f"refusing to bind {bind} {lacking}: only a loopback address ({', '.join(LOOPBACK_NAMES)}) "
        f"is served {lacking}. {fix}; or bind {host_setting}=127.0.0.1; or set "
        "DRIFTLINE_ALLOW_INSECURE=true to serve it this way knowingly.")


def refuse_plaintext_beyond_loopback(bind: str, settings: CommonSettings) -> None:
    """The TLS case of `refuse_beyond_loopback`."""
    refuse_beyond_loopback(bind, settings, lacking="without TLS", fix=(
        "Set DRIFTLINE_TLS_CERT_FILE and DRIFTLINE_TLS_KEY_FILE (`driftline certs init` writes a "
        "development CA and a certificate per service)"))
