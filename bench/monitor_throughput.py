"""The monitor's consume rate beside a raw consume-and-decode loop of the same records,
on the real broker, in the same run.

    python bench/monitor_throughput.py [--events 100000] [--features 20] [--repeats 3]

Records: FeatureRecords with 20 features and a label (what `driftline.features` carries),
and — in the second scenario — the PredictionLogs of the same events (50 rows per log,
20 features and 2 scores per row, columnar as serving writes them), so the monitor does all
its work: the label join, the error-stream CUSUM and ADWIN, the data- and prediction-drift
windows, reports.

* raw: confluent-kafka `consume(500)` and `ParseFromString` of every record, nothing else;
* monitor: `services.common.kafka.Consumer.poll_messages(500)`, `DriftMonitor.handle`
  (decode, join, statistics, reports produced and flushed) and the asynchronous offset
  commit, as the monitor's worker runs them (max_poll_records a poll, its default).

Each side reads the topics from the beginning with a fresh consumer group, timed from its
first record to its last; the repeats alternate which side goes first, and the median of
`--repeats` is reported with every repeat's rates (this host's other load moves them a lot).
The raw loop parses every field of every record; the monitor reads what it uses — a feature
record's event id and label, in one numpy pass over a batch (`monitor.labelled_records`) —
and keeps the record's bytes for the event time, which it parses only if the label joins.
The process runs with the monitor service's garbage-collector setting (`gc_gen0_threshold`,
applied by `services.common.runtime.tune_gc`), both loops alike.
One JSON line per result, then a table.
The size matters: with 100k records the client has prefetched most of them before the raw
loop's clock starts (it then reads memory, ~1M records/s here); with 300k or more both sides
are fed at the broker's sustained rate. Report both (`--events 300000`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import logging

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer as RawConsumer  # noqa: E402

from driftline.v1 import features_pb2, serving_pb2  # noqa: E402
from services.common.kafka import Consumer, Producer, ensure_topics  # noqa: E402
from services.common.runtime import tune_gc  # noqa: E402
from services.common.settings import Topics  # noqa: E402
from services.monitor.codec import event_time_ms  # noqa: E402
from services.monitor.joiner import LabelJoin  # noqa: E402
from services.monitor.monitor import DriftMonitor  # noqa: E402
from services.monitor.policy import DriftPolicy  # noqa: E402
from services.monitor.psi import Bins, reference_bins  # noqa: E402
from services.monitor.references import ModelReference  # noqa: E402
from services.monitor.settings import MonitorSettings  # noqa: E402
from services.monitor.tracker import TrackerConfig  # noqa: E402


class StaticReferences:
    """The registry's answer, fixed: a reference for every feature and the score."""

    def __init__(self, names: list[str], rng: np.random.Generator) -> None:
        self.reference = ModelReference(
            feature_names=tuple(names),
            features={n: Bins.from_json(reference_bins(rng.normal(0, 1, 5000))) for n in names},
            scores=Bins.from_json(reference_bins(rng.uniform(0, 1, 5000))), eval_error=0.1, eval_rows=1000,
            reference_rows=5000)

    def get(self, model_name: str, version: int) -> ModelReference:
        return self.reference

    def close(self) -> None:
        pass


def produce(bootstrap: str, topics: Topics, events: int, features: int, rows_per_log: int) -> None:
    rng = np.random.default_rng(0)
    producer = Producer(bootstrap)
    values = rng.normal(0, 1, (events, features))
    labels = rng.integers(0, 2, events)
    for i in range(events):
        record = features_pb2.FeatureRecord(event_id=f"e{i}", entity_id=f"u{i % 100}", feature_set="bench",
                                            values=values[i].tolist(), label=int(labels[i]))
        record.event_time.FromMilliseconds(1_700_000_000_000 + i)
        producer.produce(topics.features, record, key=record.entity_id)
    for start in range(0, events, rows_per_log):
        # Columnar, as serving writes them: the log's rows as three flat buffers and its event ids.
        stop = min(events, start + rows_per_log)
        n = stop - start
        score = rng.uniform(size=n)
        right = rng.random(n) < 0.9
        predicted = np.where(right, labels[start:stop], 1 - labels[start:stop])
        log = serving_pb2.PredictionLog(
            request_id=uuid.uuid4().hex, model_name="bench", model_version=1, variant="production",
            feature_count=features, features_f32=values[start:stop].astype("<f4").tobytes(),
            score_count=2, scores_f32=np.c_[1 - score, score].astype("<f4").tobytes(),
            labels_i32=predicted.astype("<i4").tobytes(), event_ids=[f"e{i}" for i in range(start, stop)])
        log.served_at.GetCurrentTime()
        producer.produce(topics.predictions, log, key="bench")
    producer.flush()


def raw_rate(bootstrap: str, topic_types: dict, expected: int) -> float:
    consumer = RawConsumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(list(topic_types))
    seen, start = 0, None
    try:
        while seen < expected:
            for msg in consumer.consume(500, 1.0):
                if msg.error():
                    continue
                if start is None:
                    start = time.perf_counter()
                message = topic_types[msg.topic()]()
                message.ParseFromString(msg.value())
                seen += 1
        return seen / (time.perf_counter() - start)
    finally:
        consumer.close()


def monitor_rate(bootstrap: str, topics: Topics, inputs: list[str], expected: int, features: list[str]) -> tuple[float, dict]:
    producer = Producer(bootstrap)
    monitor = DriftMonitor(
        topics=topics, stream="bench", producer=producer, references=StaticReferences(features, np.random.default_rng(1)),
        policy=DriftPolicy(500, 600), join=LabelJoin(600, 100_000, read_time=event_time_ms),
        tracker_config=TrackerConfig(psi_window=1000, window_step=100, error_reference_samples=500,
                                     calibration_streams=64),
        report_every_samples=500, report_every_s=1.0, training_min_rows=1000)
    consumer = Consumer(bootstrap, f"bench-monitor-{uuid.uuid4().hex}", inputs)
    max_records = MonitorSettings().max_poll_records
    seen, start = 0, None
    try:
        while seen < expected:
            messages = consumer.poll_messages(max_records, 1.0)
            if not messages:
                continue
            if start is None:
                start = time.perf_counter()
            monitor.handle(messages)
            consumer.commit(asynchronous=True)  # as the monitor's worker does
            seen += len(messages)
        rate = seen / (time.perf_counter() - start)
        tracker = monitor._trackers.get(("bench", 1))
        state = {"joined": monitor.join.joined, "predicted_rows": tracker.predicted_rows if tracker else 0,
                 "windows": bool(tracker and tracker.window is not None)}
        return rate, state
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough records that neither side reads only what the client prefetched before the clock started.
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--rows-per-log", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", default="feature_records,features_and_predictions",
                        help="comma-separated: feature_records, features_and_predictions")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the drift alerts of the second scenario are not news here
    bootstrap = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(bootstrap, [topics.features, topics.predictions, topics.monitor_stats, topics.training_requests])
    names = [f"f{i}" for i in range(args.features)]
    t = time.perf_counter()
    produce(bootstrap, topics, args.events, args.features, args.rows_per_log)
    # The garbage-collector setting the monitor service runs with (run_service → tune_gc), for the
    # whole process: the raw loop runs under it too.
    tune_gc(MonitorSettings().gc_gen0_threshold)
    print(f"# produced {args.events} feature records and their prediction logs in {time.perf_counter() - t:.1f}s",
          file=sys.stderr, flush=True)
    logs = -(-args.events // args.rows_per_log)
    scenarios = {
        "feature_records": ({topics.features: features_pb2.FeatureRecord}, args.events),
        "features_and_predictions": ({topics.features: features_pb2.FeatureRecord,
                                      topics.predictions: serving_pb2.PredictionLog}, args.events + logs),
    }
    rows = []
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for scenario, (types, expected) in scenarios.items():
        if scenario not in chosen:
            continue
        raw, mon, state = [], [], {}
        for repeat in range(args.repeats):
            if repeat % 2:  # alternate the order, so neither side always runs on a warmer broker
                rate, state = monitor_rate(bootstrap, topics, list(types), expected, names)
                raw.append(raw_rate(bootstrap, types, expected))
            else:
                raw.append(raw_rate(bootstrap, types, expected))
                rate, state = monitor_rate(bootstrap, topics, list(types), expected, names)
            mon.append(rate)
        # rates in feature records per second: the prediction logs ride along in the second scenario
        per_event = args.events / expected
        record = {"bench": "monitor_throughput", "scenario": scenario, "features": args.features,
                  "events": args.events, "records": expected,
                  "raw_records_per_s": round(statistics.median(raw)),
                  "monitor_records_per_s": round(statistics.median(mon)),
                  "raw_events_per_s": round(statistics.median(raw) * per_event),
                  "monitor_events_per_s": round(statistics.median(mon) * per_event),
                  "ratio": round(statistics.median(mon) / statistics.median(raw), 3),
                  "monitor_state": state, "repeats": args.repeats,
                  "raw_each": [round(r) for r in raw], "monitor_each": [round(m) for m in mon],
                  "ratio_each": [round(m / r, 3) for m, r in zip(mon, raw)]}
        print(json.dumps(record), flush=True)
        rows.append(record)
    print()
    print(f"{'scenario':<26} {'raw rec/s':>10} {'monitor rec/s':>14} {'ratio':>7}")
    for r in rows:
        print(f"{r['scenario']:<26} {r['raw_records_per_s']:>10} {r['monitor_records_per_s']:>14} {r['ratio']:>7}")
    if rows and rows[0]["scenario"] == "feature_records":
        met = rows[0]["ratio"] >= 0.5
        print(f"acceptance: monitor / raw consume-and-decode of the same feature records = {rows[0]['ratio']:.2f} "
              f"(target >= 0.50): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
