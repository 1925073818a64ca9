"""The registry as the monitor's tests see it: a small real gRPC servicer (run in a
tests/support.GrpcThread) that answers GetModelVersion and GetAlias from dicts."""

from __future__ import annotations

import grpc

from driftline.v1 import registry_pb2, registry_pb2_grpc


class RegistryStandIn(registry_pb2_grpc.RegistryServicer):
    """Answers GetModelVersion from `versions` and GetAlias from `aliases` ((model, alias) →
    version); anything else is NOT_FOUND, as the registry answers an alias that points nowhere."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], registry_pb2.ModelVersion] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        self.alias_lookups: list[tuple[str, str]] = []
        self.unavailable = False  # True: every call fails UNAVAILABLE, as a registry that is not up yet

    async def GetModelVersion(self, request, context):
        found = self.versions.get((request.name, request.version))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")
        return found

    async def GetAlias(self, request, context):
        self.alias_lookups.append((request.name, request.alias))
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the registry is starting")
        version = self.aliases.get((request.name, request.alias))
        if version is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"alias {request.alias!r} of model {request.name!r} points nowhere")
        return self.versions.get((request.name, version)) or registry_pb2.ModelVersion(
            name=request.name, version=version)
