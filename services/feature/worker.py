"""Assembles the feature process: the transactional events processor, the
feature and label segment writers (threads), and the gRPC FeatureStore server.

Start: the threads, then the gRPC server once the processor's first partition
assignment has its state loaded from the changelog, so a SERVING health status
means online reads see the recovered state.

Stop (SIGTERM/SIGINT): the gRPC server first (NOT_SERVING, in-flight reads
finish while the table is still there), then the processor (its batch in hand
is committed in its transaction), then the segment writers (each reads to the
end of its topic and writes what it holds), then the dead-letter producer.
"""

from __future__ import annotations

import asyncio
import logging

from driftline.v1 import features_pb2, features_pb2_grpc
from services.common.deadletter import DeadLetterQueue
from services.common.grpc_server import Service, service_name
from services.common.kafka import Producer, ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.runtime import ServiceProcess
from services.common.streams import StreamCatalog

from .labels import LabelSegmentWriter
from .online import FeatureStoreServicer
from .processor import SERVICE, FeatureProcessor
from .segment_writer import FeatureSegmentWriter
from .settings import FeatureSettings

log = logging.getLogger(__name__)

# The changelog keeps each row's latest value only; small segments let the broker compact it
# soon, so that a restart reads about one record per entity.
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(16 * 1024 * 1024),
                    "min.cleanable.dirty.ratio": "0.1"}


class FeatureProcess(ServiceProcess):
    def __init__(self, settings: FeatureSettings, processor: FeatureProcessor, **kwargs) -> None:
        super().__init__("feature", settings, **kwargs)
        self.processor = processor

    async def start(self) -> None:
        for worker in self.workers:
            worker.start()
        while not await asyncio.to_thread(self.processor.ready.wait, 10):
            log.info("waiting for the events partitions (and their state) before serving online reads")
        if self.grpc:
            await self.grpc.start()


def build_worker(settings: FeatureSettings) -> FeatureProcess:
    catalog = StreamCatalog.from_settings(settings)
    if not catalog.names():
        log.warning("no stream schemas yet: events are dead-lettered until one is added", extra={
            "streams_dir": str(catalog.folder), "errors": catalog.errors})
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap, [topics.events, topics.features, topics.labels,
                                             topics.dead_letters(SERVICE)],
                  partitions=settings.topic_partitions, replication=settings.topic_replication,
                  client_config=settings.kafka_client_config())
    ensure_topics(settings.kafka_bootstrap, [settings.changelog_topic], partitions=settings.topic_partitions,
                  replication=settings.topic_replication, config=CHANGELOG_CONFIG,
                  client_config=settings.kafka_client_config())
    store = MinioObjectStore.from_settings(settings)
    processor = FeatureProcessor(settings, catalog)
    dead_letter_producer = Producer(settings.kafka_bootstrap, config=settings.kafka_client_config())
    # Each thread gets a catalogue of its own: StreamCatalog is not shared across threads.
    segments = FeatureSegmentWriter(settings, store, StreamCatalog.from_settings(settings))
    labels = LabelSegmentWriter(settings, store, StreamCatalog.from_settings(settings),
                                DeadLetterQueue(dead_letter_producer, topics.dead_letters(SERVICE), SERVICE))
    servicer = FeatureStoreServicer(StreamCatalog.from_settings(settings), processor.table,
                                    settings.feature_max_online_entities)
    log.info("feature configured", extra={
        "streams": {s.stream: s.feature_names for s in catalog}, "default_stream": catalog.default,
        "streams_dir": str(catalog.folder), "group": settings.app_id, "instance_id": settings.instance_id,
        "transactional_id": processor.transactional_id, "consumes": [topics.events, topics.labels],
        "produces": topics.features, "bucket": settings.bucket})
    return FeatureProcess(
        settings, processor,
        services=[Service(servicer, features_pb2_grpc.add_FeatureStoreServicer_to_server,
                          service_name(features_pb2.DESCRIPTOR, "FeatureStore"))],
        workers=[processor, segments, labels], on_stop=[dead_letter_producer.close])
