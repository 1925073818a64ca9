"""What the registry needs from its database, as an interface.

SQLite implements it today (`sqlite_store.py`); PostgreSQL is the next
implementation behind the same methods. Every method that changes state also
writes the matching RegistryEvent rows to the outbox in the same transaction,
so a change and its event are committed together or not at all, and every alias
move and gate decision writes its audit record (who, when, why) in that same transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from driftline.v1 import registry_pb2


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked for a change and why, for the audit log."""

    subject: str = "anonymous"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int  # commit order; the relay publishes in this order
    model_name: str
    payload: bytes  # a serialized RegistryEvent


class RegistryStore(ABC):
    @abstractmethod
    def register_version(self, version: registry_pb2.ModelVersion) -> tuple[registry_pb2.ModelVersion, bool]:
        """Stores `version` under the next version number of its model.

        Returns (stored version, created). A version of the model with the same
        `idempotency_key` (when it has one), or else with the same artifact
        (sha256) and dataset, is returned as it is, with created=False and no
        event, so a client may retry a registration (a retrained artifact
        included: its bytes may differ, its key does not).
        """

    @abstractmethod
    def get_version(self, name: str, version: int) -> registry_pb2.ModelVersion:
        """Raises NotFound for an unknown model or version."""

    @abstractmethod
    def version_by_key(self, name: str, idempotency_key: str) -> registry_pb2.ModelVersion:
        """The version registered with `idempotency_key`; raises NotFound for an unknown model or key."""

    @abstractmethod
    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]:
        """Versions in ascending order; raises NotFound for an unknown model."""

    @abstractmethod
    def resolve_alias(self, name: str, alias: str) -> int:
        """The version the alias points at, 0 when it points nowhere."""

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: int, caller: Caller = Caller()) -> int:
        """Points the alias at `version` (ALIAS_MOVED) and audits it (SET_ALIAS, also when it
        pointed there already); returns the previous version (0 = none)."""

    @abstractmethod
    def record_decision(self, decision: registry_pb2.GateDecision, caller: Caller = Caller()) -> None:
        """Stores a gate decision (GATE_DECIDED) and, if it promotes, moves the alias (ALIAS_MOVED);
        audits it (PROMOTE) with `caller`.

        Raises AliasChanged when the alias no longer points at
        `decision.baseline_version`: the decision compared against a stale baseline.
        """

    @abstractmethod
    def decision_by_key(self, name: str, idempotency_key: str) -> registry_pb2.GateDecision | None:
        """The decision recorded for a promotion with `idempotency_key`, None when there is none."""

    @abstractmethod
    def list_decisions(self, name: str) -> list[registry_pb2.GateDecision]:
        """Decisions in the order they were made; raises NotFound for an unknown model."""

    @abstractmethod
    def audit_log(self, name: str) -> list[registry_pb2.AuditRecord]:
        """The model's audit records in the order they were written; raises NotFound for an unknown model."""

    @abstractmethod
    def unsent_events(self, limit: int) -> list[OutboxRow]:
        """The oldest outbox rows not yet published, in commit order."""

    @abstractmethod
    def mark_sent(self, seqs: list[int]) -> None: ...

    @abstractmethod
    def count_unsent(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...
