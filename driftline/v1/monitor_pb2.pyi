import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureDrift(_message.Message):
    __slots__ = ("feature", "psi", "drifted", "ks", "psi_threshold", "ks_threshold", "window", "categorical", "js", "js_threshold")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    KS_FIELD_NUMBER: _ClassVar[int]
    PSI_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    KS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    JS_FIELD_NUMBER: _ClassVar[int]
    JS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    feature: str
    psi: float
    drifted: bool
    ks: float
    psi_threshold: float
    ks_threshold: float
    window: int
    categorical: bool
    js: float
    js_threshold: float
    def __init__(self, feature: _Optional[str] = ..., psi: _Optional[float] = ..., drifted: _Optional[bool] = ..., ks: _Optional[float] = ..., psi_threshold: _Optional[float] = ..., ks_threshold: _Optional[float] = ..., window: _Optional[int] = ..., categorical: _Optional[bool] = ..., js: _Optional[float] = ..., js_threshold: _Optional[float] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "signal", "statistic", "features", "value", "threshold", "change_sample", "detected_sample", "change_time", "detected_at", "topic", "partition", "change_offset", "detected_offset", "confirmed", "training_request_id", "description")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    DETECTED_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DETECTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    signal: str
    statistic: str
    features: _containers.RepeatedScalarFieldContainer[str]
    value: float
    threshold: float
    change_sample: int
    detected_sample: int
    change_time: _timestamp_pb2.Timestamp
    detected_at: _timestamp_pb2.Timestamp
    topic: str
    partition: int
    change_offset: int
    detected_offset: int
    confirmed: bool
    training_request_id: str
    description: str
    def __init__(self, alert_id: _Optional[str] = ..., signal: _Optional[str] = ..., statistic: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., change_sample: _Optional[int] = ..., detected_sample: _Optional[int] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., change_offset: _Optional[int] = ..., detected_offset: _Optional[int] = ..., confirmed: _Optional[bool] = ..., training_request_id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class JoinCounts(_message.Message):
    __slots__ = ("joined", "pending_labels", "pending_predictions", "late_labels", "too_late_labels", "unmatched_labels", "unmatched_predictions")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    PENDING_LABELS_FIELD_NUMBER: _ClassVar[int]
    PENDING_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    TOO_LATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_LABELS_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    joined: int
    pending_labels: int
    pending_predictions: int
    late_labels: int
    too_late_labels: int
    unmatched_labels: int
    unmatched_predictions: int
    def __init__(self, joined: _Optional[int] = ..., pending_labels: _Optional[int] = ..., pending_predictions: _Optional[int] = ..., late_labels: _Optional[int] = ..., too_late_labels: _Optional[int] = ..., unmatched_labels: _Optional[int] = ..., unmatched_predictions: _Optional[int] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("model_name", "model_version", "samples", "rolling_accuracy", "concept_drift", "change_time", "change_sample", "features", "computed_at", "training_request_id", "predicted_rows", "alerts", "join", "error_cusum", "error_cusum_threshold", "reference_error_rate", "adwin_delta", "prediction_drift", "expected_run_length", "production")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROLLING_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_DRIFT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    ERROR_CUSUM_FIELD_NUMBER: _ClassVar[int]
    ERROR_CUSUM_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    ADWIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_RUN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    samples: int
    rolling_accuracy: float
    concept_drift: bool
    change_time: _timestamp_pb2.Timestamp
    change_sample: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    computed_at: _timestamp_pb2.Timestamp
    training_request_id: str
    predicted_rows: int
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    join: JoinCounts
    error_cusum: float
    error_cusum_threshold: float
    reference_error_rate: float
    adwin_delta: float
    prediction_drift: bool
    expected_run_length: float
    production: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., samples: _Optional[int] = ..., rolling_accuracy: _Optional[float] = ..., concept_drift: _Optional[bool] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., change_sample: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., training_request_id: _Optional[str] = ..., predicted_rows: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., join: _Optional[_Union[JoinCounts, _Mapping]] = ..., error_cusum: _Optional[float] = ..., error_cusum_threshold: _Optional[float] = ..., reference_error_rate: _Optional[float] = ..., adwin_delta: _Optional[float] = ..., prediction_drift: _Optional[bool] = ..., expected_run_length: _Optional[float] = ..., production: _Optional[bool] = ...) -> None: ...

class WatchDriftStatsRequest(_message.Message):
    __slots__ = ("model_name", "include_current")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CURRENT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    include_current: bool
    def __init__(self, model_name: _Optional[str] = ..., include_current: _Optional[bool] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetDriftReportResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[DriftReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[DriftReport, _Mapping]]] = ...) -> None: ...
