"""The one place a gRPC client channel is made, sync or asyncio, for every caller in the code base
(services, the command line, the benchmarks).

A channel is TLS when `tls_ca_file` is set (the server is verified against that CA, and the
client presents `tls_cert_file`/`tls_key_file` when it has them, for mTLS), plaintext otherwise,
as the loopback developer loop has always been. Without `settings` the process's own
`DRIFTLINE_*` environment is read, so a probe or a command run beside a service dials it the
way the service is configured.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from . import tls
from .settings import CommonSettings

Options = Iterable[tuple[str, object]]


def _credentials(address: str, settings: CommonSettings | None
                 ) -> tuple[CommonSettings, grpc.ChannelCredentials | None]:
    settings = settings if settings is not None else CommonSettings()
    return settings, tls.channel_credentials(settings)


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
