import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "artifact_uri", "artifact_sha256", "dataset_id", "code_version", "params", "metrics", "feature_names", "metadata_uri", "created_at", "eval_uri", "idempotency_key")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    METADATA_URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EVAL_URI_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    artifact_uri: str
    artifact_sha256: str
    dataset_id: str
    code_version: str
    params: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    metadata_uri: str
    created_at: _timestamp_pb2.Timestamp
    eval_uri: str
    idempotency_key: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., artifact_uri: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., dataset_id: _Optional[str] = ..., code_version: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., feature_names: _Optional[_Iterable[str]] = ..., metadata_uri: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., eval_uri: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("model_name", "alias", "candidate_version", "baseline_version", "candidate_accuracy", "baseline_accuracy", "eval_rows", "eval_uri", "promoted", "reason", "decided_at", "idempotency_key")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVAL_URI_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    alias: str
    candidate_version: int
    baseline_version: int
    candidate_accuracy: float
    baseline_accuracy: float
    eval_rows: int
    eval_uri: str
    promoted: bool
    reason: str
    decided_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    def __init__(self, model_name: _Optional[str] = ..., alias: _Optional[str] = ..., candidate_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., candidate_accuracy: _Optional[float] = ..., baseline_accuracy: _Optional[float] = ..., eval_rows: _Optional[int] = ..., eval_uri: _Optional[str] = ..., promoted: _Optional[bool] = ..., reason: _Optional[str] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RegistryEvent(_message.Message):
    __slots__ = ("event_id", "kind", "model_name", "model_version", "alias", "previous_version", "decision", "occurred_at")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[RegistryEvent.Kind]
        VERSION_REGISTERED: _ClassVar[RegistryEvent.Kind]
        ALIAS_MOVED: _ClassVar[RegistryEvent.Kind]
        GATE_DECIDED: _ClassVar[RegistryEvent.Kind]
    KIND_UNSPECIFIED: RegistryEvent.Kind
    VERSION_REGISTERED: RegistryEvent.Kind
    ALIAS_MOVED: RegistryEvent.Kind
    GATE_DECIDED: RegistryEvent.Kind
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: RegistryEvent.Kind
    model_name: str
    model_version: ModelVersion
    alias: str
    previous_version: int
    decision: GateDecision
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[RegistryEvent.Kind, str]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[_Union[ModelVersion, _Mapping]] = ..., alias: _Optional[str] = ..., previous_version: _Optional[int] = ..., decision: _Optional[_Union[GateDecision, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterModelVersionRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("name", "version", "idempotency_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    idempotency_key: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("model_versions",)
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, model_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    reason: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetAliasRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("name", "version", "alias", "idempotency_key", "reason", "eval_uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVAL_URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    idempotency_key: str
    reason: str
    eval_uri: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., reason: _Optional[str] = ..., eval_uri: _Optional[str] = ...) -> None: ...

class GetGateDecisionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetGateDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[GateDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[GateDecision, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("model_name", "action", "alias", "version", "previous_version", "moved", "subject", "reason", "promoted", "gate_reason", "at")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[AuditRecord.Action]
        SET_ALIAS: _ClassVar[AuditRecord.Action]
        PROMOTE: _ClassVar[AuditRecord.Action]
    ACTION_UNSPECIFIED: AuditRecord.Action
    SET_ALIAS: AuditRecord.Action
    PROMOTE: AuditRecord.Action
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    GATE_REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    action: AuditRecord.Action
    alias: str
    version: int
    previous_version: int
    moved: bool
    subject: str
    reason: str
    promoted: bool
    gate_reason: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, model_name: _Optional[str] = ..., action: _Optional[_Union[AuditRecord.Action, str]] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., previous_version: _Optional[int] = ..., moved: _Optional[bool] = ..., subject: _Optional[str] = ..., reason: _Optional[str] = ..., promoted: _Optional[bool] = ..., gate_reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetAuditLogResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
