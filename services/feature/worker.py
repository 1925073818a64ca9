"""Assembles the feature process: the faust worker (agent + table), the gRPC
FeatureStore server in the same event loop, and the segment writer thread.

Start: the segment writer, then faust; the gRPC server starts once faust has
recovered its table from the changelog (an app task runs only then), so a
SERVING health status means online reads see the recovered state.

Stop (SIGTERM/SIGINT, handled by faust's worker): the gRPC server first
(NOT_SERVING, in-flight reads finish while the table is still there), then
faust (the agent finishes its event, offsets are committed, the producer is
flushed), then the segment writer (reads what faust produced last and writes
it in a segment).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile

import faust
from aiokafka import codec as aiokafka_codec
from mode import Service as ModeService

from driftline.v1 import features_pb2, features_pb2_grpc
from services.common.grpc_server import GrpcServer, Service, service_name
from services.common.kafka import ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.streams import StreamCatalog

from .app import FeatureApp, create_app
from .online import FeatureStoreServicer
from .segment_writer import SegmentWriter
from .settings import FeatureSettings

log = logging.getLogger(__name__)


class SegmentWriterService(ModeService):
    """Runs the segment writer thread for as long as the faust worker runs."""

    def __init__(self, writer: SegmentWriter, **kwargs) -> None:
        super().__init__(**kwargs)
        self.writer = writer

    async def on_start(self) -> None:
        self.writer.start()

    async def on_stop(self) -> None:
        await asyncio.to_thread(self.writer.stop)
        log.info("segment writer stopped", extra={"segments_written": self.writer.segments_written})


class OnlineServer:
    """The gRPC server, created inside the running loop (grpc.aio binds to the loop it is made in)."""

    def __init__(self, settings: FeatureSettings, feature_app: FeatureApp) -> None:
        self.settings = settings
        self.servicer = FeatureStoreServicer(feature_app.catalog, feature_app.table,
                                             settings.feature_max_online_entities)
        self.server: GrpcServer | None = None

    async def start(self) -> None:
        self.server = GrpcServer("feature", [Service(
            self.servicer, features_pb2_grpc.add_FeatureStoreServicer_to_server,
            service_name(features_pb2.DESCRIPTOR, "FeatureStore"))], port=self.settings.grpc_port,
            host=self.settings.grpc_host, advertised_host=self.settings.advertised_host)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)


class FeatureWorker(faust.Worker):
    def __init__(self, feature_app: FeatureApp, online: OnlineServer, segments: SegmentWriterService,
                 datadir_to_remove: str | None = None) -> None:
        # Logging is configured by services.common.telemetry; faust must not replace it.
        super().__init__(feature_app.app, segments, quiet=True, override_logging=False,
                         redirect_stdouts=False, loglevel=None)
        self.spinner = None  # a terminal progress spinner; it writes escape codes into the logs
        self.online = online
        self.datadir_to_remove = datadir_to_remove

    async def on_stop(self) -> None:
        await self.online.stop()
        await super().on_stop()

    def on_worker_shutdown(self) -> None:
        super().on_worker_shutdown()
        if self.datadir_to_remove:
            shutil.rmtree(self.datadir_to_remove, ignore_errors=True)


def require_lz4() -> None:
    """Fails at start, not at the first compressed batch: our producers compress with lz4, and
    faust's client (aiokafka) decompresses it only with `cramjam` installed (aiokafka[lz4])."""
    if not aiokafka_codec.has_lz4():
        raise RuntimeError("aiokafka cannot read lz4-compressed records: install cramjam>=2.8 (aiokafka[lz4])")


def build_worker(settings: FeatureSettings) -> FeatureWorker:
    require_lz4()
    catalog = StreamCatalog.from_settings(settings)
    if not catalog.names():
        log.warning("no stream schemas yet: events are skipped until one is added", extra={
            "streams_dir": str(catalog.folder), "errors": catalog.errors})
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap, [topics.events, topics.features],
                  partitions=settings.topic_partitions, replication=settings.topic_replication)
    store = MinioObjectStore.from_settings(settings)
    temporary = None if settings.feature_datadir else tempfile.mkdtemp(prefix="driftline-feature-")
    feature_app = create_app(settings, catalog, settings.feature_datadir or temporary)
    online = OnlineServer(settings, feature_app)

    @feature_app.app.task
    async def serve_online_features() -> None:
        # App tasks start after table recovery.
        try:
            await online.start()
        except Exception as exc:  # e.g. the port is taken: a feature worker without its API is broken
            log.exception("gRPC server failed to start")
            await feature_app.app.crash(exc)

    # The writer's thread gets a catalogue of its own: StreamCatalog is not shared across threads.
    segments = SegmentWriterService(SegmentWriter(settings, store, StreamCatalog.from_settings(settings)))
    log.info("feature configured", extra={
        "streams": {s.stream: s.feature_names for s in catalog}, "default_stream": catalog.default,
        "streams_dir": str(catalog.folder), "app_id": settings.app_id,
        "consumes": topics.events, "produces": topics.features, "bucket": settings.bucket,
        "datadir": settings.feature_datadir or temporary})
    return FeatureWorker(feature_app, online, segments, datadir_to_remove=temporary)
