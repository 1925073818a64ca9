from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawRecord(_message.Message):
    __slots__ = ("key", "value", "content_type", "stream")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    content_type: str
    stream: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., content_type: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RawRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[RawRecord, _Mapping]]] = ...) -> None: ...

class RecordResult(_message.Message):
    __slots__ = ("accepted", "event_id", "reason", "field", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    event_id: str
    reason: str
    field: str
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., event_id: _Optional[str] = ..., reason: _Optional[str] = ..., field: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("results", "accepted", "rejected", "duplicates")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordResult]
    accepted: int
    rejected: int
    duplicates: int
    def __init__(self, results: _Optional[_Iterable[_Union[RecordResult, _Mapping]]] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
