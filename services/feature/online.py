"""gRPC `driftline.v1.FeatureStore`: the latest feature vector of each entity,
read from the faust table in the worker's own event loop.

A worker holds the table partitions it is assigned; with several workers an
entity on another worker's partition answers found=false (route by entity, or
run one worker per stream, until the store routes requests itself).
"""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import features_pb2, features_pb2_grpc
from services.common.errors import InvalidArgument, NotFound
from services.common.schema import StreamSchema

from .metrics import ONLINE_LOOKUPS


class FeatureStoreServicer(features_pb2_grpc.FeatureStoreServicer):
    def __init__(self, schema: StreamSchema, table, max_entities: int) -> None:
        self.schema = schema
        self.table = table
        self.max_entities = max_entities
        self.feature_set = features_pb2.FeatureSet(name=schema.stream, feature_names=schema.feature_names)

    async def GetOnlineFeatures(self, request: features_pb2.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext) -> features_pb2.GetOnlineFeaturesResponse:
        if request.feature_set and request.feature_set != self.schema.stream:
            raise NotFound(f"unknown feature set {request.feature_set!r}; this store serves {self.schema.stream!r}")
        if not request.entity_ids:
            raise InvalidArgument("no entity_ids: ask for at least one")
        if len(request.entity_ids) > self.max_entities:
            raise InvalidArgument(f"{len(request.entity_ids)} entity_ids is above the limit of {self.max_entities}")
        return features_pb2.GetOnlineFeaturesResponse(
            feature_set=self.feature_set, rows=[self._row(entity_id) for entity_id in request.entity_ids])

    def _row(self, entity_id: str) -> features_pb2.OnlineFeatures:
        stored = self.table.get(entity_id)
        ONLINE_LOOKUPS.labels("true" if stored else "false").inc()
        if not stored:
            return features_pb2.OnlineFeatures(entity_id=entity_id, found=False)
        event_time = Timestamp()
        event_time.FromMilliseconds(int(stored["event_time_ms"]))
        return features_pb2.OnlineFeatures(entity_id=entity_id, found=True, values=stored["values"],
                                           event_time=event_time)
