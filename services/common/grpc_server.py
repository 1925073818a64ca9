"""The asyncio gRPC server every service runs: health checking and server
reflection always on (so grpcurl and Kubernetes probes work), every call
logged and counted (except methods a servicer counts itself, see
`Service.own_metrics`), and a graceful stop on SIGTERM/SIGINT that reports
NOT_SERVING first and lets in-flight calls finish."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .telemetry import GRPC_LATENCY, GRPC_REQUESTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """A servicer with the generated function that registers it and its full name."""

    servicer: object
    add_to_server: Callable[[object, grpc.aio.Server], None]
    full_name: str  # e.g. driftline_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
    # Methods (short names, e.g. "Predict") whose servicer records its own request metrics: the
    # common interceptor leaves them alone, so they are neither counted twice nor pay for it twice.
    own_metrics: tuple[str, ...] = ()

    @property
    def own_metric_paths(self) -> tuple[str, ...]:
        return tuple(f"/{self.full_name}/{method}" for method in self.own_metrics)


class CallMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary call by final status code and times it.

    `exclude`: methods not to count, as full paths ("/pkg.Service/Method") or, ending in "/",
    whole services ("/pkg.Service/"); their handlers pass through untouched."""

    def __init__(self, service: str, exclude: Iterable[str] = ()) -> None:
        self.service = service
        exclude = tuple(exclude)
        self._excluded = frozenset(e for e in exclude if not e.endswith("/"))
        self._excluded_prefixes = tuple(e for e in exclude if e.endswith("/"))
        # Wrapped handlers per method, reused while the server hands out the same handler.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def excluded(self, method: str) -> bool:
        return method in self._excluded or (bool(self._excluded_prefixes)
                                            and method.startswith(self._excluded_prefixes))

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming calls are counted by their servicers
        path = details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = handler if self.excluded(path) else self._observe(handler, path.rsplit("/", 1)[-1])
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _observe(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        latency = GRPC_LATENCY.labels(self.service, method)
        counters: dict[grpc.StatusCode, object] = {}

        async def observed(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                code = context.code() or code
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode(code) if code in grpc.StatusCode else grpc.StatusCode.UNKNOWN
                counter = counters.get(code)
                if counter is None:
                    counter = counters[code] = GRPC_REQUESTS.labels(self.service, method, code.name)
                counter.inc()
                latency.observe(time.perf_counter() - start)
                if code is not grpc.StatusCode.OK:
                    log.info("call failed", extra={"method": method, "code": code.name,
                                                   "details": context.details()})

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


class GrpcServer:
    """One service's gRPC server on 127.0.0.1 (or `host`)."""

    def __init__(self, name: str, services: Iterable[Service], port: int = 0,
                 host: str = "127.0.0.1", options: Iterable[tuple[str, object]] = ()) -> None:
        self.name = name
        self.services = list(services)
        exclude = [path for svc in self.services for path in svc.own_metric_paths]
        self.server = grpc.aio.server(interceptors=[CallMetricsInterceptor(name, exclude)],
                                      options=list(options))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for svc in self.services:
            svc.add_to_server(svc.servicer, self.server)
        names = [svc.full_name for svc in self.services]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.address = f"{host}:{self.port}"
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self.server.start()
        for svc in self.services:
            await self.health.set(svc.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server started", extra={"address": self.address,
                                                "services": [s.full_name for s in self.services]})

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, refuses new calls and waits up to `grace` for in-flight ones."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self._stopped.set()
        log.info("gRPC server stopped", extra={"address": self.address})

    async def wait(self) -> None:
        await self._stopped.wait()


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """Calls `stop` once on SIGTERM or SIGINT (the running loop must be the service's)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def service_name(file_descriptor, service: str) -> str:
    """The full name of a service declared in a generated `_pb2` module's file."""
    return file_descriptor.services_by_name[service].full_name
