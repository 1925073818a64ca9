"""The one place a gRPC client channel is made, sync or asyncio, for every caller in the code base
(services, the command line, the benchmarks).

A channel is TLS when `tls_ca_file` is set (the server is verified against that CA, and the
client presents `tls_cert_file`/`tls_key_file` when it has them, for mTLS), plaintext otherwise,
as the loopback developer loop has always been. The process's bearer token (`token`, else
`token_file`; services/common/auth.py) rides on every call as `authorization: Bearer …`; gRPC
sends call credentials only over a protected channel, so on plaintext loopback the channel is a
local one (same bytes on the wire), and a token never goes in plaintext beyond loopback. Without
`settings` the process's own
`DRIFTLINE_*` environment is read, so a probe or a command run beside a service dials it the
way the service is configured.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from . import auth, tls
from .settings import CommonSettings

Options = Iterable[tuple[str, object]]


def _credentials(address: str, settings: CommonSettings | None
                 ) -> tuple[CommonSettings, grpc.ChannelCredentials | None]:
    settings = settings if settings is not None else CommonSettings()
    credentials = tls.channel_credentials(settings)
    token = auth.client_token(settings)
    if token:
        credentials = auth.with_token(credentials, token, address)
    return settings, credentials


def channel(address: str, settings: CommonSettings | None = None, *, options: Options = ()) -> grpc.Channel:
    """A blocking channel to `address` (host:port)."""
    _, credentials = _credentials(address, settings)
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))


def aio_channel(address: str, settings: CommonSettings | None = None, *, options: Options = ()) -> grpc.aio.Channel:
    """An asyncio channel to `address` (host:port)."""
    _, credentials = _credentials(address, settings)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, credentials, options=list(options))
