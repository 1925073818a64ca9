"""The RegistryEvent records the outbox publishes, one constructor per kind."""

from __future__ import annotations

import time
import uuid

from driftline.v1 import registry_pb2

Kind = registry_pb2.RegistryEvent.Kind


def now_ms() -> int:
    return int(time.time() * 1000)


def _event(kind: int, model_name: str, occurred_ms: int) -> registry_pb2.RegistryEvent:
    # event_id lets consumers drop the duplicates at-least-once delivery may bring.
    event = registry_pb2.RegistryEvent(event_id=uuid.uuid4().hex, kind=kind, model_name=model_name)
    event.occurred_at.FromMilliseconds(occurred_ms)
    return event


def version_registered(version: registry_pb2.ModelVersion, occurred_ms: int) -> registry_pb2.RegistryEvent:
    event = _event(Kind.VERSION_REGISTERED, version.name, occurred_ms)
    event.model_version.CopyFrom(version)
    return event


def alias_moved(target: registry_pb2.ModelVersion, alias: str, previous_version: int,
                occurred_ms: int) -> registry_pb2.RegistryEvent:
    event = _event(Kind.ALIAS_MOVED, target.name, occurred_ms)
    event.model_version.CopyFrom(target)
    event.alias = alias
    event.previous_version = previous_version
    return event


def gate_decided(decision: registry_pb2.GateDecision, candidate: registry_pb2.ModelVersion,
                 occurred_ms: int) -> registry_pb2.RegistryEvent:
    event = _event(Kind.GATE_DECIDED, decision.model_name, occurred_ms)
    event.decision.CopyFrom(decision)
    event.model_version.CopyFrom(candidate)
    event.alias = decision.alias
    event.previous_version = decision.baseline_version
    return event
