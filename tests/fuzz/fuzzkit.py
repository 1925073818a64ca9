"""The fuzzing engine of tests/fuzz and bench/fuzz.py: every gRPC method of the contracts, inputs
for each made by hypothesis from the method's own descriptor and then broken (random bytes,
truncated and bit-flipped protobuf, another method's message, nesting past any parser's limit,
strings of megabytes, shapes that claim gigabytes), a raw client that sends them as bytes, and the
verdict on each answer.

An answer is fine when it is OK or a status code that names the client's mistake or a limit
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, …). It is a failure when it is UNKNOWN or
INTERNAL (the server did not understand its own refusal), when a unary call runs past its
deadline (a hang), or when the server process is gone or stops answering its health check (a
crash). Memory is the server's resident set read from /proc: its growth over a run, and the peak
(VmHWM) while claimed-huge shapes are sent, since a claim must be checked before it allocates."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
import grpc
from google.protobuf import descriptor as D
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from driftline.v1 import (events_pb2, features_pb2, ingest_pb2, monitor_pb2, registry_pb2, serving_pb2,
                          training_pb2)
from inference import grpc_service_pb2
from services.common.deadletter import PREFIX as ERRORS
from services.common.kafka import Consumer

# Which service process answers each gRPC service of the contracts.
SERVERS = {"driftline.v1.Registry": "registry", "driftline.v1.Ingest": "ingest",
           "driftline.v1.FeatureStore": "feature", "driftline.v1.Predictor": "serving",
           "inference.GRPCInferenceService": "serving", "driftline.v1.Monitor": "monitor"}
_FILES = (registry_pb2, ingest_pb2, features_pb2, serving_pb2, monitor_pb2, grpc_service_pb2)

# Codes that say the server understood the input and refused it (or that a peer is not ready).
FINE = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                  "OUT_OF_RANGE", "ALREADY_EXISTS", "ABORTED", "UNAVAILABLE", "PERMISSION_DENIED",
                  "UNAUTHENTICATED", "CANCELLED"})
HANG = "HANG"
CRASH = "CRASH"

# The model the platform serves (fuzz_platform.py): names a handler knows reach past its lookups.
MODEL = "fuzz-model"
PLAUSIBLE = [MODEL, "production", "canary", "shadow", "default", "features", "FP32", "1", "f0"]

# Big enough to be several copies of trouble, small enough to pass gRPC's default 4 MiB limit.
HUGE = 3 << 20

EXAMPLES_ENV = "DRIFTLINE_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """max_examples of a per-input target of tests/fuzz (each gRPC method, each ingest parser form):
    `default` in `make test`, or DRIFTLINE_FUZZ_EXAMPLES for every such target (the long run)."""
    value = os.environ.get(EXAMPLES_ENV, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{EXAMPLES_ENV}={value!r}: a number of examples, at least 1")
    return int(value)


@dataclass(frozen=True)
class Method:
    service: str  # full name, e.g. driftline.v1.Registry
    name: str
    input: D.Descriptor
    server: str  # the process answering it (SERVERS)
    streaming: bool  # server streaming (Monitor.WatchDriftStats)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def api(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.name}"


def methods() -> list[Method]:
    """Every RPC of every service in the contracts."""
    found = []
    for module in _FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(Method(service.full_name, method.name, method.input_type,
                                    SERVERS[service.full_name], method.server_streaming))
    return found


# -- messages from descriptors ------------------------------------------------------------------

_T = D.FieldDescriptor
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
_NASTY_TEXT = st.sampled_from(["", "\x00", "../../etc/passwd", "s3://other-bucket/../../x", "production",
                               "é" * 1000, "%s%n" * 100, "a" * HUGE, "\U0001F600" * (HUGE // 4)])
_INT_EDGES = {32: [0, 1, -1, 2**31 - 1, -(2**31)], 64: [0, 1, -1, 2**63 - 1, -(2**63), 1 << 40]}


def _int_range(kind: int) -> tuple[int, int, int]:
    if kind in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32):
        return -(2**31), 2**31 - 1, 32
    if kind in (_T.TYPE_UINT32, _T.TYPE_FIXED32):
        return 0, 2**32 - 1, 32
    if kind in (_T.TYPE_UINT64, _T.TYPE_FIXED64):
        return 0, 2**64 - 1, 64
    return -(2**63), 2**63 - 1, 64


def _scalar(fd: D.FieldDescriptor, plausible: bool = False) -> st.SearchStrategy:
    kind = fd.type
    if plausible and kind == _T.TYPE_STRING:
        return st.sampled_from(PLAUSIBLE)
    if plausible and kind in (_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_ENUM):
        return st.integers(0, 3)
    if kind == _T.TYPE_STRING:
        return st.one_of(_TEXT, _NASTY_TEXT, st.sampled_from(PLAUSIBLE))
    if kind == _T.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\xff" * HUGE))
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind == _T.TYPE_ENUM:
        return st.integers(-3, 40)  # proto3 enums are open: unknown numbers parse
    if kind == _T.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == _T.TYPE_DOUBLE:
        return st.floats()
    low, high, bits = _int_range(kind)
    return st.one_of(st.sampled_from([v for v in _INT_EDGES[bits] if low <= v <= high]), st.integers(low, high))


def _repeated(fd: D.FieldDescriptor) -> bool:
    repeated = getattr(fd, "is_repeated", None)
    return repeated if repeated is not None else fd.label == _T.LABEL_REPEATED


def _is_map(fd: D.FieldDescriptor) -> bool:
    return fd.type == _T.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


@st.composite
def message_of(draw, descriptor: D.Descriptor, depth: int = 0, plausible: bool = False):
    """A message of `descriptor` with some of its fields set, to values from edge cases to huge
    (`plausible`: names and small numbers a handler knows, so the call gets past its look-ups)."""
    message = GetMessageClass(descriptor)()
    for fd in descriptor.fields:
        if not plausible and not draw(st.booleans()):  # a plausible request names everything
            continue
        target = getattr(message, fd.name)
        if _is_map(fd):
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            for key in draw(st.lists(_scalar(key_fd, plausible), max_size=3)):
                if value_fd.type == _T.TYPE_MESSAGE:
                    if depth < 3:
                        target[key].CopyFrom(draw(message_of(value_fd.message_type, depth + 1, plausible)))
                else:
                    target[key] = draw(_scalar(value_fd, plausible))
        elif fd.type == _T.TYPE_MESSAGE:
            if depth >= 3:
                continue
            element = message_of(fd.message_type, depth + 1, plausible)
            if _repeated(fd):
                for item in draw(st.lists(element, max_size=3)):
                    target.add().CopyFrom(item)
            else:
                target.CopyFrom(draw(element))
        elif _repeated(fd):
            target.extend(draw(st.lists(_scalar(fd, plausible), max_size=6)))
        else:
            setattr(message, fd.name, draw(_scalar(fd, plausible)))
    return message


def _serialized(descriptor: D.Descriptor) -> st.SearchStrategy[bytes]:
    return message_of(descriptor).map(lambda m: m.SerializeToString())


def _flip(pair: tuple[bytes, list[tuple[int, int]]]) -> bytes:
    data, flips = bytearray(pair[0] or b"\x00"), pair[1]
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data)


def _truncate(pair: tuple[bytes, int]) -> bytes:
    data, cut = pair
    return data[: cut % len(data)] if len(data) > 1 else b"\x0a"  # a length-delimited tag with no length


def bodies(method: Method, all_inputs: list[D.Descriptor]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind of input, request bytes) for `method`: made from its descriptor, then broken."""
    valid = _serialized(method.input)
    others = [d for d in all_inputs if d.full_name != method.input.full_name]
    return st.one_of(
        valid.map(lambda b: ("generated", b)),
        message_of(method.input, plausible=True).map(lambda m: ("plausible", m.SerializeToString())),
        st.binary(max_size=512).map(lambda b: ("random-bytes", b)),
        st.tuples(valid, st.integers(0, 1 << 16)).map(lambda p: ("truncated", _truncate(p))),
        st.tuples(valid, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                                  max_size=6)).map(lambda p: ("mutated", _flip(p))),
        st.sampled_from(others).flatmap(_serialized).map(lambda b: ("wrong-type", b)),
        st.sampled_from(deep_nesting()).map(lambda b: ("deep-nesting", b)),
    )


def deep_nesting() -> list[bytes]:
    """Protobuf that nests past every parser's limit: unknown groups opened 100,000 deep (never
    closed, and closed 200 deep), and a length-delimited field 1,000 levels deep."""
    opened = b"\x7b" * 100_000  # field 15, wire type 3 (start group)
    closed = b"\x7b" * 200 + b"\x7c" * 200
    nested = b""
    for _ in range(1000):
        nested = b"\x7a" + _varint(len(nested)) + nested  # field 15, length-delimited, holding the last
    return [opened, closed, nested]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def deep_json(depth: int) -> bytes:
    return b'{"event_id": "deep", "x": ' + b"[" * depth + b"]" * depth + b"}"


def targeted(method: Method, model: str) -> list[tuple[str, bytes]]:
    """The cases no generator should be trusted to find: huge strings in every string field, claimed
    shapes of gigabytes, requests of more rows or records than any limit, 100,000-deep JSON."""
    cases = [("deep-nesting", body) for body in deep_nesting()]
    for fd in method.input.fields:
        if fd.type == _T.TYPE_STRING and not _repeated(fd):
            cases.append(("huge-string", GetMessageClass(method.input)(**{fd.name: "x" * HUGE}).SerializeToString()))
    if method.api == "GRPCInferenceService.ModelInfer":
        tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor
        for shape in ([1 << 31, 1 << 31], [1 << 20, 1 << 10], [1 << 62, 3], [-1, 3], [1, 3, 1 << 30]):
            request = grpc_service_pb2.ModelInferRequest(model_name=model, inputs=[
                tensor(name="features", datatype="FP32", shape=shape)])
            cases.append(("claimed-shape", request.SerializeToString()))
            request.raw_input_contents.append(b"\x00" * 12)
            cases.append(("claimed-shape", request.SerializeToString()))
        typed = grpc_service_pb2.ModelInferRequest(model_name=model, inputs=[
            tensor(name="features", datatype="FP32", shape=[1 << 31, 1 << 31])])
        typed.inputs[0].contents.fp32_contents.extend([0.0] * 3)
        cases.append(("claimed-shape", typed.SerializeToString()))
    if method.api == "Predictor.Predict":
        for rows, width in ((70_000, 0), (100_000, 3), (2, 1 << 18)):
            request = serving_pb2.PredictRequest(model_name=model)
            request.rows.extend(serving_pb2.Row(values=[0.5] * width) for _ in range(rows))
            cases.append(("claimed-shape", request.SerializeToString()))
    if method.api == "Ingest.IngestBatch":
        for payload in (deep_json(100_000), deep_json(2_000), deep_json(100), b'{"a": ' * 50_000):
            cases.append(("deep-json", ingest_pb2.IngestRequest(records=[ingest_pb2.RawRecord(
                key="k", value=payload)]).SerializeToString()))
        many = ingest_pb2.IngestRequest(records=[ingest_pb2.RawRecord(value=b"{}") for _ in range(50_000)])
        cases.append(("claimed-shape", many.SerializeToString()))
    if method.api == "FeatureStore.GetOnlineFeatures":
        request = features_pb2.GetOnlineFeaturesRequest(feature_set="default",
                                                        entity_ids=[str(i) for i in range(200_000)])
        cases.append(("claimed-shape", request.SerializeToString()))
    return cases


# -- calling and judging ------------------------------------------------------------------------


def call(channel: grpc.Channel, method: Method, body: bytes, timeout: float) -> str:
    """Sends `body` as the request of `method`; the status code's name, or HANG past the deadline."""
    try:
        if method.streaming:
            # A watch streams until it is cancelled: an answer, or silence until a short deadline (a
            # refusal comes at once on loopback), is fine.
            stream = channel.unary_stream(method.path)(body, timeout=min(timeout, 0.5))
            try:
                next(iter(stream))
            except StopIteration:
                pass
            finally:
                stream.cancel()
            return "OK"
        channel.unary_unary(method.path)(body, timeout=timeout)
        return "OK"
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "OK" if method.streaming else HANG
        if code == grpc.StatusCode.CANCELLED and method.streaming:
            return "OK"
        return code.name


def healthy(channel: grpc.Channel, timeout: float = 5.0) -> bool:
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError:
        return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def reset_peak(pid: int) -> None:
    """Sets the process's peak resident set (VmHWM) to its current one (Linux's clear_refs "5"), so
    that a peak measured next is this input's, not the highest since the process started."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # not our process to reset (another user): peaks then count from its start


def memory(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak (VmHWM), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


@dataclass
class Tally:
    """What one API met: inputs by kind, answers by code, failures with the input that caused them."""

    api: str
    inputs: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    rss_growth: int = 0
    peak_growth: int = 0

    @property
    def crashes(self) -> int:
        return self.codes[CRASH]

    @property
    def hangs(self) -> int:
        return self.codes[HANG]

    def add(self, kind: str, code: str, body: bytes) -> None:
        self.inputs[kind] += 1
        self.codes[code] += 1
        if code not in FINE:
            self.failures.append({"kind": kind, "code": code, "input_head": body[:64].hex(), "size": len(body)})

    def to_json(self) -> dict:
        return {"api": self.api, "inputs": sum(self.inputs.values()), "by_kind": dict(self.inputs),
                "codes": dict(self.codes), "crashes": self.crashes, "hangs": self.hangs,
                "rss_growth_bytes": self.rss_growth, "peak_rss_growth_bytes": self.peak_growth,
                "failures": self.failures[:10]}


class Prober:
    """Sends inputs to one method of a running server and tallies the verdicts."""

    def __init__(self, method: Method, address: str, pid: int, alive, timeout: float = 10.0) -> None:
        self.method, self.pid, self.alive, self.timeout = method, pid, alive, timeout
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        self.tally = Tally(method.api)
        reset_peak(pid)
        self.start = memory(pid)

    def send(self, kind: str, body: bytes) -> str:
        code = call(self.channel, self.method, body, self.timeout)
        if code not in FINE and not self.alive():
            code = CRASH
        elif code in ("UNAVAILABLE", HANG) and not healthy(self.channel):
            code = CRASH
        self.tally.add(kind, code, body)
        return code

    def finish(self) -> Tally:
        if not self.alive() or not healthy(self.channel):
            self.tally.codes[CRASH] += 1
            self.tally.failures.append({"kind": "after the run", "code": CRASH})
        else:
            end = memory(self.pid)
            self.tally.rss_growth = end["VmRSS"] - self.start["VmRSS"]
            self.tally.peak_growth = end["VmHWM"] - self.start["VmHWM"]
        self.channel.close()
        return self.tally


# -- Kafka inputs -------------------------------------------------------------------------------

# Every topic a service consumes, the message its records must be, and the services reading it
# (each answers a record it cannot decode with a dead letter on its own topic).
KAFKA_INPUTS = {
    "events_raw": (events_pb2.Event, ("ingest",)),
    "events": (events_pb2.Event, ("feature",)),
    "labels": (events_pb2.Label, ("feature", "monitor")),
    "features": (features_pb2.FeatureRecord, ("monitor",)),
    "predictions": (serving_pb2.PredictionLog, ("monitor",)),
    "registry_events": (registry_pb2.RegistryEvent, ("serving", "monitor")),
    "training_requests": (training_pb2.TrainingRequest, ("trainer",)),
    "training_results": (training_pb2.TrainingResult, ("monitor",)),
}
CONTENT_TYPES = [None, b"application/json", b"application/x-protobuf", b"text/csv",
                 b"application/json; charset=latin-1",
                 b"\xff\xfe", b""]


def undecodable(message_type, value: bytes) -> bool:
    """Whether `value` fails to parse as `message_type` (what a consumer must dead-letter)."""
    try:
        message_type.FromString(value)
    except Exception:
        return True
    return False


def broken_values(message_type) -> st.SearchStrategy[bytes]:
    """Record values of a topic, generated and broken: random bytes, truncated and flipped protobuf,
    deep nesting, JSON where protobuf is expected."""
    valid = _serialized(message_type.DESCRIPTOR)
    return st.one_of(
        st.binary(min_size=1, max_size=256),
        st.tuples(valid, st.integers(0, 1 << 16)).map(_truncate),
        st.tuples(valid, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                                  max_size=6)).map(_flip),
        st.sampled_from(deep_nesting()),
        st.sampled_from([b'{"event_id": "x"}', deep_json(100_000)]),
    )


def certain_garbage() -> list[bytes]:
    """Values no protobuf message parses: a field number 0, a truncated varint, a length past the end,
    an unclosed group 100,000 deep."""
    return [b"\x00\x01", b"\x08\xff\xff\xff", b"\x0a\x7f\x01", b"\x7b" * 100_000]


def raw_records(seed_key: str) -> list[tuple[str, bytes | None, list]]:
    """Records for driftline.events.raw as outside producers get them wrong: (key, value, headers)."""
    cases: list[tuple[bytes | None, list]] = [
        (b"not json at all", []), (b"", []), (None, []), (b"[1, 2, 3]", []), (b'"a string"', []),
        (deep_json(100_000), []), (deep_json(5_000), []), (b'{"a": ' * 50_000, []),
        (b'{"event_id": "\xff\xfe"}', []), (json.dumps({"event_id": "x" * 100_000}).encode(), []),
        (b"\x00\x01garbage", [("content-type", b"application/x-protobuf")]),
        (b"\x7b" * 100_000, [("content-type", b"application/x-protobuf")]),
        (b'{"event_id": "e"}', [("content-type", b"text/csv")]),
        (b'{"event_id": "e"}', [("content-type", b"\xff\xfe")]),
        (b'{"event_id": "e"}', [("driftline.stream", b"no-such-stream")]),
        (b'{"event_id": "e"}', [("driftline.stream", b"\xff")]),
    ]
    return [(f"{seed_key}-{i}", value, headers) for i, (value, headers) in enumerate(cases)]


def produce(bootstrap: str, topic: str, records: list[tuple[str | None, bytes | None, list]]) -> list[int]:
    """Produces (key, value, headers) in order with plain confluent-kafka, as an outside producer
    would; the offset each was written at (the topics have one partition)."""
    offsets: list = [None] * len(records)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def delivered(index: int):
        def report(err, msg) -> None:
            assert err is None, err
            offsets[index] = msg.offset()
        return report

    for index, (key, value, headers) in enumerate(records):
        producer.produce(topic, value, key, headers=headers, on_delivery=delivered(index))
    assert producer.flush(30) == 0
    assert None not in offsets
    return offsets


def dead_letters_of(bootstrap: str, dlq: str, origin: str, offsets: set[int], timeout: float,
                    alive=lambda: True) -> dict[int, dict[str, str]]:
    """The dead letters on `dlq` of records of topic `origin` at `offsets`: offset → its
    driftline.errors.* headers, once all are there or at the timeout (read_committed)."""
    consumer = Consumer(bootstrap, f"fuzz-{uuid.uuid4().hex}", [dlq], read_committed=True)
    found: dict[int, dict[str, str]] = {}
    try:
        deadline = time.monotonic() + timeout
        while not offsets <= found.keys() and time.monotonic() < deadline and alive():
            for message in consumer.poll_messages(timeout=0.5):
                headers = {name: (value or b"").decode(errors="replace") for name, value in message.headers() or ()
                           if name.startswith(ERRORS)}
                if headers.get(ERRORS + "topic") == origin:
                    found[int(headers.get(ERRORS + "offset", -1))] = headers
    finally:
        consumer.close()
    return found


def report_table(tallies: list[Tally]) -> str:
    """One line per API: inputs, codes met, crashes, hangs, memory growth (MiB)."""
    lines = [f"{'api':44} {'inputs':>6} {'crash':>5} {'hang':>4} {'rss+MiB':>7} {'peak+MiB':>8}  codes"]
    for t in tallies:
        codes = ", ".join(f"{code} {n}" for code, n in t.codes.most_common())
        lines.append(f"{t.api:44} {sum(t.inputs.values()):>6} {t.crashes:>5} {t.hangs:>4} "
                     f"{t.rss_growth / 2**20:>7.1f} {t.peak_growth / 2**20:>8.1f}  {codes}")
    return "\n".join(lines)
