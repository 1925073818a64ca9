"""The registry as the monitor's tests see it: a small real gRPC servicer (run in a
tests/support.GrpcThread) that answers GetModelVersion from a dict."""

from __future__ import annotations

import grpc

from driftline.v1 import registry_pb2, registry_pb2_grpc


class RegistryStandIn(registry_pb2_grpc.RegistryServicer):
    """Answers GetModelVersion from a dict; every other version is NOT_FOUND."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], registry_pb2.ModelVersion] = {}

    async def GetModelVersion(self, request, context):
        found = self.versions.get((request.name, request.version))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such version")
        return found
