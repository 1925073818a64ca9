"""The asyncio gRPC server every service runs: health checking and server
reflection always on (so grpcurl and Kubernetes probes work), every call
logged and counted (except methods a servicer counts itself, see
`Service.own_metrics`), and a graceful stop on SIGTERM/SIGINT that reports
NOT_SERVING first and lets in-flight calls finish."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import auth, tls
from .errors import translating
from .settings import CommonSettings
from .telemetry import GRPC_LATENCY, GRPC_REQUESTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """A servicer with the generated function that registers it and its full name."""

    servicer: object
    add_to_server: Callable[[object, grpc.aio.Server], None]
    full_name: str  # e.g. driftline_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
    # Methods (short names, e.g. "Predict") whose servicer records its own request metrics: the
    # common call metrics leave them alone, so they are neither counted twice nor pay for it twice.
    own_metrics: tuple[str, ...] = ()

    @property
    def own_metric_paths(self) -> tuple[str, ...]:
        return tuple(f"/{self.full_name}/{method}" for method in self.own_metrics)


class HandlerCapture:
    """Stands in for the server while a generated add_*_to_server function registers its
    handlers, so that they can be wrapped before the real server gets them."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, dict(handlers)


HandlerWrap = Callable[[str, str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


def wrapping_handlers(add_to_server: Callable[[object, object], None],
                      wrap: HandlerWrap) -> Callable[[object, object], None]:
    """`add_to_server` with each method's handler replaced by `wrap(service, method, handler)`
    (the service's full name, the method's short name), once, at registration: no per-call cost
    beyond what `wrap` adds. Generated code of another shape is registered unchanged."""

    def add(servicer, server) -> None:
        capture = HandlerCapture()
        add_to_server(servicer, capture)
        if capture.service is None:
            add_to_server(servicer, server)
            return
        handlers = {name: wrap(capture.service, name, handler) for name, handler in capture.handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
        server.add_registered_method_handlers(capture.service, handlers)

    return add


class CallMetrics:
    """Counts every unary call by final status code and times it.

    The handlers are wrapped once, when a servicer is registered (`wrapping_handlers`), not per
    call: a grpc.aio server interceptor runs a coroutine of its own on every call, which measured
    about a third of a bare server's throughput on small calls (bench/serving.py's
    floor-ort-icpt row). Methods in `exclude` (full paths "/pkg.Service/Method", or whole
    services ending in "/") pass through untouched. With a `verifier`, each method also admits
    only callers with its role (`auth.guarded`), before the handler runs."""

    def __init__(self, service: str, exclude: Iterable[str] = (), verifier: auth.Verifier | None = None) -> None:
        self.service = service
        self.verifier = verifier
        exclude = tuple(exclude)
        self._excluded = frozenset(e for e in exclude if not e.endswith("/"))
        self._excluded_prefixes = tuple(e for e in exclude if e.endswith("/"))

    def excluded(self, method: str) -> bool:
        return method in self._excluded or (bool(self._excluded_prefixes)
                                            and method.startswith(self._excluded_prefixes))

    def register(self, add_to_server: Callable[[object, object], None], servicer, server) -> None:
        """`add_to_server(servicer, server)`, with each handler wrapped by `wrap`."""
        wrapping_handlers(add_to_server, self.wrap)(servicer, server)

    def wrap(self, service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler as a server registers it: `ServiceError`s answered with their status
        code (`errors.translating`), and a unary call observed unless excluded."""
        handler = translating(handler)
        if self.verifier is not None:  # outside: a caller is refused before its request is looked at
            handler = auth.guarded(self.verifier, service, method, handler)
        if handler.unary_unary is None or self.excluded(f"/{service}/{method}"):
            return handler
        return self.observe(handler, method)

    def observe(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
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


def advertised_address_host(bind_host: str, advertised_host: str = "") -> str:
    """The host clients are told to dial for a server bound to `bind_host`.

    >>> advertised_address_host("127.0.0.1")
    '127.0.0.1'
    >>> advertised_address_host("0.0.0.0", "serving.driftline.svc")
    'serving.driftline.svc'
    >>> advertised_address_host("0.0.0.0") == socket.gethostname()
    True
    """
    if advertised_host:
        return advertised_host
    return socket.gethostname() if bind_host in ("0.0.0.0", "::", "[::]", "") else bind_host


class GrpcServer:
    """One service's gRPC server on 127.0.0.1 (or `host`); `address` is what clients dial.

    TLS (mTLS with `tls_client_auth`) when `settings` carry a certificate and key; plaintext
    otherwise, which only a loopback host gets unless `allow_insecure` (`tls.InsecureBind`)."""

    def __init__(self, name: str, services: Iterable[Service], port: int = 0,
                 host: str = "127.0.0.1", options: Iterable[tuple[str, object]] = (),
                 advertised_host: str = "", settings: CommonSettings | None = None) -> None:
        self.name = name
        self.services = list(services)
        exclude = [path for svc in self.services for path in svc.own_metric_paths]
        # Bearer tokens when the settings name the issuer's public key (services/common/auth.py);
        # without it, loopback only, checked before anything is registered.
        self.verifier = auth.Verifier.from_settings(settings) if settings is not None else None
        auth.check_bind(f"{host}:{port}", settings or CommonSettings.model_construct(), self.verifier)
        self.metrics = CallMetrics(name, exclude, self.verifier)
        self.server = grpc.aio.server(options=list(options))
        self.health = health.aio.HealthServicer()
        self.metrics.register(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server)
        for svc in self.services:
            self.metrics.register(svc.add_to_server, svc.servicer, self.server)
        names = [svc.full_name for svc in self.services]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)
        settings = settings if settings is not None else CommonSettings.model_construct()
        bind = f"{host}:{port}"
        credentials = tls.server_credentials(settings)
        self.tls = credentials is not None
        if credentials is None:
            tls.refuse_plaintext_beyond_loopback(bind, settings)
            self.port = self.server.add_insecure_port(bind)
        else:
            self.port = self.server.add_secure_port(bind, credentials)
        self.address = f"{advertised_address_host(host, advertised_host)}:{self.port}"
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self.server.start()
        for svc in self.services:
            await self.health.set(svc.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server started", extra={"address": self.address, "tls": self.tls,
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
