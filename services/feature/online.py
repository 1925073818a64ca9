"""gRPC `driftline.v1.FeatureStore`: the latest feature vector of each entity,
read from the processor's table of committed state (state.py).

A feature set is a stream of the catalogue (empty: the default stream); the
store answers for every stream it serves, including one added to the streams
folder since it started, and says NotFound for any other name.

A process holds the table partitions it is assigned; with several processes an
entity on another process's partition answers found=false (route by entity, or
run one worker per stream, until the store routes requests itself).
"""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.v1 import features_pb2, features_pb2_grpc
from services.common.errors import InvalidArgument, NotFound
from services.common.streams import StreamCatalog

from .catalog import current_schema, load_row
from .metrics import ONLINE_LOOKUPS


class FeatureStoreServicer(features_pb2_grpc.FeatureStoreServicer):
    def __init__(self, catalog: StreamCatalog, table, max_entities: int) -> None:
        self.catalog = catalog
        self.table = table
        self.max_entities = max_entities

    async def GetOnlineFeatures(self, request: features_pb2.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext) -> features_pb2.GetOnlineFeaturesResponse:
        schema = current_schema(self.catalog, request.feature_set)
        if schema is None:
            raise NotFound(f"unknown feature set {request.feature_set or self.catalog.default!r}; "
                           f"this store serves {self.catalog.names()}")
        if not request.entity_ids:
            raise InvalidArgument("no entity_ids: ask for at least one")
        if len(request.entity_ids) > self.max_entities:
            raise InvalidArgument(f"{len(request.entity_ids)} entity_ids is above the limit of {self.max_entities}")
        feature_set = features_pb2.FeatureSet(name=schema.stream, feature_names=schema.feature_names)
        return features_pb2.GetOnlineFeaturesResponse(
            feature_set=feature_set, rows=[self._row(schema.stream, entity_id) for entity_id in request.entity_ids])

    def _row(self, stream: str, entity_id: str) -> features_pb2.OnlineFeatures:
        stored, _ = load_row(self.table, stream, entity_id, self.catalog.default)
        ONLINE_LOOKUPS.labels("true" if stored else "false").inc()
        if not stored:
            return features_pb2.OnlineFeatures(entity_id=entity_id, found=False)
        event_time = Timestamp()
        event_time.FromMilliseconds(int(stored["event_time_ms"]))
        return features_pb2.OnlineFeatures(entity_id=entity_id, found=True, values=stored["values"],
                                           event_time=event_time)
