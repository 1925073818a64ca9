"""gRPC `driftline.v1.Ingest` and the assembly of the ingest process."""

from __future__ import annotations

import asyncio
import logging

import grpc
from confluent_kafka import KafkaException

from driftline.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.errors import InvalidArgument, Unavailable
from services.common.grpc_server import Service, service_name
from services.common.kafka import CONTENT_TYPE, DeliveryError, ensure_topics
from services.common.runtime import ServiceProcess
from services.common.streams import STREAM_HEADER, StreamCatalog

from .deadletter import grpc_origin
from .dedup import RecentIds
from .idlog import IdLog, topic_config
from .pipeline import IngestPipeline, RawInput
from .publisher import TransactionalPublisher
from .settings import IngestSettings
from .worker import build_raw_worker

log = logging.getLogger(__name__)


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(self, pipeline: IngestPipeline, max_batch_records: int, max_record_bytes: int = 900_000) -> None:
        self.pipeline = pipeline
        self.max_batch_records = max_batch_records
        self.max_record_bytes = max_record_bytes
        # One transaction at a time on the gRPC producer; batches from concurrent calls queue here.
        self._lock = asyncio.Lock()

    async def IngestBatch(self, request: ingest_pb2.IngestRequest, context: grpc.aio.ServicerContext
                          ) -> ingest_pb2.IngestResponse:
        count = len(request.records)
        if count == 0:
            raise InvalidArgument("empty batch: send at least one record")
        if count > self.max_batch_records:
            raise InvalidArgument(f"batch of {count} records is above the limit of {self.max_batch_records}")
        for index, record in enumerate(request.records):
            if (size := record.ByteSize()) > self.max_record_bytes:
                raise InvalidArgument(f"record {index} is {size} bytes; at most {self.max_record_bytes} are accepted")
        inputs = [request_input(record, index) for index, record in enumerate(request.records)]
        async with self._lock:
            try:
                outcomes = await asyncio.to_thread(self.pipeline.process, inputs)
            except (KafkaException, DeliveryError) as exc:
                # Nothing of the batch was published: the client may retry it as is.
                raise Unavailable(f"could not publish the batch: {exc}") from exc
        results = [outcome.result() for outcome in outcomes]
        return ingest_pb2.IngestResponse(
            results=results,
            accepted=sum(r.accepted for r in results),
            rejected=sum(not r.accepted for r in results),
            duplicates=sum(r.duplicate for r in results))


def request_input(record: ingest_pb2.RawRecord, index: int) -> RawInput:
    """A request's record as the raw topic would carry it: its bytes, its key, its content type and
    stream as headers."""
    headers = [(name, value.encode()) for name, value in
               ((CONTENT_TYPE, record.content_type), (STREAM_HEADER, record.stream)) if value]
    return RawInput(payload=record.value, content_type=record.content_type or None, key=record.key or None,
                    origin=grpc_origin(index), headers=headers or None)


def build(settings: IngestSettings) -> ServiceProcess:
    catalog = StreamCatalog.from_settings(settings)
    if catalog.get(None) is None:
        log.warning("the default stream has no schema: records that name no stream are dead-lettered", extra={
            "stream": settings.stream, "streams_dir": str(catalog.folder), "streams": catalog.names()})
    topics = settings.topics
    kafka_config = settings.kafka_client_config()
    ensure_topics(settings.kafka_bootstrap, [topics.events_raw, topics.events, topics.events_dlq],
                  partitions=settings.topic_partitions, replication=settings.topic_replication,
                  client_config=kafka_config)
    ensure_topics(settings.kafka_bootstrap, [settings.ids_topic], partitions=settings.topic_partitions,
                  replication=settings.topic_replication, config=topic_config(settings.ingest_dedup_retention_ms),
                  client_config=kafka_config)
    recent = RecentIds(settings.ingest_dedup_capacity)  # shared: a duplicate is one across both paths

    def pipeline(source: str, transactional_id: str, max_attempts: int) -> IngestPipeline:
        publisher = TransactionalPublisher(settings.kafka_bootstrap, transactional_id,
                                           settings.ingest_transaction_timeout_ms, client_config=kafka_config)
        # A catalogue each: the Kafka worker's thread and the gRPC calls' thread look at the folder apart.
        return IngestPipeline(StreamCatalog.from_settings(settings), topics, publisher, recent, source,
                              ids_topic=settings.ids_topic, max_attempts=max_attempts)

    # The producers first: initialising one aborts what its predecessor left open, so the ids read
    # next are all there will be of the transactions before this process.
    kafka_pipeline = pipeline("kafka", settings.transactional_id, settings.max_attempts)
    grpc_pipeline = pipeline("grpc", f"{settings.transactional_id}-grpc", 1)
    ids = IdLog(settings.kafka_bootstrap, settings.ids_topic, recent, settings.group_id, client_config=kafka_config)
    ids.load()
    servicer = IngestServicer(grpc_pipeline, settings.ingest_max_batch_records, settings.ingest_max_record_bytes)
    log.info("ingest configured", extra={
        "streams": catalog.names(), "default_stream": settings.stream, "streams_dir": str(catalog.folder),
        "group_id": settings.group_id, "transactional_id": settings.transactional_id,
        "instance_id": settings.instance_id, "consumes": topics.events_raw,
        "produces": [topics.events, topics.events_dlq, settings.ids_topic]})
    return ServiceProcess(
        "ingest", settings,
        services=[Service(servicer, ingest_pb2_grpc.add_IngestServicer_to_server,
                          service_name(ingest_pb2.DESCRIPTOR, "Ingest"))],
        workers=[build_raw_worker(settings, kafka_pipeline), ids],
        on_stop=[kafka_pipeline.publisher.close, grpc_pipeline.publisher.close])
