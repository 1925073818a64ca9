"""The Registry's gRPC API as the other services and the command line call it.

One channel per client, a deadline on every call, and an alias that points
nowhere answered as None instead of an error. `stub` is there for the calls
that have no helper here (the trainer registers versions through it).
"""

from __future__ import annotations

import grpc

from driftline.v1 import registry_pb2, registry_pb2_grpc

from .channels import channel
from .settings import CommonSettings

ModelVersion = registry_pb2.ModelVersion


class RegistryClient:
    def __init__(self, address: str, timeout_s: float = 5.0, settings: CommonSettings | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = channel(address, settings)
        self.stub = registry_pb2_grpc.RegistryStub(self._channel)

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version `alias` points at, or None when it points nowhere (yet)."""
        try:
            return self.stub.GetAlias(registry_pb2.GetAliasRequest(name=name, alias=alias),
                                      timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def version(self, name: str, version: int) -> ModelVersion:
        """Raises grpc.RpcError (NOT_FOUND for an unknown version)."""
        return self.stub.GetModelVersion(registry_pb2.GetModelVersionRequest(name=name, version=version),
                                         timeout=self.timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
