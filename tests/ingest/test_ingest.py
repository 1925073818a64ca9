"""ingest: validation rules as pure functions, then the service as a real
process (`python -m services.ingest`) spoken to through Kafka and gRPC only."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc
from services.common.kafka import PROTOBUF, Producer, decode
from services.common.schema import load_schema
from services.common.settings import Topics
from services.common.streams import STREAM_HEADER, StreamCatalog
from services.ingest import deadletter
from services.ingest.deadletter import KafkaOrigin, Rejection, dead_letter_headers, grpc_origin
from services.ingest.dedup import RecentIds, dedup_key
from services.ingest.pipeline import IngestPipeline, RawInput
from services.ingest.validation import (
    PARSE, ROUTE, VALIDATE, ValidationError, parse_record, route, validate_parsed, validate_record,
)
from ingest_support import (
    agrawal, as_json, error_headers, own_headers, produce_located, read_to_end, read_topic, running_ingest,
)
from support import ServiceRun, free_port, unique_prefix, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(REPO_ROOT / "config/streams/default.json")


def as_protobuf(record: dict) -> bytes:
    event = events_pb2.Event(event_id=record.get("event_id", ""), entity_id=record["entity_id"])
    event.event_time.FromMilliseconds(record["event_time"])
    for spec in SCHEMA.fields:
        if spec.name in record:
            if spec.type == "integer":
                event.fields[spec.name].integer = record[spec.name]
            else:
                event.fields[spec.name].number = record[spec.name]
    if "label" in record:
        event.label = record["label"]
    return event.SerializeToString()


# -- validation: pure functions ---------------------------------------------------------------------


def test_a_valid_json_record_becomes_a_typed_event():
    event = validate_record(as_json(agrawal(age=30.0, event_time="2023-11-14T22:13:20.5Z")), None, SCHEMA)
    assert event.event_id == "e-1" and event.entity_id == "c-1" and event.stream == "default"
    assert event.event_time.ToMilliseconds() == 1_700_000_000_500
    assert event.fields["salary"].WhichOneof("kind") == "number"
    assert event.fields["age"].WhichOneof("kind") == "integer" and event.fields["age"].integer == 30
    assert event.label == 1
    assert set(event.fields) == set(SCHEMA.field_names)


@pytest.mark.parametrize("payload, reason, field", [
    (b"{not json", "not valid JSON: ", ""),
    (b"[1, 2]", "not a JSON object: got array", ""),
    (b"", "empty record: expected a JSON object", ""),
    (as_json(agrawal(salary=None)), "missing required field 'salary'", "salary"),
    (as_json(agrawal(age=130)), "field 'age': 130 is above the maximum 80", "age"),
    (as_json(agrawal(salary=100.5)), "field 'salary': 100.5 is below the minimum 20000", "salary"),
    (as_json(agrawal(age="thirty")), "field 'age': expected an integer, got string \"thirty\"", "age"),
    (as_json(agrawal(age=30.5)), "field 'age': expected an integer, got number 30.5", "age"),
    (as_json(agrawal(loan=True)), "field 'loan': expected a number, got boolean true", "loan"),
    (b'{"event_id": "e", "entity_id": "c", "event_time": 1, "salary": NaN}',
     "field 'salary': nan is not a finite number", "salary"),
    (as_json(agrawal(loan=10**400)), "field 'loan': 1000000000000000000000000000000000000... is not a finite",
     "loan"),
    (as_json(agrawal(label=2)), "field 'label': 2 is above the maximum 1", "label"),
    (as_json(agrawal(entity_id="")), "field 'entity_id': expected a non-empty string, got string \"\"",
     "entity_id"),
    (as_json(agrawal(event_id=7)), "field 'event_id': expected a non-empty string, got number 7", "event_id"),
    (as_json(agrawal(event_time="yesterday")), "field 'event_time': 'yesterday' is not an ISO-8601 time",
     "event_time"),
    (as_json(agrawal(event_time=-5)), "field 'event_time': -5 ms is outside 1970..9999", "event_time"),
])
def test_invalid_json_records_are_refused_with_the_reason(payload, reason, field):
    with pytest.raises(ValidationError) as caught:
        validate_record(payload, "application/json", SCHEMA)
    assert caught.value.reason.startswith(reason)
    assert caught.value.field == field


def test_a_protobuf_record_follows_the_same_rules():
    event = validate_record(as_protobuf(agrawal()), PROTOBUF, SCHEMA)
    assert event == validate_record(as_json(agrawal()), None, SCHEMA)
    with pytest.raises(ValidationError, match="field 'age': 10 is below the minimum 20"):
        validate_record(as_protobuf(agrawal(age=10)), PROTOBUF, SCHEMA)
    with pytest.raises(ValidationError, match="not a valid driftline.v1.Event protobuf"):
        validate_record(b"\xff\xff\xff", PROTOBUF, SCHEMA)
    with pytest.raises(ValidationError, match="unsupported content-type 'text/csv'"):
        validate_record(b"a,b", "text/csv", SCHEMA)


@pytest.mark.parametrize("payload, content_type, stage", [
    (b"{not json", None, PARSE),
    (b"[1, 2]", None, PARSE),
    (b"", None, PARSE),
    (None, None, PARSE),
    (as_json(agrawal()), "text/csv", PARSE),
    (b"\xff\xff\xff", PROTOBUF, PARSE),
    (as_json(agrawal(age=130)), None, VALIDATE),
    (as_json(agrawal(salary=None)), None, VALIDATE),
    (as_protobuf(agrawal(age=10)), PROTOBUF, VALIDATE),
])
def test_a_refusal_names_the_stage_that_refused_the_record(payload, content_type, stage):
    with pytest.raises(ValidationError) as caught:
        validate_record(payload, content_type, SCHEMA)
    assert caught.value.stage == stage


def test_dead_letter_headers_keep_the_records_own_and_replace_stale_error_headers():
    own = [("content-type", b"application/json"), ("trace-id", b"t-1"), ("empty", None),
           ("Driftline.Errors.Reason", b"an earlier rejection")]
    rejection = Rejection("field 'age': 130 is above the maximum 80", "age", VALIDATE)
    headers = dead_letter_headers(own, rejection, KafkaOrigin("raw", 2, 41), rejected_at_ms=7)
    assert headers[:3] == own[:3]
    assert dict(headers[3:]) == {
        "driftline.errors.reason": b"field 'age': 130 is above the maximum 80", "driftline.errors.field": b"age",
        "driftline.errors.stage": b"validate", "driftline.errors.service": b"ingest",
        "driftline.errors.timestamp": b"7", "driftline.errors.topic": b"raw", "driftline.errors.partition": b"2",
        "driftline.errors.offset": b"41"}
    assert len(headers) == 3 + 8

    from_grpc = dict(dead_letter_headers(None, Rejection("not valid JSON: x", "", PARSE), grpc_origin(4)))
    assert from_grpc["driftline.errors.grpc.method"] == b"/driftline.v1.Ingest/IngestBatch"
    assert from_grpc["driftline.errors.grpc.index"] == b"4"
    assert from_grpc["driftline.errors.field"] == b"" and from_grpc["driftline.errors.stage"] == b"parse"
    assert not {deadletter.TOPIC, deadletter.PARTITION, deadletter.OFFSET} & set(from_grpc)


def test_a_record_without_an_event_id_gets_one_derived_from_its_content():
    first = validate_record(as_json(agrawal(event_id=None)), None, SCHEMA).event_id
    reordered = json.dumps(dict(reversed(list(agrawal(event_id=None).items())))).encode()
    assert validate_record(reordered, None, SCHEMA).event_id == first  # same content, same id
    assert uuid.UUID(first).version == 5
    assert validate_record(as_json(agrawal(event_id=None, age=31)), None, SCHEMA).event_id != first


def test_recent_ids_claim_once_release_on_abort_and_forget_the_oldest():
    a, b, c = (dedup_key("sea", name) for name in "abc")
    recent = RecentIds(capacity=2)
    assert recent.claim(a) and not recent.claim(a)
    recent.release([a])  # an aborted batch: its retry is not a duplicate
    assert recent.claim(a)
    recent.confirm([a])
    recent.release([a])  # confirmed ids stay
    assert a in recent
    assert recent.claim(b) and recent.claim(c)
    assert a not in recent and len(recent) == 2


def test_ids_read_back_from_the_topic_are_published_ones_that_an_abort_does_not_release():
    a, b = dedup_key("sea", "a"), dedup_key("sea", "b")
    recent = RecentIds(capacity=2)
    assert recent.claim(a)  # this process's open transaction holds a
    recent.seen([a])  # while another replica's committed a
    recent.release([a])  # ours aborts: a stays known
    assert not recent.claim(a)
    recent.seen([b, a])  # seen again: the most recent, so b goes first
    recent.seen([dedup_key("sea", "c")])
    assert a in recent and b not in recent


# -- several streams: routing by the stream a record names -------------------------------------------

# Two streams with different fields, as in the multi-stream deployments of issue 10.
SEA = {"stream": "sea", "label": {"type": "integer", "min": 0, "max": 1},
       "fields": [{"name": f"x{i}", "type": "number", "min": 0, "max": 10} for i in (1, 2, 3)]}
HYPER = {"stream": "hyper", "label": {"type": "integer", "min": 0, "max": 1},
         "fields": [{"name": name, "type": "number", "min": 0, "max": 1} for name in "abcde"]}
WIND = {"stream": "wind", "fields": [{"name": "speed", "type": "number", "min": 0}]}


def write_stream(folder: Path, schema: dict) -> None:
    """Writes a schema the way a deployment should: whole, then renamed into the folder."""
    staged = folder / f".{schema['stream']}.json.tmp"
    staged.write_text(json.dumps(schema))
    staged.rename(folder / f"{schema['stream']}.json")


def sea(event_id: str | None, **overrides) -> dict:
    record = {"event_id": event_id, "entity_id": "s-1", "event_time": 1_700_000_000_000,
              "x1": 1.0, "x2": 2.0, "x3": 3.0, "label": 0}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def hyper(event_id: str | None, **overrides) -> dict:
    record = {"event_id": event_id, "entity_id": "h-1", "event_time": 1_700_000_000_000,
              "a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5, "label": 1}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def event_of(stream: str, record: dict) -> events_pb2.Event:
    """A protobuf Event as a protobuf producer of `stream` would send it ("" leaves Event.stream unset)."""
    event = events_pb2.Event(stream=stream, event_id=record.get("event_id", ""), entity_id=record["entity_id"])
    event.event_time.FromMilliseconds(record["event_time"])
    for name, value in record.items():
        if name not in ("event_id", "entity_id", "event_time", "label"):
            event.fields[name].number = value
    if "label" in record:
        event.label = record["label"]
    return event


@pytest.fixture
def catalog(tmp_path) -> StreamCatalog:
    for schema in (SEA, HYPER):
        write_stream(tmp_path, schema)
    return StreamCatalog(tmp_path, default="sea")


def routed(payload: bytes, content_type: str | None, stream: str | None, catalog: StreamCatalog):
    parsed = parse_record(payload, content_type)
    return validate_parsed(parsed, route(parsed, stream, catalog))


def test_a_record_is_validated_against_the_schema_of_the_stream_it_names(catalog):
    by_header = routed(as_json(hyper("h-1")), None, "hyper", catalog)
    assert (by_header.stream, set(by_header.fields)) == ("hyper", set("abcde"))
    unnamed = routed(as_json(sea("s-1")), None, None, catalog)  # no header: the default stream
    assert (unnamed.stream, set(unnamed.fields)) == ("sea", {"x1", "x2", "x3"})
    assert routed(as_json(sea("s-1")), None, "", catalog) == unnamed
    # A protobuf record names its stream in Event.stream; a header that agrees changes nothing.
    by_event = routed(event_of("hyper", hyper("h-2")).SerializeToString(), PROTOBUF, None, catalog)
    assert by_event == routed(event_of("hyper", hyper("h-2")).SerializeToString(), PROTOBUF, "hyper", catalog)
    assert by_event == routed(event_of("", hyper("h-2")).SerializeToString(), PROTOBUF, "hyper", catalog)
    assert by_event == routed(as_json(hyper("h-2")), None, "hyper", catalog)


@pytest.mark.parametrize("payload, content_type, stream, stage, reason, field", [
    # valid only under sea's schema, sent as hyper: hyper's reason
    (as_json(sea("s-1")), None, "hyper", VALIDATE, "missing required field 'a'", "a"),
    (as_json(hyper("h-1")), None, None, VALIDATE, "missing required field 'x1'", "x1"),
    (as_json(sea("s-1")), None, "nope", ROUTE, "unknown stream 'nope' (known: hyper, sea)", "stream"),
    (event_of("nope", sea("s-1")).SerializeToString(), PROTOBUF, None, ROUTE,
     "unknown stream 'nope' (known: hyper, sea)", "stream"),
    (event_of("sea", sea("s-1")).SerializeToString(), PROTOBUF, "hyper", ROUTE,
     "the driftline.stream header names stream 'hyper' but the Event's stream field names 'sea'", "stream"),
    # parse comes before route: bytes that are no record are a parse error whatever they name
    (b"{not json", None, "nope", PARSE, "not valid JSON: ", ""),
])
def test_a_record_of_an_unknown_or_another_stream_is_refused_with_that_streams_reason(
        catalog, payload, content_type, stream, stage, reason, field):
    with pytest.raises(ValidationError) as caught:
        routed(payload, content_type, stream, catalog)
    assert (caught.value.stage, caught.value.field) == (stage, field)
    assert caught.value.reason.startswith(reason)


def test_a_record_that_names_no_stream_when_the_default_one_is_unknown_is_told_so(tmp_path):
    write_stream(tmp_path, SEA)
    with pytest.raises(ValidationError) as caught:
        route(parse_record(as_json(sea("s-1")), None), None, StreamCatalog(tmp_path, default="default"))
    assert caught.value.stage == ROUTE
    assert caught.value.reason == ("unknown stream 'default' (known: sea): the record names no stream, "
                                   "so it is of the default one (DRIFTLINE_STREAM)")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match=r"^unknown stream 'x' \(known: none\)$"):
        route({}, "x", StreamCatalog(empty))


def test_one_schema_validation_refuses_a_protobuf_event_of_another_stream():
    with pytest.raises(ValidationError) as caught:
        validate_record(event_of("sea", agrawal()).SerializeToString(), PROTOBUF, SCHEMA)
    assert (caught.value.reason, caught.value.field) == ("event is for stream 'sea', not 'default'", "stream")


def test_ids_are_de_duplicated_per_stream_and_generated_ids_differ_by_stream(catalog):
    pipeline = IngestPipeline(catalog, Topics(), publisher=None, recent=RecentIds(10), source="test")

    def raw(record: dict, stream: str) -> RawInput:
        return RawInput(as_json(record), None, None, grpc_origin(0), headers=[(STREAM_HEADER, stream.encode())])

    first = pipeline.classify(raw(sea("same"), "sea"))
    assert first.event is not None and first.event.stream == "sea"
    assert pipeline.classify(raw(hyper("same"), "hyper")).event is not None  # another stream's "same"
    assert pipeline.classify(raw(sea("same"), "sea")).duplicate_id == "same"
    # Identical id-less content in two streams (no fields, so it fits both) gets two ids.
    bare = {"entity_id": "x", "event_time": 1}
    for schema in (SEA, HYPER):
        write_stream(catalog.folder, {**schema, "stream": f"bare-{schema['stream']}", "fields": []})
    catalog.refresh(force=True)
    ids = {pipeline.classify(raw(bare, name)).event.event_id for name in ("bare-sea", "bare-hyper")}
    assert len(ids) == 2


# -- the service, as a process -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest(kafka_bootstrap, tmp_path_factory):
    """One ingest process for the module's Kafka and gRPC tests (each test uses its own ids)."""
    with running_ingest(kafka_bootstrap, tmp_path_factory.mktemp("ingest") / "ingest.log",
                        DRIFTLINE_INGEST_MAX_BATCH_RECORDS="5") as running:
        yield running


def test_health_reports_serving_for_the_ingest_service(ingest):
    with grpc.insecure_channel(ingest.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "driftline.v1.Ingest"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_raw_records_are_published_once_or_dead_lettered_as_they_came_with_reason_and_origin(ingest):
    topics = ingest.topics
    json_type = [("content-type", b"application/json; charset=utf-8")]
    trace = [("trace-id", b"t-9")]
    raw = [
        (b"c-1", as_json(agrawal("k-1")), None),
        (b"c-1", as_json(agrawal("k-1")), None),  # re-sent: published once
        (b"c-2", as_protobuf(agrawal("k-2", entity_id="c-2")), [("content-type", PROTOBUF.encode())]),
        (b"bad-json", b"{not json", trace),
        (b"no-salary", as_json(agrawal("k-3", salary=None)), None),
        (b"old-age", as_json(agrawal("k-4", age=130)), [*json_type, *trace]),
        (b"thirty", as_json(agrawal("k-5", age="thirty")), json_type),
        (b"csv", as_json(agrawal("k-7")), [("content-type", b"text/csv"), *trace]),  # valid JSON, wrong type
        (None, None, None),  # a tombstone
        (b"c-6", as_json(agrawal("k-6", entity_id="c-6")), None),  # behind the bad ones: still published
    ]
    started_ms = time.time_ns() // 1_000_000
    located = produce_located(ingest.bootstrap, topics.events_raw, raw)
    bad = raw[3:9]

    origin_names = ("driftline.errors.topic", "driftline.errors.partition", "driftline.errors.offset")

    def origin(index: int) -> dict[str, str]:
        partition, offset = located[index]
        return {"driftline.errors.topic": topics.events_raw, "driftline.errors.partition": str(partition),
                "driftline.errors.offset": str(offset)}

    def ours(messages: list) -> list:
        return [m for m in messages if (error_headers(m).get("driftline.errors.topic"), m.key()) in
                {(topics.events_raw, key) for key, _, _ in bad}]

    rejected = ours(read_topic(ingest.bootstrap, topics.events_dlq, until=lambda got: len(ours(got)) >= 6))
    # The value, key and headers are the record's own bytes, as produced.
    assert [(m.key(), m.value(), own_headers(m)) for m in rejected] == [
        (key, value, headers or []) for key, value, headers in bad]
    errors = [error_headers(m) for m in rejected]
    assert [(e["driftline.errors.field"], e["driftline.errors.stage"]) for e in errors] == [
        ("", "parse"), ("salary", "validate"), ("age", "validate"), ("age", "validate"), ("", "parse"),
        ("", "parse")]
    reasons = [e["driftline.errors.reason"] for e in errors]
    assert reasons[0].startswith("not valid JSON: ")
    assert reasons[1:] == [
        "missing required field 'salary'", "field 'age': 130 is above the maximum 80",
        "field 'age': expected an integer, got string \"thirty\"",
        "unsupported content-type 'text/csv': send application/json or application/x-protobuf",
        "empty record: expected a JSON object"]
    assert [{name: e[name] for name in origin_names} for e in errors] == [origin(index) for index in range(3, 9)]
    assert {e["driftline.errors.service"] for e in errors} == {"ingest"}
    now_ms = time.time_ns() // 1_000_000
    assert all(started_ms <= int(e["driftline.errors.timestamp"]) <= now_ms for e in errors)
    assert all(len(e) == 8 for e in errors)  # no gRPC origin headers

    # The dead letters after the last valid record are committed, so the events topic is complete.
    events = read_to_end(ingest.bootstrap, topics.events, events_pb2.Event)
    kafka_events = [e for e in events if e.event_id.startswith("k-")]
    assert [(e.event_id, e.entity_id) for e in kafka_events] == [("k-1", "c-1"), ("k-2", "c-2"), ("k-6", "c-6")]


KCAT = shutil.which("kcat") or "/usr/bin/kcat"


def test_a_json_producer_reads_its_dead_letters_with_kcat(ingest):
    """The way a user would: kcat shows the producer's own JSON, with the reason in the headers."""
    assert Path(KCAT).exists(), f"{KCAT} is missing: apt-get install -y kcat"
    event_id = f"cat-{uuid.uuid4().hex[:8]}"
    payload = json.dumps(agrawal(event_id, age=130)).encode()
    located = produce_located(ingest.bootstrap, ingest.topics.events_raw,
                              [(event_id.encode(), payload, [("content-type", b"application/json")])])
    partition, offset = located[0]
    command = [KCAT, "-b", ingest.bootstrap, "-C", "-t", ingest.topics.events_dlq, "-o", "beginning", "-e", "-q",
               "-X", "isolation.level=read_committed", "-f", "%k %h %s\n"]

    def our_line() -> str | None:
        out = subprocess.run(command, capture_output=True, timeout=30, check=True).stdout.decode()
        return next((line for line in out.splitlines() if line.startswith(f"{event_id} ")), None)

    line = wait_for(our_line, 30, f"kcat to show the dead letter of {event_id}", every=0.5)
    headers, value = line[len(event_id) + 1:].split(" {", 1)
    assert "{" + value == payload.decode()  # its own JSON, byte for byte
    named = dict(pair.split("=", 1) for pair in headers.split(","))
    timestamp = named.pop("driftline.errors.timestamp")
    assert timestamp.isdigit()
    assert named == {
        "content-type": "application/json",
        "driftline.errors.reason": "field 'age': 130 is above the maximum 80", "driftline.errors.field": "age",
        "driftline.errors.stage": "validate", "driftline.errors.service": "ingest",
        "driftline.errors.topic": ingest.topics.events_raw, "driftline.errors.partition": str(partition),
        "driftline.errors.offset": str(offset)}


def test_grpc_batches_answer_per_record_in_order_and_are_idempotent(ingest):
    request = ingest_pb2.IngestRequest(records=[
        ingest_pb2.RawRecord(key="c-1", value=as_json(agrawal("g-1"))),
        ingest_pb2.RawRecord(key="c-2", value=as_json(agrawal("g-2", loan=-1.0)), content_type="application/json"),
        ingest_pb2.RawRecord(value=as_protobuf(agrawal("g-3")), content_type=PROTOBUF),
        ingest_pb2.RawRecord(value=as_json(agrawal("g-1"))),
    ])
    with grpc.insecure_channel(ingest.address) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        first = stub.IngestBatch(request, timeout=30)
        again = stub.IngestBatch(request, timeout=30)

    assert [(r.accepted, r.event_id, r.duplicate, r.field) for r in first.results] == [
        (True, "g-1", False, ""), (False, "", False, "loan"), (True, "g-3", False, ""), (True, "g-1", True, "")]
    assert first.results[1].reason == "field 'loan': -1 is below the minimum 0"
    assert (first.accepted, first.rejected, first.duplicates) == (3, 1, 1)
    assert [r.duplicate for r in again.results] == [True, False, True, True]

    def from_grpc(messages: list) -> list:
        return [m for m in messages if "driftline.errors.grpc.method" in error_headers(m)]

    rejected = from_grpc(read_topic(ingest.bootstrap, ingest.topics.events_dlq,
                                    until=lambda got: len(from_grpc(got)) >= 2))
    # The record as submitted: its value, its key, its content type as the raw topic's header.
    assert [(m.key(), m.value(), own_headers(m)) for m in rejected] == [
        (b"c-2", request.records[1].value, [("content-type", b"application/json")])] * 2
    errors = [error_headers(m) for m in rejected]
    assert [(e["driftline.errors.grpc.method"], e["driftline.errors.grpc.index"], e["driftline.errors.field"],
             e["driftline.errors.stage"], e["driftline.errors.reason"]) for e in errors] == [
        ("/driftline.v1.Ingest/IngestBatch", "1", "loan", "validate", "field 'loan': -1 is below the minimum 0")] * 2
    assert not any("driftline.errors.topic" in e or "driftline.errors.offset" in e for e in errors)
    events = read_to_end(ingest.bootstrap, ingest.topics.events, events_pb2.Event)
    assert [e.event_id for e in events if e.event_id.startswith("g-")] == ["g-1", "g-3"]


@pytest.mark.parametrize("count, message", [(0, "empty batch"), (6, "batch of 6 records is above the limit of 5")])
def test_empty_and_oversized_batches_are_invalid_arguments(ingest, count, message):
    request = ingest_pb2.IngestRequest(records=[
        ingest_pb2.RawRecord(value=as_json(agrawal(f"x-{i}"))) for i in range(count)])
    with grpc.insecure_channel(ingest.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            ingest_pb2_grpc.IngestStub(channel).IngestBatch(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_a_restarted_ingest_resumes_after_its_committed_transactions(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    topics = Topics(prefix)
    port = free_port()
    env = {"DRIFTLINE_TOPIC_PREFIX": prefix, "DRIFTLINE_GRPC_PORT": str(port)}
    producer = Producer(kafka_bootstrap)

    def published(count: int) -> list:
        return read_topic(kafka_bootstrap, topics.events, until=lambda got: len(got) >= count)

    with ServiceRun("ingest", env, tmp_path / "first.log") as first:
        first.wait_serving(f"127.0.0.1:{port}", timeout=45)
        for i in range(3):
            producer.produce_raw(topics.events_raw, as_json(agrawal(f"r-{i}")))
        producer.flush()
        published(3)
        assert first.stop(timeout=30) == 0

    with ServiceRun("ingest", env, tmp_path / "second.log") as second:
        second.wait_serving(f"127.0.0.1:{port}", timeout=45)
        producer.produce_raw(topics.events_raw, as_json(agrawal("r-3")))
        producer.flush()
        published(4)
        events = read_to_end(kafka_bootstrap, topics.events, events_pb2.Event)
    assert [e.event_id for e in events] == ["r-0", "r-1", "r-2", "r-3"]


# -- several streams on one ingest process ------------------------------------------------------------

# StreamCatalog looks at its folder at most once a second (min_interval_s): a stream written to the
# folder is known to every record ingest reads a second later.
CATALOG_LOOKS_EVERY_S = 1.0


@pytest.fixture
def streams_ingest(kafka_bootstrap, tmp_path):
    """An ingest process whose catalogue is a folder of this test's: sea (the default) and hyper."""
    folder = tmp_path / "streams"
    folder.mkdir()
    for schema in (SEA, HYPER):
        write_stream(folder, schema)
    with running_ingest(kafka_bootstrap, tmp_path / "ingest.log", DRIFTLINE_STREAMS_DIR=str(folder),
                        DRIFTLINE_STREAM="sea") as running:
        yield running, folder


def json_of(stream: str | None) -> list[tuple[str, bytes]]:
    """The headers `driftline produce --stream NAME` sends (no stream header for None)."""
    return [("content-type", b"application/json"), *([(STREAM_HEADER, stream.encode())] if stream else [])]


def test_one_ingest_validates_each_stream_against_its_own_schema_and_picks_up_a_new_one(streams_ingest):
    ingest, folder = streams_ingest
    topics = ingest.topics
    when = 1_650_000_000_000  # the raw records' own Kafka timestamps, kept on their dead letters
    raw = [
        (b"s-1", as_json(sea("s-1")), json_of("sea")),
        (b"h-1", as_json(hyper("h-1")), json_of("hyper")),
        (b"h-bad", as_json(sea("h-bad")), json_of("hyper")),  # valid only under sea's schema
        (b"n-1", as_json(sea("n-1")), json_of("nope")),  # a stream the deployment does not have
        (b"d-1", as_json(sea("d-1")), json_of(None)),  # no header: the default stream, sea
        (b"h-2", event_of("hyper", hyper("h-2")).SerializeToString(), [("content-type", PROTOBUF.encode())]),
        (b"m-1", event_of("sea", sea("m-1")).SerializeToString(),  # header and Event.stream disagree
         [("content-type", PROTOBUF.encode()), (STREAM_HEADER, b"hyper")]),
        (b"same-s", as_json(sea("same")), json_of("sea")),  # one id in two streams: two events
        (b"same-h", as_json(hyper("same")), json_of("hyper")),
        (b"h-3", as_json(hyper("h-3", a=1.5)), json_of("hyper")),  # hyper's range, not sea's
        (b"s-2", as_json(sea("s-2")), json_of("sea")),  # behind the bad ones: still published
    ]
    raw = [(*record, when + index) for index, record in enumerate(raw)]
    located = produce_located(ingest.bootstrap, topics.events_raw, raw)
    bad = {2: ("validate", "a", "missing required field 'a'"),
           3: ("route", "stream", "unknown stream 'nope' (known: hyper, sea)"),
           6: ("route", "stream", "the driftline.stream header names stream 'hyper' but the Event's stream "
                                  "field names 'sea'"),
           9: ("validate", "a", "field 'a': 1.5 is above the maximum 1")}

    rejected = read_topic(ingest.bootstrap, topics.events_dlq, until=lambda got: len(got) >= len(bad))
    assert len(rejected) == len(bad)
    assert [(m.key(), m.value(), own_headers(m)) for m in rejected] == [raw[i][:3] for i in bad]
    assert [m.timestamp() for m in rejected] == [(TIMESTAMP_CREATE_TIME, when + i) for i in bad]
    errors = [error_headers(m) for m in rejected]
    assert [(e["driftline.errors.stage"], e["driftline.errors.field"], e["driftline.errors.reason"])
            for e in errors] == list(bad.values())
    assert [e["driftline.errors.offset"] for e in errors] == [str(located[i][1]) for i in bad]

    events = read_to_end(ingest.bootstrap, topics.events, events_pb2.Event)
    sea_fields, hyper_fields = {"x1", "x2", "x3"}, set("abcde")
    assert [(e.event_id, e.stream, set(e.fields)) for e in events] == [
        ("s-1", "sea", sea_fields), ("h-1", "hyper", hyper_fields), ("d-1", "sea", sea_fields),
        ("h-2", "hyper", hyper_fields), ("same", "sea", sea_fields), ("same", "hyper", hyper_fields),
        ("s-2", "sea", sea_fields)]

    # A third stream, written into the folder while ingest runs: accepted with no restart.
    write_stream(folder, WIND)
    time.sleep(CATALOG_LOOKS_EVERY_S + 0.5)
    wind = {"event_id": "w-1", "entity_id": "turbine-1", "event_time": 1_700_000_000_000, "speed": 12.5}
    produce_located(ingest.bootstrap, topics.events_raw, [(b"w-1", as_json(wind), json_of("wind"))])
    published = read_topic(ingest.bootstrap, topics.events, until=lambda got: len(got) >= len(events) + 1)
    newest = decode(published[-1].value(), events_pb2.Event)
    assert (newest.event_id, newest.stream, dict(newest.fields)) == (
        "w-1", "wind", {"speed": events_pb2.FieldValue(number=12.5)})
    ingest.run.assert_running()
    assert len(read_to_end(ingest.bootstrap, topics.events_dlq)) == len(bad)  # and no dead letter more


def test_a_grpc_batch_of_several_streams_answers_each_record_by_its_own_stream(streams_ingest):
    """One request, one transaction: a bad record of one stream does not touch another's."""
    ingest, _ = streams_ingest
    request = ingest_pb2.IngestRequest(records=[
        ingest_pb2.RawRecord(key="g-s", value=as_json(sea("g-s")), stream="sea"),
        ingest_pb2.RawRecord(key="g-bad", value=as_json(sea("g-bad")), stream="hyper"),
        ingest_pb2.RawRecord(key="g-h", value=as_json(hyper("g-h")), stream="hyper"),
        ingest_pb2.RawRecord(key="g-n", value=as_json(hyper("g-n")), content_type="application/json", stream="nope"),
        ingest_pb2.RawRecord(key="g-d", value=as_json(sea("g-d"))),  # no stream: the default one
        ingest_pb2.RawRecord(value=event_of("hyper", hyper("g-p")).SerializeToString(), content_type=PROTOBUF),
    ])
    with grpc.insecure_channel(ingest.address) as channel:
        response = ingest_pb2_grpc.IngestStub(channel).IngestBatch(request, timeout=30)
    assert [(r.accepted, r.event_id, r.field, r.reason) for r in response.results] == [
        (True, "g-s", "", ""), (False, "", "a", "missing required field 'a'"), (True, "g-h", "", ""),
        (False, "", "stream", "unknown stream 'nope' (known: hyper, sea)"), (True, "g-d", "", ""),
        (True, "g-p", "", "")]
    assert (response.accepted, response.rejected, response.duplicates) == (4, 2, 0)

    events = read_to_end(ingest.bootstrap, ingest.topics.events, events_pb2.Event)
    assert [(e.event_id, e.stream) for e in events] == [("g-s", "sea"), ("g-h", "hyper"), ("g-d", "sea"),
                                                        ("g-p", "hyper")]
    rejected = read_topic(ingest.bootstrap, ingest.topics.events_dlq, until=lambda got: len(got) >= 2)
    # The stream a request record names is its dead letter's driftline.stream header, as on the raw topic.
    assert [(m.key(), own_headers(m)) for m in rejected] == [
        (b"g-bad", [(STREAM_HEADER, b"hyper")]),
        (b"g-n", [("content-type", b"application/json"), (STREAM_HEADER, b"nope")])]
    assert [(error_headers(m)["driftline.errors.stage"], error_headers(m)["driftline.errors.grpc.index"])
            for m in rejected] == [("validate", "1"), ("route", "3")]
