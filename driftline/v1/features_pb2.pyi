import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureRecord(_message.Message):
    __slots__ = ("event_id", "entity_id", "feature_set", "event_time", "values", "label")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    entity_id: str
    feature_set: str
    event_time: _timestamp_pb2.Timestamp
    values: _containers.RepeatedScalarFieldContainer[float]
    label: int
    def __init__(self, event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., feature_set: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., values: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ...) -> None: ...

class FeatureSet(_message.Message):
    __slots__ = ("name", "feature_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("feature_set", "entity_ids")
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    feature_set: str
    entity_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature_set: _Optional[str] = ..., entity_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class OnlineFeatures(_message.Message):
    __slots__ = ("entity_id", "found", "values", "event_time")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    found: bool
    values: _containers.RepeatedScalarFieldContainer[float]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, entity_id: _Optional[str] = ..., found: _Optional[bool] = ..., values: _Optional[_Iterable[float]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("feature_set", "rows")
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    feature_set: FeatureSet
    rows: _containers.RepeatedCompositeFieldContainer[OnlineFeatures]
    def __init__(self, feature_set: _Optional[_Union[FeatureSet, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[OnlineFeatures, _Mapping]]] = ...) -> None: ...
