"""A container health probe: asks a gRPC server for its grpc.health.v1 status.

    python -m services.common.healthcheck HOST:PORT [SERVICE] [--timeout SECONDS]

exits 0 only when the server at HOST:PORT answers SERVING for SERVICE (default "": the server as
a whole; e.g. `driftline.v1.Predictor` is SERVING only once serving has a model) within the
timeout (default 3 s), and otherwise exits 1 with one line on stderr that says why. It is the
`healthcheck` of every service in docker-compose.yml, so the image needs no grpc_health_probe
binary. A process without a gRPC server (the trainer) is probed on its metrics endpoint instead:
a target `http://HOST:PORT/PATH` passes on any 2xx answer.

>>> check("127.0.0.1:1", timeout=1)  # nothing listens on port 1
'127.0.0.1:1: unavailable (no gRPC server answers)'
>>> check("http://127.0.0.1:1/metrics", timeout=1).startswith("http://127.0.0.1:1/metrics: ")
True
>>> check("no-port-here")
'no-port-here: not HOST:PORT or http://HOST:PORT/PATH'
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 3.0


def check(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when `target` is healthy; otherwise the one-line reason it is not."""
    if target.startswith(("http://", "https://")):
        return _check_http(target, timeout)
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"{target}: not HOST:PORT or http://HOST:PORT/PATH"
    return _check_grpc(target, service, timeout)


def _check_grpc(target: str, service: str, timeout: float) -> str | None:
    import grpc  # here, not at the top: the HTTP probe should not pay for importing grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .channels import channel
    from .tls import unavailable_reason

    what = f"{target} {service!r}" if service else target
    with channel(target) as open_channel:  # TLS when this process's DRIFTLINE_TLS_* say so
        try:
            answer = health_pb2_grpc.HealthStub(open_channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code is grpc.StatusCode.UNAVAILABLE:
                return f"{what}: unavailable ({unavailable_reason(exc.details() or '')})"
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"{what}: no answer within {timeout:g} s"
            if code is grpc.StatusCode.NOT_FOUND:
                return f"{what}: the server has no health status for this service"
            if code is grpc.StatusCode.UNIMPLEMENTED:
                return f"{what}: the server has no grpc.health.v1 service"
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            return f"{what}: {code.name if code else 'error'} ({details})"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{what}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
    return None


def _check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, malformed
        reason = getattr(exc, "reason", exc)
        return f"{url}: {reason}".replace("\n", " ")
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 only when a gRPC server reports SERVING (or an http:// URL answers 2xx).")
    parser.add_argument("target", help="HOST:PORT of a gRPC server, or http://HOST:PORT/PATH")
    parser.add_argument("service", nargs="?", default="",
                        help='the gRPC service to ask about (default "": the whole server)')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default 3)")
    args = parser.parse_args(argv)
    problem = check(args.target, args.service, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
