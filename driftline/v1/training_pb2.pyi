import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingRequest(_message.Message):
    __slots__ = ("request_id", "model_name", "stream", "window_start", "window_end", "reason", "params", "min_rows", "requested_at", "trigger", "reuse_candidates")
    class Trigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TRIGGER_UNSPECIFIED: _ClassVar[TrainingRequest.Trigger]
        FIRST_MODEL: _ClassVar[TrainingRequest.Trigger]
        DRIFT: _ClassVar[TrainingRequest.Trigger]
        REFRESH: _ClassVar[TrainingRequest.Trigger]
    TRIGGER_UNSPECIFIED: TrainingRequest.Trigger
    FIRST_MODEL: TrainingRequest.Trigger
    DRIFT: TrainingRequest.Trigger
    REFRESH: TrainingRequest.Trigger
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REUSE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    stream: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    reason: str
    params: _containers.ScalarMap[str, str]
    min_rows: int
    requested_at: _timestamp_pb2.Timestamp
    trigger: TrainingRequest.Trigger
    reuse_candidates: int
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., stream: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., min_rows: _Optional[int] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trigger: _Optional[_Union[TrainingRequest.Trigger, str]] = ..., reuse_candidates: _Optional[int] = ...) -> None: ...

class TrainingResult(_message.Message):
    __slots__ = ("request_id", "model_name", "status", "version", "dataset_id", "metrics", "error", "promoted", "finished_at", "reused")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[TrainingResult.Status]
        SUCCEEDED: _ClassVar[TrainingResult.Status]
        FAILED: _ClassVar[TrainingResult.Status]
    STATUS_UNSPECIFIED: TrainingResult.Status
    SUCCEEDED: TrainingResult.Status
    FAILED: TrainingResult.Status
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    status: TrainingResult.Status
    version: int
    dataset_id: str
    metrics: _containers.ScalarMap[str, float]
    error: str
    promoted: bool
    finished_at: _timestamp_pb2.Timestamp
    reused: bool
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., status: _Optional[_Union[TrainingResult.Status, str]] = ..., version: _Optional[int] = ..., dataset_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., promoted: _Optional[bool] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reused: _Optional[bool] = ...) -> None: ...
