"""gRPC `driftline.v1.Registry`: validates requests, calls the store and the gate.
Refusals are raised as `services.common.errors` (the server answers each with its code).
Who may call which method is the common auth table's business (checked before a handler runs);
here every alias move and gate decision is audited with the caller's subject and reason, and
SetAlias, which passes the gate by, is refused without a reason.

Database and object-store work runs in worker threads so the asyncio loop
keeps answering (health checks included) while a gate scores models.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import urllib3
from minio.error import S3Error
from prometheus_client import Counter

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.common.auth import current_principal
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.objectstore import split_uri

from .gate import Gate
from .store import Caller, RegistryStore

DEFAULT_ALIAS = "production"
# Names end up in object keys (models/<name>/...) and URLs: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

DECISIONS = Counter("driftline_registry_gate_decisions_total", "Gate decisions, by outcome.", ["promoted"])


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, store: RegistryStore, gate: Gate, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.gate = gate
        self.on_change = on_change  # wakes the outbox relay
        # One promotion at a time: the gate's comparison must not race another promotion.
        self._promotions = asyncio.Lock()

    async def RegisterModelVersion(self, request, context):
        version = request.model_version
        _check_name(version.name, "model_version.name")
        if not version.artifact_uri:
            raise InvalidArgument("model_version.artifact_uri is required")
        _check_uri(version.artifact_uri, "model_version.artifact_uri")
        for field in ("metadata_uri", "eval_uri"):
            if getattr(version, field):
                _check_uri(getattr(version, field), f"model_version.{field}")
        if not version.artifact_sha256:
            raise InvalidArgument("model_version.artifact_sha256 is required (hex sha256 of the artifact)")
        if not _SHA256.match(version.artifact_sha256):
            raise InvalidArgument(
                f"model_version.artifact_sha256 must be 64 lowercase hex digits, got {version.artifact_sha256!r}")
        stored, created = await asyncio.to_thread(self.store.register_version, version)
        if created:
            self.on_change()
        return stored

    async def GetModelVersion(self, request, context):
        _check_name(request.name, "name")
        if request.idempotency_key:
            if request.version:
                raise InvalidArgument("give version or idempotency_key, not both")
            return await asyncio.to_thread(self.store.version_by_key, request.name, request.idempotency_key)
        _check_version(request.version)
        return await asyncio.to_thread(self.store.get_version, request.name, request.version)

    async def ListModelVersions(self, request, context):
        _check_name(request.name, "name")
        versions = await asyncio.to_thread(self.store.list_versions, request.name)
        return registry_pb2.ListModelVersionsResponse(model_versions=versions)

    async def SetAlias(self, request, context):
        _check_name(request.name, "name")
        _check_name(request.alias, "alias")
        _check_version(request.version)
        if not request.reason.strip():
            raise InvalidArgument("reason is required: SetAlias moves an alias past the gate, and the audit log "
                                  "keeps who did it and why")
        await asyncio.to_thread(self.store.set_alias, request.name, request.alias, request.version,
                                _caller(request.reason))
        self.on_change()
        return await asyncio.to_thread(self.store.get_version, request.name, request.version)

    async def GetAlias(self, request, context):
        _check_name(request.name, "name")
        _check_name(request.alias, "alias")
        return await asyncio.to_thread(self._get_alias, request.name, request.alias)

    def _get_alias(self, name: str, alias: str) -> registry_pb2.ModelVersion:
        version = self.store.resolve_alias(name, alias)
        if not version:
            self.store.list_versions(name)  # an unknown model is named as such
            raise NotFound(f"alias {alias!r} of model {name!r} points nowhere")
        return self.store.get_version(name, version)

    async def Promote(self, request, context):
        _check_name(request.name, "name")
        _check_version(request.version)
        alias = request.alias or DEFAULT_ALIAS
        _check_name(alias, "alias")
        if request.eval_uri:
            _check_uri(request.eval_uri, "eval_uri")
        async with self._promotions:
            try:
                decision, decided = await asyncio.to_thread(self._promote, request.name, request.version, alias,
                                                            request.idempotency_key, _caller(request.reason),
                                                            request.eval_uri)
            except (S3Error, urllib3.exceptions.HTTPError) as exc:  # the gate could not read an object
                raise Unavailable(f"object store: {exc}") from exc
        if decided:
            DECISIONS.labels(str(decision.promoted).lower()).inc()
            self.on_change()
        return decision

    def _promote(self, name: str, version: int, alias: str, key: str,
                 caller: Caller, eval_uri: str = "") -> tuple[registry_pb2.GateDecision, bool]:
        """The decision, and whether it was made now (False: a retry of a promotion already decided)."""
        candidate = self.store.get_version(name, version)
        earlier = self.store.decision_by_key(name, key) if key else None
        if earlier is not None:
            if (earlier.candidate_version, earlier.alias) != (version, alias):
                raise InvalidArgument(f"idempotency_key {key!r} was used to promote v{earlier.candidate_version} "
                                      f"to {earlier.alias!r}, not v{version} to {alias!r}")
            return earlier, False
        baseline_version = self.store.resolve_alias(name, alias)
        baseline = self.store.get_version(name, baseline_version) if baseline_version else None
        decision = self.gate.decide(candidate, baseline, alias, eval_uri)
        decision.idempotency_key = key
        # Raises AliasChanged if a SetAlias moved the alias while the gate was scoring.
        self.store.record_decision(decision, caller)
        return decision, True

    async def GetGateDecisions(self, request, context):
        _check_name(request.name, "name")
        decisions = await asyncio.to_thread(self.store.list_decisions, request.name)
        return registry_pb2.GetGateDecisionsResponse(decisions=decisions)

    async def GetAuditLog(self, request, context):
        _check_name(request.name, "name")
        records = await asyncio.to_thread(self.store.audit_log, request.name)
        return registry_pb2.GetAuditLogResponse(records=records)


def _caller(reason: str) -> Caller:
    """The caller of the running call (read in its task, before any work moves to a thread)."""
    return Caller(current_principal().subject, reason.strip())


def _check_name(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not _NAME.match(value):
        raise InvalidArgument(f"{field} {value!r} must be 1-128 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")


def _check_version(version: int) -> None:
    if version < 1:
        raise InvalidArgument(f"version must be 1 or more, got {version}")


def _check_uri(uri: str, field: str) -> None:
    try:
        split_uri(uri)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}") from exc
