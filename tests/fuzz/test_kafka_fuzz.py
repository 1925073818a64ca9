"""Every Kafka topic a service consumes, with records it cannot read: random bytes, truncated and
bit-flipped protobuf, nesting past the parser's limit, JSON where protobuf is due, under any
content-type header; and events.raw with what outside producers get wrong (bad JSON, 100,000-deep
JSON, unknown content types and streams). Each such record must come out on the dead-letter topic
of every service that reads the topic, with its reason and origin, and every service must keep
going (alive, healthy, and past the records: the last one sent is dead-lettered too)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.v1 import features_pb2
from fuzzkit import (CONTENT_TYPES, KAFKA_INPUTS, Tally, broken_values, certain_garbage, dead_letters_of, healthy,
                     memory, message_of, produce, raw_records, reset_peak, undecodable)
from services.common.datasets import segments_prefix
from services.common.streams import StreamCatalog

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = 25
# Below the broker's message limit (about 1 MB), with room for a dead letter's headers.
KAFKA_MAX = 500_000
DRAW = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def drawn(message_type) -> list[tuple[bytes, list]]:
    """EXAMPLES broken values of `message_type` that do not parse, each with a content-type header."""
    found: list = []

    @DRAW
    @given(broken_values(message_type).filter(lambda v: len(v) < KAFKA_MAX and undecodable(message_type, v)),
           st.sampled_from(CONTENT_TYPES))
    def collect(value, content_type):
        found.append((value, [] if content_type is None else [("content-type", content_type)]))

    collect()
    return found


@pytest.mark.parametrize("input_topic", list(KAFKA_INPUTS))
def test_unreadable_records_are_dead_lettered(fuzz_platform, fuzz_report, input_topic):
    message_type, readers = KAFKA_INPUTS[input_topic]
    topics, bootstrap = fuzz_platform.topics, fuzz_platform.infra.kafka_bootstrap
    topic = getattr(topics, input_topic)
    for service in readers:
        reset_peak(fuzz_platform.pid(service))
    before = {service: memory(fuzz_platform.pid(service)) for service in readers}
    if input_topic == "events_raw":
        records = raw_records("fuzz")
    else:
        values = [(v, []) for v in certain_garbage()] + drawn(message_type)
        records = [(f"fuzz-{i}", value, headers) for i, (value, headers) in enumerate(values)]
    records.append(("fuzz-last", certain_garbage()[0], []))
    offsets = produce(bootstrap, topic, records)
    for service in readers:
        letters = dead_letters_of(bootstrap, topics.dead_letters(service), topic, set(offsets), timeout=90,
                                  alive=lambda: fuzz_platform.alive(service))
        missing = [(offset, records[i][1][:40]) for i, offset in enumerate(offsets) if offset not in letters]
        assert not missing, f"{service} dead-lettered {len(letters)} of {len(offsets)}; missing {missing[:5]}"
        assert all(headers.get("driftline.errors.reason") for headers in letters.values()), letters
        assert all(headers.get("driftline.errors.service") == service for headers in letters.values()), letters
        assert fuzz_platform.alive(service), fuzz_platform.log_tails()
        if service in fuzz_platform.ports and service != "trainer":
            with grpc.insecure_channel(fuzz_platform.address(service)) as channel:
                assert healthy(channel), f"{service} stopped answering its health check"
        after = memory(fuzz_platform.pid(service))
        fuzz_report.append(kafka_tally(f"kafka {input_topic} → {service}", records, letters,
                                       after["VmRSS"] - before[service]["VmRSS"],
                                       after["VmHWM"] - before[service]["VmHWM"]))
        if input_topic == "events_raw":
            stages = {letters[offsets[i]]["driftline.errors.stage"] for i, (_, value, _) in enumerate(records)
                      if value is not None and value.startswith(b'{"event_id": "deep"')}
            # Refused when parsed, at once, not after max_attempts as a record that keeps raising.
            assert stages == {"parse"}, stages


def kafka_tally(api: str, records, letters, growth: int, peak_growth: int) -> Tally:
    """The report's line for one topic and reader: records sent, dead letters by stage."""
    tally = Tally(api)
    tally.inputs["unreadable record"] = len(records)
    tally.codes.update(f"dead letter ({h.get('driftline.errors.stage', '?')})" for h in letters.values())
    tally.rss_growth, tally.peak_growth = growth, peak_growth
    return tally


READABLE = settings(DRAW, max_examples=8)


@pytest.mark.parametrize("input_topic", [t for t in KAFKA_INPUTS if t != "events_raw"])
def test_readable_nonsense_does_not_stop_a_reader(fuzz_platform, input_topic):
    """Records that parse as the topic's message but hold anything at all (huge strings, extreme
    numbers, unknown enum values, inconsistent buffers): each reader may apply, skip or
    dead-letter them, but must stay up and get past them to the unreadable record sent last."""
    message_type, readers = KAFKA_INPUTS[input_topic]
    topics, bootstrap = fuzz_platform.topics, fuzz_platform.infra.kafka_bootstrap
    topic = getattr(topics, input_topic)
    values: list[bytes] = []

    @READABLE
    @given(message_of(message_type.DESCRIPTOR).map(lambda m: m.SerializeToString())
           .filter(lambda v: len(v) < KAFKA_MAX))
    def collect(value):
        values.append(value)

    collect()
    records = [(f"readable-{i}", value, []) for i, value in enumerate(values)] + [("last", certain_garbage()[0], [])]
    offsets = produce(bootstrap, topic, records)
    for service in readers:
        letters = dead_letters_of(bootstrap, topics.dead_letters(service), topic, {offsets[-1]}, timeout=120,
                                  alive=lambda: fuzz_platform.alive(service))
        assert fuzz_platform.alive(service), fuzz_platform.log_tails()
        assert offsets[-1] in letters, f"{service} did not get past {len(values)} readable records"


def test_an_impossible_time_does_not_take_its_neighbours_out_of_the_segments(fuzz_platform):
    """A FeatureRecord whose event_time lies outside Timestamp's range, polled with valid ones: it is
    skipped, and the records polled with it still reach the stream's segments (raised, it ended the
    segment writer's round and its neighbours were never written)."""
    schema = StreamCatalog(ROOT / "config" / "streams", default="default").get("default")
    values = [1.0] * len(schema.feature_names)
    bad = features_pb2.FeatureRecord(event_id="bad-time", entity_id="e", feature_set="default", values=values)
    bad.event_time.seconds = 1 << 40
    good = [features_pb2.FeatureRecord(event_id=f"after-bad-time-{i}", entity_id="e", feature_set="default",
                                       values=values) for i in range(3)]
    for record in good:
        record.event_time.FromMilliseconds(1_700_000_000_000)
    produce(fuzz_platform.infra.kafka_bootstrap, fuzz_platform.topics.features,
            [(r.entity_id, r.SerializeToString(), []) for r in (bad, *good)])
    store = fuzz_platform.store()

    def segment_ids() -> set[str]:
        found: set[str] = set()
        for key in store.list_keys(segments_prefix("default")):
            if key.endswith(".parquet"):
                found |= set(pq.read_table(io.BytesIO(store.get_bytes(key))).column("event_id").to_pylist())
        return found

    wanted = {r.event_id for r in good}
    deadline = time.monotonic() + 60
    while not wanted <= segment_ids() and time.monotonic() < deadline and fuzz_platform.alive("feature"):
        time.sleep(0.5)
    assert wanted <= segment_ids() and "bad-time" not in segment_ids()
