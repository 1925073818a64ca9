import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Row(_message.Message):
    __slots__ = ("values", "event_id")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    event_id: str
    def __init__(self, values: _Optional[_Iterable[float]] = ..., event_id: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "rows", "request_key")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    request_key: str
    def __init__(self, model_name: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., request_key: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("scores", "label")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    label: int
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "variant", "predictions", "request_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    variant: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    request_id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., variant: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictedRow(_message.Message):
    __slots__ = ("event_id", "features", "scores", "label")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    features: _containers.RepeatedScalarFieldContainer[float]
    scores: _containers.RepeatedScalarFieldContainer[float]
    label: int
    def __init__(self, event_id: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., scores: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ...) -> None: ...

class PredictionLog(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "variant", "rows", "served_at", "feature_count", "features_f32", "score_count", "scores_f32", "labels_i32", "event_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_F32_FIELD_NUMBER: _ClassVar[int]
    SCORE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SCORES_F32_FIELD_NUMBER: _ClassVar[int]
    LABELS_I32_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: int
    variant: str
    rows: _containers.RepeatedCompositeFieldContainer[PredictedRow]
    served_at: _timestamp_pb2.Timestamp
    feature_count: int
    features_f32: bytes
    score_count: int
    scores_f32: bytes
    labels_i32: bytes
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., variant: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[PredictedRow, _Mapping]]] = ..., served_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_count: _Optional[int] = ..., features_f32: _Optional[bytes] = ..., score_count: _Optional[int] = ..., scores_f32: _Optional[bytes] = ..., labels_i32: _Optional[bytes] = ..., event_ids: _Optional[_Iterable[str]] = ...) -> None: ...
