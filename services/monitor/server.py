"""`driftline.v1.Monitor` and the monitor process around it."""

from __future__ import annotations

import asyncio
import logging

from driftline.v1 import monitor_pb2, monitor_pb2_grpc
from services.common.deadletter import DeadLetterQueue
from services.common.grpc_server import Service, service_name
from services.common.kafka import Consumer, Producer, ensure_topics
from services.common.objectstore import ObjectStores
from services.common.registry_client import RegistryClient
from services.common.runtime import ConsumerWorker, ServiceProcess
from services.common.streams import StreamCatalog

from .checkpoint import Checkpoints, Clock, resume_at
from .codec import event_time_ms
from .dashboard import Dashboard
from .first_model import ProductionLookups
from .hub import Hub
from .joiner import LabelJoin
from .monitor import DriftMonitor
from .policy import DriftPolicy
from .refresh import Refreshes
from .references import RegistryReferences
from .settings import STATE_SETTINGS, MonitorSettings

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

    async def WatchDriftStats(self, request, context):
        """Every DriftReport as it is published (after the current ones, if asked), until the
        client goes away or the server stops."""
        queue = self.monitor.hub.subscribe()
        try:
            if request.include_current:
                for report in await asyncio.to_thread(self.monitor.reports, request.model_name, 0):
                    yield report
            while True:
                kind, item = await queue.get()
                if kind == "report" and (not request.model_name or item.model_name == request.model_name):
                    yield item
        finally:
            self.monitor.hub.unsubscribe(queue)


def build(settings: MonitorSettings) -> ServiceProcess:
    # (MonitorSettings validated every setting on construction: a ValueError names a bad one.)
    topics = settings.topics
    producer = Producer(settings.kafka_bootstrap, config=settings.kafka_client_config())
    stores = ObjectStores.from_settings(settings)
    references = RegistryReferences(settings.registry_address, stores.read_json,
                                    timeout_s=settings.registry_timeout_s, retry_s=settings.reference_retry_s,
                                    settings=settings)
    dead_letters = DeadLetterQueue(producer, topics.dead_letters("monitor"), "monitor")
    monitor = drift_monitor(settings, producer, references, dead_letters=dead_letters)
    inputs = monitor.inputs  # the topics it has a handler for: the consumer reads exactly these
    ensure_topics(settings.kafka_bootstrap, [*inputs, topics.monitor_stats, topics.training_requests,
                                             dead_letters.topic],
                  partitions=settings.topic_partitions, replication=settings.topic_replication,
                  client_config=settings.kafka_client_config())
    group = f"{settings.topic_prefix}{settings.consumer_group}"
    # The state and the positions it reflects come back from the newest snapshot, and the consumer
    # starts there (not at the group's committed offsets): what came after it is applied once more.
    checkpoints = Checkpoints(monitor, stores.for_bucket(settings.bucket), f"monitor/state/{group}.snapshot",
                              every_s=settings.snapshot_every_s, settings=state_settings(settings),
                              clock=monitor.clock_reading)
    restored = checkpoints.restore(settings.snapshot_load_wait_s) is not None
    # read_committed: feature records are written in transactions, and an aborted one (a feature
    # process killed mid-batch) is re-written by its successor; read_uncommitted would count both.
    consumer = Consumer(settings.kafka_bootstrap, group, inputs, instance_id=settings.instance_id,
                        session_timeout_ms=settings.kafka_session_timeout_ms, read_committed=True,
                        config=settings.kafka_client_config())
    resume_at(consumer, inputs, monitor.positions, restored)
    # Offsets are committed asynchronously after each batch (a synchronous commit costs a broker
    # round trip per batch, more than the batch's work) and synchronously when idle; they are where
    # a monitor without a snapshot starts (and what lag is measured by). None before the first
    # snapshot (`durable`): a monitor killed before it had written one once left offsets committed
    # past the state it took with it, and its successor, finding no snapshot, started there.
    def handle(messages) -> None:
        monitor.handle(messages)
        if checkpoints.durable:
            consumer.commit(asynchronous=True)
        checkpoints.after_batch()

    def idle() -> None:
        monitor.tick()
        if checkpoints.durable:
            consumer.commit()
        checkpoints.after_batch()

    worker = ConsumerWorker("monitor", consumer, handle, max_records=settings.max_poll_records,
                            on_idle=idle, commits_offsets=True, dead_letters=dead_letters,
                            max_attempts=settings.max_attempts)
    workers = [worker]
    if monitor.first_models is not None:  # asks the registry which models serve already
        workers.append(ProductionLookups(
            monitor.models_without_production, monitor.production_looked_up,
            RegistryClient(settings.registry_address, settings.registry_timeout_s, settings),
            settings.first_model_check_s))
    if settings.dashboard_port:
        workers.append(Dashboard(monitor, settings.dashboard_host, settings.dashboard_port, settings=settings))
    log.info("monitor configured", extra={
        "inputs": inputs, "min_samples": settings.policy_min_samples, "cooldown_s": settings.policy_cooldown_s,
        "signals": settings.policy_signals, "expected_run_length": settings.expected_run_length,
        "streams": {s.stream: s.model_name for s in monitor.streams}, "first_model_min_rows": settings.first_model_min_rows,
        "dashboard_port": settings.dashboard_port})
    return ServiceProcess(
        "monitor", settings,
        services=[Service(MonitorServicer(monitor), monitor_pb2_grpc.add_MonitorServicer_to_server, MONITOR)],
        # The last snapshot once the worker has stopped (nothing is applied after it).
        workers=workers, on_stop=[producer.flush, checkpoints.close, references.close])


def drift_monitor(settings: MonitorSettings, producer: Producer, references: RegistryReferences,
                  dead_letters: DeadLetterQueue | None = None) -> DriftMonitor:
    """The stream processing these settings configure (`build` adds the consumer and servers)."""
    clock = Clock()  # one clock for every timer of the state: a restore moves them all on together
    return DriftMonitor(
        topics=settings.topics, stream=settings.stream, producer=producer, references=references,
        policy=DriftPolicy(settings.policy_min_samples, settings.policy_cooldown_s, clock=clock,
                           signals=settings.policy_signals, retry_s=settings.policy_retry_s),
        join=LabelJoin(settings.join_ttl_s, settings.join_max_pending, clock=clock, read_time=event_time_ms),
        clock=clock, dead_letters=dead_letters,
        tracker_config=settings.tracker_config(),
        report_every_samples=settings.report_every_samples, report_every_s=settings.report_every_s,
        training_min_rows=settings.monitor_retrain_min_rows,
        max_versions_per_model=settings.max_versions_per_model, hub=Hub(), history=settings.history,
        streams=StreamCatalog.from_settings(settings), first_model_min_rows=settings.first_model_min_rows,
        refreshes=Refreshes(settings.policy_refresh_max_rows, settings.policy_refresh_until_rows,
                            settings.policy_refresh_refusals),
        reuse_candidates=settings.policy_reuse_candidates)


def state_settings(settings: MonitorSettings) -> dict[str, object]:
    """The settings the monitor's state was built under: a snapshot taken under others is not restored."""
    return {name: getattr(settings, name) for name in STATE_SETTINGS}
