"""The monitor's batch read of feature records (event id and label, one numpy pass) against
protobuf's own parser, on random records and random damage."""

from __future__ import annotations

import numpy as np

from driftline.v1 import features_pb2
from services.monitor.codec import labelled_records
from monitor_fakes import Message, RecordingProducer


def _record(rng: np.random.Generator, i: int) -> features_pb2.FeatureRecord:
    record = features_pb2.FeatureRecord()
    if rng.random() < 0.9:  # an empty id is left out by the serializer
        record.event_id = rng.choice(["e", "é", "事件", "x" * 150])[: int(rng.integers(1, 200))] + str(i)
    if rng.random() < 0.5:
        record.entity_id = f"u{i % 7}"
    if rng.random() < 0.5:
        record.feature_set = "s"
    if rng.random() < 0.7:
        record.event_time.FromMilliseconds(int(rng.integers(0, 2**41)))
    record.values.extend(rng.normal(0, 1, int(rng.integers(0, 40))).tolist())
    if rng.random() < 0.8:
        record.label = int(rng.choice([0, 1, 2, 127]))
    return record


def _expected(values: list[bytes]):
    records = [features_pb2.FeatureRecord.FromString(v) for v in values]
    rows = [i for i, r in enumerate(records) if r.HasField("label")]
    return rows, [records[i].event_id for i in rows], [records[i].label for i in rows]


def test_the_batch_read_agrees_with_protobuf_on_well_formed_records():
    rng = np.random.default_rng(7)
    for trial in range(200):
        values = [_record(rng, trial * 100 + i).SerializeToString() for i in range(int(rng.integers(0, 60)))]
        found = labelled_records(values)
        assert found is not None  # the usual layout always takes the batch path
        assert found == _expected(values)


def test_the_batch_read_of_feature_sets_agrees_with_protobuf():
    rng = np.random.default_rng(9)
    for trial in range(200):
        values = [_record(rng, trial * 100 + i).SerializeToString() for i in range(int(rng.integers(0, 60)))]
        found = labelled_records(values, feature_sets=True)
        rows, ids, labels = _expected(values)
        sets = [features_pb2.FeatureRecord.FromString(values[i]).feature_set for i in rows]
        assert found == (rows, ids, labels, sets)
    odd = features_pb2.FeatureRecord(event_id="e", feature_set="a\x1fb", label=1).SerializeToString()
    assert labelled_records([odd], feature_sets=True) is None  # the separator: parsed record by record


def test_records_outside_the_layout_send_the_batch_record_by_record():
    ok = features_pb2.FeatureRecord(event_id="e1", values=[1.0], label=1).SerializeToString()
    for odd in (features_pb2.FeatureRecord(event_id="e2", label=-3).SerializeToString(),   # 10-byte varint
                features_pb2.FeatureRecord(event_id="e2", label=300).SerializeToString(),  # 2-byte varint
                ok + ok,                                                                  # fields repeated
                features_pb2.FeatureRecord(label=1).SerializeToString()[::-1],            # reordered bytes
                b"\x0a\x02\xff\xfe\x30\x01",                                               # id not UTF-8
                b"\x0a\x02e\x1f\x30\x01",                                                  # the separator in an id
                b"\x2a\x03abc\x30\x01"):                                                   # 3 bytes of doubles
        assert labelled_records([ok, odd]) is None


def test_damaged_records_never_yield_a_wrong_id_or_label():
    rng = np.random.default_rng(11)
    accepted = 0
    for trial in range(2000):
        value = bytearray(_record(rng, trial).SerializeToString())
        if value and rng.random() < 0.5:
            value[int(rng.integers(0, len(value)))] = int(rng.integers(0, 256))
        else:
            value = value[: int(rng.integers(0, len(value) + 1))]
        value = bytes(value)
        found = labelled_records([value])
        if found is None:
            continue
        accepted += 1
        try:
            expected = _expected([value])
        except Exception:  # protobuf rejects it: only a field the batch read does not parse can be at fault
            continue
        assert found == expected, value
    assert accepted > 100


def _monitor(producer: RecordingProducer):
    from services.common.settings import Topics
    from services.monitor.joiner import LabelJoin
    from services.monitor.codec import event_time_ms
    from services.monitor.monitor import DriftMonitor
    from services.monitor.policy import DriftPolicy
    from services.monitor.tracker import TrackerConfig

    class NoReferences:
        def get(self, model_name, version):
            return None

    return DriftMonitor(topics=Topics("t."), stream="s", producer=producer, references=NoReferences(),
                        policy=DriftPolicy(10, 60), join=LabelJoin(600, 1000, read_time=event_time_ms),
                        tracker_config=TrackerConfig(expected_run_length=20_000, calibration_streams=128),
                        report_every_samples=10, report_every_s=3600,
                        training_min_rows=10)


def test_a_batch_with_a_damaged_record_is_read_record_by_record():
    from prometheus_client import REGISTRY

    producer = RecordingProducer()
    monitor = _monitor(producer)
    topic = monitor.topics.features
    good = [features_pb2.FeatureRecord(event_id=f"e{i}", values=[1.0], label=i % 2) for i in range(3)]
    for record in good:
        record.event_time.FromMilliseconds(1000)
    values = [r.SerializeToString() for r in good]
    before = REGISTRY.get_sample_value("driftline_monitor_undecodable_records_total", {"topic": topic}) or 0
    monitor.handle([Message(topic, values[0], 0), Message(topic, b"\x0a\xff", 1), Message(topic, None, 2),
                    Message(topic, values[1], 3), Message(topic, values[2], 4)])
    after = REGISTRY.get_sample_value("driftline_monitor_undecodable_records_total", {"topic": topic})
    assert after == before + 1  # the damaged one; the empty value is an empty, unlabelled record
    assert monitor.join.counts()["pending_labels"] == 3
    assert producer.flushes == 0  # nothing was published, so nothing to wait for
    # the fast path: the same labels in one pass
    monitor.handle([Message(topic, v.replace(b"e", b"f", 1), 10 + i) for i, v in enumerate(values)])
    assert monitor.join.counts()["pending_labels"] == 6
