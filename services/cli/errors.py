"""What went wrong, as the one line `driftline: …` the command prints before a non-zero exit.

>>> import grpc
>>> class Refused(grpc.RpcError):
...     def code(self): return grpc.StatusCode.UNAVAILABLE
...     def details(self): return "failed to connect to all addresses"
>>> str(from_rpc(Refused(), "registry", "127.0.0.1:50053"))
'registry at 127.0.0.1:50053 is unreachable (UNAVAILABLE)'
"""

from __future__ import annotations

import grpc

from services.common import streams


class CliError(Exception):
    """A failure to report in one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def json_object(text: str, path: object, what: str, line: int | None = None) -> dict:
    """The JSON object in `text` (line `line` of the file `path`, or all of it); a CliError that
    says `path:line:column` otherwise (services.common.streams.json_object's rule)."""
    try:
        return streams.json_object(text, str(path), what, line)
    except ValueError as exc:
        raise CliError(str(exc)) from None


class Unreachable(CliError):
    """No answer from a part of the platform (as opposed to an answer that says no)."""


def unreachable(service: str, address: str, why: str) -> Unreachable:
    return Unreachable(f"{service} at {address} is unreachable ({why})")


def from_rpc(exc: grpc.RpcError, service: str, address: str) -> CliError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = (exc.details() if callable(getattr(exc, "details", None)) else "") or ""
    if code is grpc.StatusCode.DEADLINE_EXCEEDED or (code is grpc.StatusCode.UNAVAILABLE and _transport(details)):
        return unreachable(service, address, code.name)
    if code is grpc.StatusCode.UNAVAILABLE:  # the server answered: it cannot do this now (no model yet, …)
        return CliError(f"{service}: {details} (UNAVAILABLE)")
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return CliError(f"{service}: {details or code.name.lower()}")
    name = code.name if code is not None else "error"
    return CliError(f"{service} at {address}: {name}: {details}".rstrip(": "))


def _transport(details: str) -> bool:
    """Whether an UNAVAILABLE came from the connection (no server) rather than from the server.

    >>> _transport("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused")
    True
    >>> _transport("no model loaded for 'm' yet")
    False
    """
    lowered = details.lower()
    return not details or any(s in lowered for s in ("failed to connect", "connection refused", "socket closed",
                                                     "connection reset", "dns resolution", "unavailable"))
