"""A stream's schema: which fields an event has, their types and ranges, and
the feature vector built from them.

The schema file (`<streams folder>/<stream>.json`, the folder DRIFTLINE_STREAMS_DIR)
is the one place a stream is described; ingest validates against it, the
feature service derives the feature names from it, and training and serving
use those names in that order.

    {"stream": "default",
     "id_field": "event_id", "entity_field": "entity_id", "time_field": "event_time",
     "label_field": "label", "label": {"type": "integer", "required": false, "min": 0, "max": 1},
     "fields": [{"name": "salary", "type": "number", "required": true, "min": 20000, "max": 150000}, ...],
     "entity_features": [{"name": "salary_entity_mean", "kind": "ewm_mean", "source": "salary",
                          "alpha": 0.2}]}

Feature names are the numeric fields (number, integer, bool) in schema order,
then the per-entity features in their order. String fields travel with the
event but are not features: a model input is a vector of floats.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Literal, Mapping

from driftline.v1 import events_pb2

FieldType = Literal["number", "integer", "string", "bool"]
FIELD_TYPES: tuple[str, ...] = ("number", "integer", "string", "bool")
NUMERIC_TYPES = ("number", "integer", "bool")
ENTITY_FEATURE_KINDS = ("ewm_mean",)

REPO_ROOT = Path(__file__).resolve().parents[2]

Value = float | int | str | bool


class SchemaError(ValueError):
    """The schema file itself is malformed."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    required: bool = True
    min: float | None = None
    max: float | None = None

    @property
    def is_feature(self) -> bool:
        return self.type in NUMERIC_TYPES


@dataclass(frozen=True, slots=True)
class EntityFeatureSpec:
    """A stateful feature kept per entity, e.g. an exponentially weighted mean of a field."""

    name: str
    source: str
    kind: str = "ewm_mean"
    alpha: float = 0.1  # weight of the newest value; 1.0 means "the last value"


@dataclass(frozen=True)
class StreamSchema:
    stream: str
    fields: tuple[FieldSpec, ...]
    entity_features: tuple[EntityFeatureSpec, ...] = ()
    id_field: str = "event_id"
    entity_field: str = "entity_id"
    time_field: str = "event_time"
    label_field: str = "label"
    label: FieldSpec | None = None
    # The model trained on this stream and served for it; empty: the stream's own name.
    model: str = ""
    _by_name: dict[str, FieldSpec] = dataclass_field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def feature_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.is_feature]

    @property
    def feature_names(self) -> list[str]:
        """The feature vector's names, in the order of its values."""
        return [f.name for f in self.feature_fields] + [e.name for e in self.entity_features]

    @property
    def classes(self) -> list[int]:
        """The label's values, from its integer range (e.g. [0, 1])."""
        if self.label is None or self.label.min is None or self.label.max is None:
            return []
        return list(range(int(self.label.min), int(self.label.max) + 1))

    @property
    def model_name(self) -> str:
        return self.model or self.stream

    def spec(self, name: str) -> FieldSpec:
        """The field called `name`; KeyError if the schema has none."""
        return self._by_name[name]

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> "StreamSchema":
        try:
            fields = tuple(_field_spec(f) for f in doc["fields"])  # type: ignore[union-attr]
            label_doc = doc.get("label")
            label_field = str(doc.get("label_field", "label"))
            label = _field_spec({"name": label_field, "required": False, **label_doc}) if label_doc else None
            entity = tuple(_entity_feature_spec(e) for e in doc.get("entity_features", ()))  # type: ignore[union-attr]
            schema = cls(
                stream=str(doc["stream"]), fields=fields, entity_features=entity,
                id_field=str(doc.get("id_field", "event_id")),
                entity_field=str(doc.get("entity_field", "entity_id")),
                time_field=str(doc.get("time_field", "event_time")),
                label_field=label_field, label=label, model=str(doc.get("model", "")))
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"malformed stream schema: {exc!r}") from exc
        _check_consistent(schema)
        return schema


def load_schema(path: str | Path) -> StreamSchema:
    """Reads a schema file; a relative path is tried from the working directory, then the repo root."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = REPO_ROOT / candidate
    try:
        doc = json.loads(candidate.read_text())
    except FileNotFoundError as exc:
        raise SchemaError(f"no stream schema at {path}") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"stream schema {candidate} is not valid JSON: {exc}") from exc
    return StreamSchema.from_dict(doc)


def _field_spec(doc: Mapping[str, object]) -> FieldSpec:
    spec = FieldSpec(name=str(doc["name"]), type=doc.get("type", "number"),  # type: ignore[arg-type]
                     required=bool(doc.get("required", True)),
                     min=_optional_float(doc.get("min")), max=_optional_float(doc.get("max")))
    if spec.type not in FIELD_TYPES:
        raise SchemaError(f"field {spec.name!r}: type {spec.type!r} is not one of {FIELD_TYPES}")
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        raise SchemaError(f"field {spec.name!r}: min {spec.min} is above max {spec.max}")
    return spec


def _entity_feature_spec(doc: Mapping[str, object]) -> EntityFeatureSpec:
    spec = EntityFeatureSpec(name=str(doc["name"]), source=str(doc["source"]),
                             kind=str(doc.get("kind", "ewm_mean")), alpha=float(doc.get("alpha", 0.1)))
    if spec.kind not in ENTITY_FEATURE_KINDS:
        raise SchemaError(f"entity feature {spec.name!r}: kind {spec.kind!r} is not one of {ENTITY_FEATURE_KINDS}")
    if not 0.0 < spec.alpha <= 1.0:
        raise SchemaError(f"entity feature {spec.name!r}: alpha {spec.alpha} is not in (0, 1]")
    return spec


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _check_consistent(schema: StreamSchema) -> None:
    names = schema.field_names + [e.name for e in schema.entity_features]
    reserved = {schema.id_field, schema.entity_field, schema.time_field, schema.label_field}
    if len(set(names)) != len(names):
        raise SchemaError("field and entity feature names must be unique")
    if clash := reserved & set(names):
        raise SchemaError(f"{sorted(clash)} are reserved for the id, entity, time and label")
    for feature in schema.entity_features:
        source = schema._by_name.get(feature.source)
        if source is None or not source.is_feature:
            raise SchemaError(f"entity feature {feature.name!r}: source {feature.source!r} is not a numeric field")
    if schema.label is not None and schema.label.type != "integer":
        raise SchemaError("the label must be an integer (a class index)")


# -- values on the wire: driftline.v1.FieldValue --------------------------------------------------


def to_field_value(spec: FieldSpec, value: Value) -> events_pb2.FieldValue:
    """A validated value in the FieldValue kind its declared type uses."""
    if spec.type == "number":
        return events_pb2.FieldValue(number=float(value))
    if spec.type == "integer":
        return events_pb2.FieldValue(integer=int(value))
    if spec.type == "bool":
        return events_pb2.FieldValue(flag=bool(value))
    return events_pb2.FieldValue(text=str(value))


def from_field_value(value: events_pb2.FieldValue) -> Value | None:
    """The Python value a FieldValue holds; None when no kind is set."""
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


def event_values(event: events_pb2.Event) -> dict[str, Value]:
    """An Event's fields as a plain mapping (what the feature transform takes)."""
    values = {}
    for name, wire in event.fields.items():
        value = from_field_value(wire)
        if value is not None:
            values[name] = value
    return values


def as_float(value: Value | None) -> float:
    """A feature value; a missing optional field becomes NaN (models see 'unknown', not 0)."""
    if value is None or isinstance(value, str):
        return math.nan
    return float(value)
