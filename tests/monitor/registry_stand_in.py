"""The registry as the monitor's tests see it: a small real gRPC servicer (run in a
tests/support.GrpcThread) that answers GetModelVersion and GetAlias from dicts; and what every live
monitor fixture sets up first — topics and a bucket of its own, versions whose metadata.json holds a
training reference."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from driftline.v1 import registry_pb2, registry_pb2_grpc
from services.common.kafka import ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.settings import Topics
from services.monitor.psi import reference_bins
from support import unique_bucket, unique_prefix


class RegistryStandIn(registry_pb2_grpc.RegistryServicer):
    """Answers GetModelVersion from `versions` and GetAlias from `aliases` ((model, alias) →
    version); anything else is NOT_FOUND, as the registry answers an alias that points nowhere."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], registry_pb2.ModelVersion] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        self.alias_lookups: list[tuple[str, str]] = []
        self.unavailable = False  # True: every call fails UNAVAILABLE, as a registry that is not up yet

    def with_reference(self, store: MinioObjectStore, model: str, version: int, features: list[str],
                       training: np.ndarray, scores_reference: dict, **metadata) -> None:
        """A version whose metadata.json (written to `store`) holds the reference bins of `training`'s
        columns, named `features`, and `scores_reference`; `metadata` adds to the file."""
        written = store.put_json(f"models/{model}/{version}/metadata.json", {
            "name": model, "version": version, "feature_names": features, "classes": [0, 1],
            "reference": {name: reference_bins(training[:, i]) for i, name in enumerate(features)},
            "scores_reference": scores_reference, **metadata})
        self.versions[(model, version)] = registry_pb2.ModelVersion(
            name=model, version=version, feature_names=features, metadata_uri=written.uri)

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


@dataclass
class Isolated:
    """A test's own topic prefix (its topics created) and bucket (created), on the shared broker and S3."""
    prefix: str
    topics: Topics
    bucket: str
    store: MinioObjectStore


def isolated(kafka_bootstrap: str, s3) -> Isolated:
    prefix, bucket = unique_prefix(), unique_bucket()
    topics = Topics(prefix)
    ensure_topics(kafka_bootstrap, topics.all())
    store = s3.store(bucket)
    return Isolated(prefix, topics, bucket, store)
