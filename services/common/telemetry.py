"""Structured JSON logs and Prometheus metrics, the same for every service."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Histogram, make_wsgi_app, start_http_server

if TYPE_CHECKING:
    from .settings import CommonSettings

GRPC_REQUESTS = Counter(
    "driftline_grpc_requests_total", "gRPC calls handled, by method and status code.",
    ["service", "method", "code"])
GRPC_LATENCY = Histogram(
    "driftline_grpc_request_duration_seconds", "gRPC call latency, by method.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if as_json else logging.Formatter(
        f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The object store's HTTP client is chatty at INFO; its warnings still come through.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # a scrape every few seconds is no news
        pass


def start_metrics(port: int, host: str = "127.0.0.1", settings: CommonSettings | None = None) -> None:
    """Serves /metrics on `host:port`; port 0 means no endpoint (several services in one test process).
    With authentication in `settings` a scrape needs a token with role `read` (Prometheus:
    `authorization: {credentials_file: …}`); without it the endpoint binds loopback only."""
    if not port:
        return
    from . import auth

    verifier = auth.Verifier.from_settings(settings) if settings is not None else None
    if settings is not None:
        auth.check_bind(f"{host}:{port}", settings, verifier, host_setting="DRIFTLINE_METRICS_HOST")
    if verifier is None:
        start_http_server(port, addr=host)
        return
    server = make_server(host, port, auth.wsgi_guard(make_wsgi_app(), verifier), _MetricsServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
