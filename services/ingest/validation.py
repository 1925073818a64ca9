"""Turns one raw record (JSON or protobuf bytes) into a validated
`driftline.v1.Event`, or says exactly what is wrong with it.

Functions of (bytes, content type, stream schemas), with no Kafka and no I/O
but the catalogue's look at its folder, so the same rules apply to the Kafka
path and the gRPC path and are unit-tested alone. A record goes through three
stages; the one that refuses it is named in its dead letter
(`driftline.errors.stage`):

1. parse: the record is a JSON object nested at most MAX_JSON_DEPTH deep, or a
   `driftline.v1.Event` when its content type is application/x-protobuf; any
   other content type is refused;
2. route: the stream the record names (its `driftline.stream` header, else
   for protobuf `Event.stream`, else none: the deployment's default stream,
   DRIFTLINE_STREAM) is in the catalogue (services/common/streams.py), and a
   header and an `Event.stream` that both name one name the same;
3. validate: the record obeys that stream's schema.

Rules of the validate stage (first failure wins, checked in this order: id,
entity, time, the schema's fields in schema order, label):
- `event_id` is a non-empty string. A record without one gets a
  deterministic id: a UUIDv5 of the stream and the record's validated content
  (the same content in two streams gets two ids), so an exact re-send of an
  id-less record is still de-duplicated (a random id would make every retry a
  new event). Ids are de-duplicated per stream;
- `entity_id` is a non-empty string (an integer is accepted and becomes its
  decimal string: numeric customer ids are common);
- `event_time` is epoch milliseconds (an integer, or a float with no fraction:
  JSON has one number type) or an ISO-8601 string (no zone means UTC);
- every required field is present and not null; every present field has its
  declared type (an integer field takes 30 or 30.0 but not 30.5; a number
  field takes any finite number; booleans are never numbers) and lies in
  [min, max];
- `label`, when present, is an integer in the label's range;
- fields the schema does not know are ignored (producers may add fields
  before the schema does) and are not carried into the Event.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from google.protobuf.message import DecodeError

from driftline.v1 import events_pb2
from services.common.kafka import JSON, PROTOBUF
from services.common.schema import FieldSpec, StreamSchema, Value, event_values, to_field_value
from services.common.streams import StreamCatalog

# Namespace of the ids given to records that arrive without one (a fixed, arbitrary UUID).
GENERATED_ID_NAMESPACE = uuid.UUID("5b0f3a4e-8d1c-4c1e-9a57-2f6d1c0e7b21")
# Latest instant an event_time may name: 9999-12-31T23:59:59.999Z.
MAX_EVENT_TIME_MS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# An event is one flat object; a record nested deeper is refused at parse, at once, instead of
# failing later on Python's recursion limit (100,000 brackets) as a poison record.
MAX_JSON_DEPTH = 32


# The step that refused a record (a dead letter's `driftline.errors.stage`): PARSE when its bytes
# could not be read as a record at all, ROUTE when the stream it names is unknown (or named twice,
# differently), VALIDATE when the record broke its stream's schema.
PARSE = "parse"
ROUTE = "route"
VALIDATE = "validate"


class ValidationError(ValueError):
    """A record that cannot become an Event: `reason` is for people, `field` names the culprit."""

    stage = VALIDATE

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class ParseError(ValidationError):
    """Bytes that are not a record: an unknown content type, bad JSON, not an object, bad protobuf."""

    stage = PARSE


class RouteError(ValidationError):
    """A record of no stream the deployment has, or one whose header and Event.stream disagree."""

    stage = ROUTE


# A parsed record: a JSON object, or the Event a protobuf producer sent.
Parsed = dict | events_pb2.Event


def media_type(content_type: str | None) -> str:
    """'application/json; charset=utf-8' -> 'application/json'; no header means JSON."""
    if not content_type:
        return JSON
    return content_type.split(";", 1)[0].strip().lower()


def validate_record(payload: bytes | None, content_type: str | None,
                    schema: StreamSchema) -> events_pb2.Event:
    """The validated Event for one raw record of `schema`'s stream; raises ValidationError."""
    return validate_parsed(parse_record(payload, content_type), schema)


def parse_record(payload: bytes | None, content_type: str | None) -> Parsed:
    """The record in the bytes, by content type: a JSON object or an Event; raises ParseError."""
    kind = media_type(content_type)
    if kind == PROTOBUF:
        return parse_protobuf(payload)
    if kind in (JSON, "text/json"):
        return parse_json(payload)
    raise ParseError(f"unsupported content-type {content_type!r}: send {JSON} or {PROTOBUF}")


def parse_json(payload: bytes | None) -> dict:
    """The JSON object in `payload`; raises ParseError.

    >>> parse_json(b'{"a": ' * 40 + b'1' + b'}' * 40)
    Traceback (most recent call last):
    ...
    services.ingest.validation.ParseError: JSON nested deeper than 32 levels: an event is one flat object
    """
    if not payload:
        raise ParseError("empty record: expected a JSON object")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels: an event is one flat object") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ParseError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ParseError(f"not a JSON object: got {_json_kind(doc)}")
    if _deeper_than(doc, MAX_JSON_DEPTH):
        raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels: an event is one flat object")
    return doc


def _deeper_than(doc: object, limit: int) -> bool:
    """Whether arrays and objects nest in `doc` more than `limit` levels (without recursion)."""
    level = [doc]
    for _ in range(limit):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def parse_protobuf(payload: bytes | None) -> events_pb2.Event:
    message = events_pb2.Event()
    try:
        message.ParseFromString(payload or b"")
    except DecodeError as exc:
        raise ParseError(f"not a valid {message.DESCRIPTOR.full_name} protobuf: {exc}") from None
    return message


def route(parsed: Parsed, header_stream: str | None, catalog: StreamCatalog) -> StreamSchema:
    """The schema of the stream a record names; raises RouteError.

    The `driftline.stream` header names it, else a protobuf record's `Event.stream`, else
    nothing does and it is the catalogue's default stream.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("sea", "hyper"):
    ...     _ = (folder / f"{name}.json").write_text(json.dumps({"stream": name, "fields": []}))
    >>> catalog = StreamCatalog(folder, default="sea")
    >>> route({}, "hyper", catalog).stream, route({}, None, catalog).stream
    ('hyper', 'sea')
    >>> route(events_pb2.Event(stream="hyper"), None, catalog).stream
    'hyper'
    >>> route({}, "nope", catalog)
    Traceback (most recent call last):
    ...
    services.ingest.validation.RouteError: unknown stream 'nope' (known: hyper, sea)
    """
    named_in_event = parsed.stream if isinstance(parsed, events_pb2.Event) else ""
    if header_stream and named_in_event and header_stream != named_in_event:
        raise RouteError(f"the driftline.stream header names stream {header_stream!r} but the Event's "
                         f"stream field names {named_in_event!r}", "stream")
    named = header_stream or named_in_event
    schema = catalog.get(named)
    if schema is None:
        stream = named or catalog.default
        known = f"(known: {', '.join(catalog.names()) or 'none'})"
        hint = "" if named else ": the record names no stream, so it is of the default one (DRIFTLINE_STREAM)"
        raise RouteError(f"unknown stream {stream!r} {known}{hint}", "stream")
    return schema


def validate_parsed(parsed: Parsed, schema: StreamSchema) -> events_pb2.Event:
    """A parsed record checked against the schema of its stream: the Event; raises ValidationError."""
    if isinstance(parsed, events_pb2.Event):
        return validate_event(parsed, schema)
    return validate_values(parsed, schema)


def validate_event(message: events_pb2.Event, schema: StreamSchema) -> events_pb2.Event:
    if message.stream and message.stream != schema.stream:
        raise ValidationError(f"event is for stream {message.stream!r}, not {schema.stream!r}", "stream")
    # The same rules as JSON: rebuild the flat record a JSON producer would have sent.
    doc: dict[str, object] = dict(event_values(message))
    if message.event_id:
        doc[schema.id_field] = message.event_id
    if message.entity_id:
        doc[schema.entity_field] = message.entity_id
    if message.HasField("event_time"):
        try:
            doc[schema.time_field] = message.event_time.ToMilliseconds()
        except ValueError as exc:  # seconds or nanos outside Timestamp's range
            raise ValidationError(f"field {schema.time_field!r}: {exc}", schema.time_field) from None
    if message.HasField("label"):
        doc[schema.label_field] = message.label
    return validate_values(doc, schema)


def validate_values(doc: Mapping[str, object], schema: StreamSchema) -> events_pb2.Event:
    """Checks a flat record against the schema and builds the Event."""
    event_id = doc.get(schema.id_field)
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        raise ValidationError(f"field {schema.id_field!r}: expected a non-empty string, got "
                              f"{_describe(event_id)}", schema.id_field)
    entity_id = _entity_id(doc.get(schema.entity_field), schema.entity_field)
    event_time_ms = _event_time_ms(doc.get(schema.time_field), schema.time_field)
    values = {spec.name: checked for spec in schema.fields
              if (checked := _field_value(spec, doc.get(spec.name))) is not None}
    label = _field_value(schema.label, doc.get(schema.label_field)) if schema.label else None

    event = events_pb2.Event(stream=schema.stream, entity_id=entity_id)
    event.event_time.FromMilliseconds(event_time_ms)
    for spec in schema.fields:
        if spec.name in values:
            event.fields[spec.name].CopyFrom(to_field_value(spec, values[spec.name]))
    if label is not None:
        event.label = int(label)
    event.event_id = event_id or generated_event_id(event)
    return event


def generated_event_id(event: events_pb2.Event) -> str:
    """A stable id for an id-less event: the same content always gets the same id."""
    content = event.SerializeToString(deterministic=True)
    return str(uuid.uuid5(GENERATED_ID_NAMESPACE, content.hex()))


# -- one value at a time ---------------------------------------------------------------------------


def _entity_id(value: object, name: str) -> str:
    if value is None:
        raise ValidationError(f"missing required field {name!r}", name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"field {name!r}: expected a non-empty string, got {_describe(value)}", name)
    return value


def _event_time_ms(value: object, name: str) -> int:
    if value is None:
        raise ValidationError(f"missing required field {name!r}", name)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"field {name!r}: {value!r} is not an ISO-8601 time", name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        # Integer arithmetic: float seconds * 1000 can land one millisecond short.
        millis = (parsed - EPOCH) // timedelta(milliseconds=1)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"field {name!r}: expected epoch milliseconds or an ISO-8601 string, got "
                              f"{_describe(value)}", name)
    elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValidationError(f"field {name!r}: {value!r} is not a whole number of epoch milliseconds", name)
    else:
        millis = int(value)
    if not 0 <= millis <= MAX_EVENT_TIME_MS:
        raise ValidationError(f"field {name!r}: {millis} ms is outside 1970..9999", name)
    return millis


def _field_value(spec: FieldSpec, value: object) -> Value | None:
    """The value, type- and range-checked; None for an absent optional field."""
    if value is None:
        if spec.required:
            raise ValidationError(f"missing required field {spec.name!r}", spec.name)
        return None
    checked = _typed(spec, value)
    if isinstance(checked, (int, float)) and not isinstance(checked, bool):
        if spec.min is not None and checked < spec.min:
            raise ValidationError(f"field {spec.name!r}: {_number(checked)} is below the minimum "
                                  f"{_number(spec.min)}", spec.name)
        if spec.max is not None and checked > spec.max:
            raise ValidationError(f"field {spec.name!r}: {_number(checked)} is above the maximum "
                                  f"{_number(spec.max)}", spec.name)
    return checked


def _typed(spec: FieldSpec, value: object) -> Value:
    expected = {"number": "a number", "integer": "an integer", "string": "a string", "bool": "a boolean"}
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.type == "string" and isinstance(value, str):
        return value
    if spec.type == "bool" and isinstance(value, bool):
        return value
    if spec.type in ("number", "integer") and is_number:
        try:
            as_double = float(value)  # type: ignore[arg-type]
        except OverflowError:  # a JSON integer with hundreds of digits
            as_double = math.inf
        if not math.isfinite(as_double):
            raise ValidationError(f"field {spec.name!r}: {_short(value)} is not a finite number", spec.name)
        if spec.type == "number":
            return as_double
        if isinstance(value, int) or as_double.is_integer():
            if not INT64_MIN <= int(value) <= INT64_MAX:  # type: ignore[arg-type]
                raise ValidationError(f"field {spec.name!r}: {_short(value)} does not fit a 64-bit integer",
                                      spec.name)
            return int(value)  # type: ignore[arg-type]
    raise ValidationError(f"field {spec.name!r}: expected {expected[spec.type]}, got {_describe(value)}",
                          spec.name)


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: object) -> str:
    """How a wrong value reads in a reason: its JSON kind and (short) text."""
    text = json.dumps(value, default=str)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_json_kind(value)} {text}"


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _number(value: float | int) -> str:
    """130.0 -> '130', 0.5 -> '0.5': ranges read like the schema file wrote them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
