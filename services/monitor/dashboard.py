"""The ops dashboard: one HTTP page served by the monitor, live over server-sent events.

    GET /             the page (inline JS and SVG: no CDN, no build step)
    GET /api/state    the history so far, markers and the current reports (JSON)
    GET /events       server-sent events: `report` (a compact DriftReport) and `marker`
                      (alert, training_request, promotion, registered, gate, version)
    GET /metrics      the Prometheus metrics, for a scraper that only reaches this port
    GET /healthz      ok

It runs on its own thread and asyncio loop (aiohttp), so a slow browser never
touches the gRPC server or the Kafka worker; the worker hands it news through the
monitor's `Hub`. With authentication on (settings with the issuer's public key) every page
but /healthz needs a token with role `read` (401 without one, 403 without the role): a
script sends `Authorization: Bearer <token>`, a browser opens `/?token=<token>` once and
carries it in a cookie from then on (services/common/auth.py). Without authentication it
binds loopback only, like every gRPC server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import auth
from services.common.settings import CommonSettings

from .monitor import DriftMonitor
from .reporting import compact

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")


class Dashboard(threading.Thread):
    """The dashboard's server thread; `start()` then `stop()`, like a ConsumerWorker."""

    def __init__(self, monitor: DriftMonitor, host: str, port: int, heartbeat_s: float = 15.0,
                 settings: CommonSettings | None = None) -> None:
        super().__init__(name="dashboard", daemon=True)
        self.monitor = monitor
        self.host, self.port = host, port
        self.verifier = auth.Verifier.from_settings(settings) if settings is not None else None
        auth.check_bind(f"{host}:{port}", settings or CommonSettings.model_construct(), self.verifier,
                        host_setting="DRIFTLINE_DASHBOARD_HOST")
        self.heartbeat_s = heartbeat_s
        self.bound = threading.Event()
        self.address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._streams: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[auth.aiohttp_middleware(self.verifier)] if self.verifier else [])
        app.router.add_get("/", self.page)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
        return app

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html", charset="utf-8")

    async def state(self, _request: web.Request) -> web.Response:
        snapshot = await asyncio.to_thread(self.monitor.snapshot)
        return web.json_response(snapshot)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue = self.monitor.hub.subscribe()
        task = asyncio.current_task()
        self._streams.add(task)
        try:
            await response.write(b"retry: 1000\n\n")
            while not self._stopping.is_set():
                try:
                    kind, item = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except asyncio.TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                data = compact(item) if kind == "report" else item
                await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(task)
            self.monitor.hub.unsubscribe(queue)
        return response

    def run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self.app(), handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.address = f"http://{self.host}:{port}"
            log.info("dashboard serving", extra={"address": self.address})
        except OSError as exc:  # the monitor works without its page; say so and go on
            log.error("dashboard could not bind; running without it",
                      extra={"host": self.host, "port": self.port, "error": str(exc)})
            self.bound.set()
            await runner.cleanup()
            return
        self.bound.set()
        await self._stopping.wait()
        for task in list(self._streams):  # open event streams end now, not at their next heartbeat
            task.cancel()
        await runner.shutdown()
        await runner.cleanup()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        if self.is_alive():
            self.join(timeout)
