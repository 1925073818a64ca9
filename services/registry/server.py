"""Wires the registry process: SQLite store, gate, gRPC servicer and outbox relay."""

from __future__ import annotations

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_server import Service, service_name
from services.common.kafka import Producer, ensure_topics
from services.common.objectstore import ObjectStores
from services.common.runtime import ServiceProcess

from .gate import Gate
from .relay import OutboxRelay
from .servicer import RegistryServicer
from .settings import RegistrySettings
from .sqlite_store import SqliteRegistryStore


def build(settings: RegistrySettings) -> ServiceProcess:
    store = SqliteRegistryStore(settings.registry_db)
    topic = settings.topics.registry_events
    ensure_topics(settings.kafka_bootstrap, [topic], partitions=settings.topic_partitions,
                  replication=settings.topic_replication, client_config=settings.kafka_client_config())
    relay = OutboxRelay(store, Producer(settings.kafka_bootstrap, config=settings.kafka_client_config()), topic,
                        interval_s=settings.relay_interval_s, batch=settings.relay_batch)
    # The versions' objects may be in any bucket of the S3 server, read verified by sha256.
    gate = Gate(ObjectStores.from_settings(settings), settings.gate_min_improvement)
    servicer = RegistryServicer(store, gate, on_change=relay.wake)
    service = Service(servicer, registry_pb2_grpc.add_RegistryServicer_to_server,
                      service_name(registry_pb2.DESCRIPTOR, "Registry"))
    # Stop order (ServiceProcess): gRPC first, then the relay drains the outbox, then the database closes.
    return ServiceProcess("registry", settings, [service], workers=[relay], on_stop=[store.close])
