"""`driftline.v1.Monitor` and the monitor process around it."""

from __future__ import annotations

import asyncio
import logging

from driftline.v1 import monitor_pb2, monitor_pb2_grpc
from services.common.grpc_server import Service, service_name
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.runtime import ConsumerWorker, ServiceProcess

from .joiner import LabelJoin
from .monitor import DriftMonitor
from .policy import DriftPolicy
from .references import ObjectStoreJson, RegistryReferences
from .settings import MonitorSettings
from .tracker import TrackerConfig

log = logging.getLogger(__name__)

MONITOR = service_name(monitor_pb2.DESCRIPTOR, "Monitor")


class MonitorServicer(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    async def GetDriftReport(self, request, context) -> monitor_pb2.GetDriftReportResponse:
        # A model the monitor has not seen yet answers an empty list: "no data", not an error.
        # In a thread: the worker may hold the state's lock while it asks the registry something.
        reports = await asyncio.to_thread(self.monitor.reports, request.model_name, request.model_version)
        return monitor_pb2.GetDriftReportResponse(reports=reports)


def build(settings: MonitorSettings) -> ServiceProcess:
    topics = settings.topics
    inputs = [topics.features, topics.predictions, topics.training_results]
    ensure_topics(settings.kafka_bootstrap, [*inputs, topics.monitor_stats, topics.training_requests],
                  partitions=settings.topic_partitions, replication=settings.topic_replication)
    producer = Producer(settings.kafka_bootstrap)
    references = RegistryReferences(settings.registry_address, ObjectStoreJson(settings),
                                    timeout_s=settings.registry_timeout_s, retry_s=settings.reference_retry_s)
    monitor = DriftMonitor(
        topics=topics, stream=settings.stream, producer=producer, references=references,
        policy=DriftPolicy(settings.policy_min_samples, settings.policy_cooldown_s),
        join=LabelJoin(settings.join_ttl_s, settings.join_max_pending),
        tracker_config=TrackerConfig(
            accuracy_window=settings.accuracy_window, adwin_delta=settings.adwin_delta,
            psi_window=settings.psi_window, psi_min_samples=settings.psi_min_samples,
            psi_threshold=settings.psi_threshold),
        report_every_samples=settings.report_every_samples, report_every_s=settings.report_every_s,
        training_min_rows=settings.monitor_retrain_min_rows,
        max_versions_per_model=settings.max_versions_per_model)
    consumer = Consumer(settings.kafka_bootstrap, f"{settings.topic_prefix}{settings.consumer_group}", inputs)
    worker = ConsumerWorker("monitor", consumer, monitor.handle, on_idle=monitor.tick)
    log.info("monitor configured", extra={"inputs": inputs, "min_samples": settings.policy_min_samples,
                                           "cooldown_s": settings.policy_cooldown_s})
    return ServiceProcess(
        "monitor", settings,
        services=[Service(MonitorServicer(monitor), monitor_pb2_grpc.add_MonitorServicer_to_server, MONITOR)],
        workers=[worker], on_stop=[producer.flush, references.close])
