"""ingest's parse, route and validate steps (pure functions) under hypothesis: any bytes, any JSON
document (nested, huge numbers, wrong types for every field of the default stream's schema) and
any protobuf Event, under any content type, end in an Event or a ValidationError that names its
stage and reason, never in another exception (which would make the record a poison record, retried
max_attempts times before it is dead-lettered)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.v1 import events_pb2
from fuzzkit import CONTENT_TYPES, EXAMPLES_ENV, deep_json, examples, message_of
from services.common.streams import StreamCatalog
from services.ingest.validation import MAX_JSON_DEPTH, ValidationError, parse_record, route, validate_parsed

ROOT = Path(__file__).resolve().parents[2]
CATALOG = StreamCatalog(ROOT / "config" / "streams", default="default")
SCHEMA = CATALOG.get("default")
FIELDS = [SCHEMA.id_field, SCHEMA.entity_field, SCHEMA.time_field, SCHEMA.label_field,
          *(spec.name for spec in SCHEMA.fields)]

# Pure functions, so cheap (about 5 s for the three): 400 each, or DRIFTLINE_FUZZ_EXAMPLES.
PURE = settings(max_examples=examples(400), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**310),
                    st.floats(), st.text(max_size=30), st.sampled_from(["2024-01-01T00:00:00", "9999-99-99", "1e400"]))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=20)
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), documents, max_size=len(FIELDS) + 2)


def outcome(payload: bytes | None, content_type: str | None) -> str:
    try:
        parsed = parse_record(payload, content_type)
        validate_parsed(parsed, route(parsed, None, CATALOG))
    except ValidationError as refusal:
        assert refusal.reason, refusal
        return refusal.stage
    return "accepted"


def as_json(document) -> bytes:
    # json.dumps writes NaN and Infinity, which producers do send
    return json.dumps(document, default=str).encode()


@PURE
@given(records)
def test_any_json_object_is_an_event_or_a_refusal(record):
    outcome(as_json(record), "application/json")


@PURE
@given(st.binary(max_size=300), st.sampled_from([None, *(c.decode("latin-1") for c in CONTENT_TYPES if c)]))
def test_any_bytes_under_any_content_type_are_an_event_or_a_refusal(payload, content_type):
    outcome(payload, content_type)


@PURE
@given(message_of(events_pb2.Event.DESCRIPTOR))
def test_any_protobuf_event_is_an_event_or_a_refusal(event):
    outcome(event.SerializeToString(), "application/x-protobuf")


def test_deep_json_is_refused_when_parsed():
    assert outcome(deep_json(100_000), None) == "parse"
    assert outcome(deep_json(MAX_JSON_DEPTH), None) == "parse"  # the record object is one level itself
    assert outcome(deep_json(MAX_JSON_DEPTH - 2), None) == "validate"  # deep enough to pass, and no event


def test_a_targets_examples_are_its_own_unless_the_environment_names_a_number(monkeypatch):
    monkeypatch.delenv(EXAMPLES_ENV, raising=False)
    assert examples(400) == 400
    monkeypatch.setenv(EXAMPLES_ENV, "2000")
    assert examples(400) == 2000
    for wrong in ("0", "-5", "many"):
        monkeypatch.setenv(EXAMPLES_ENV, wrong)
        with pytest.raises(ValueError, match=EXAMPLES_ENV):
            examples(400)
