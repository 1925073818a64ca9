"""Shared by the registry and trainer tests: Agrawal rows written as feature segments
exactly as the storage contract says (so no feature service is needed), small real
models, and reading a topic until a condition holds. Processes, ports and polling: support.py."""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.common.kafka import Consumer, Record
from services.common.objectstore import ObjectStore

os.environ.setdefault("RIVER_DATA", tempfile.mkdtemp(prefix="river-data-"))  # river must not write to ~
from river.datasets import synth  # noqa: E402

SCHEMA_FIELDS = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]
FEATURES = [*SCHEMA_FIELDS, "salary_entity_mean"]
T0_MS = 1_700_000_000_000  # event times are in the past, so an open window ("up to now") holds them
STEP_MS = 1_000


# -- data ------------------------------------------------------------------------------------

def agrawal_rows(n: int, *, function: int = 0, seed: int = 1, start: int = 0, entities: int = 50) -> list[dict]:
    """n labelled feature rows of Agrawal `function`; row i has event time T0 + (start + i) s.

    salary_entity_mean is an exponentially weighted mean of salary per entity,
    like the feature service's stateful feature.
    """
    means: dict[str, float] = {}
    rows = []
    for i, (x, y) in enumerate(synth.Agrawal(classification_function=function, seed=seed).take(n)):
        index = start + i
        entity = f"c{index % entities}"
        means[entity] = x["salary"] if entity not in means else 0.8 * means[entity] + 0.2 * x["salary"]
        rows.append({"event_id": f"e{seed}-{index}", "entity_id": entity, "event_time_ms": T0_MS + index * STEP_MS,
                     "label": int(y), **{f: float(x[f]) for f in SCHEMA_FIELDS}, "salary_entity_mean": means[entity]})
    return rows


def feature_table(rows: list[dict], feature_names: list[str] = FEATURES) -> pa.Table:
    """The segment columns: event_id, entity_id, event_time_ms int64, label int32, then float64 features."""
    columns = {
        "event_id": pa.array([r["event_id"] for r in rows], pa.string()),
        "entity_id": pa.array([r["entity_id"] for r in rows], pa.string()),
        "event_time_ms": pa.array([r["event_time_ms"] for r in rows], pa.int64()),
        "label": pa.array([r["label"] for r in rows], pa.int32()),
        **{name: pa.array([r[name] for r in rows], pa.float64()) for name in feature_names},
    }
    return pa.table(columns)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_segments(store: ObjectStore, stream: str, rows: list[dict], *, per_segment: int = 500,
                   partition: int = 0, first_offset: int = 0) -> list[dict]:
    """Writes rows as segments + sidecars the way the feature service does; returns the sidecars."""
    sidecars = []
    for begin in range(0, len(rows), per_segment):
        chunk = rows[begin:begin + per_segment]
        first, last = first_offset + begin, first_offset + begin + len(chunk) - 1
        stem = f"datasets/{stream}/segments/p{partition:03d}-{first:012d}-{last:012d}"
        ref = store.put_bytes(f"{stem}.parquet", parquet_bytes(feature_table(chunk)))
        times = [r["event_time_ms"] for r in chunk]
        sidecar = {"key": ref.key, "sha256": ref.sha256, "rows": len(chunk), "partition": partition,
                   "first_offset": first, "last_offset": last, "min_event_time_ms": min(times),
                   "max_event_time_ms": max(times), "feature_names": FEATURES, "stream": stream}
        store.put_json(f"{stem}.json", sidecar)
        sidecars.append(sidecar)
    return sidecars


def xy(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[r[f] for f in FEATURES] for r in rows], dtype=np.float32)
    return x, np.array([r["label"] for r in rows], dtype=np.int64)


def accuracy_of(onnx_bytes: bytes, rows: list[dict]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x, y = xy(rows)
    (probabilities,) = session.run(["probabilities"], {"features": x})
    return float(np.mean(probabilities.argmax(axis=1) == y))


def trained_onnx(rows: list[dict], *, shuffle_labels: bool = False, epochs: int = 15) -> bytes:
    """A real model (the trainer's MLP and exporter) for rows; shuffled labels make a useless one."""
    from services.trainer.export import export_onnx
    from services.trainer.train import TrainParams, train

    x, y = xy(rows)
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    return export_onnx(train(x, y, 2, TrainParams(epochs=epochs)).model, len(FEATURES))


# -- topics ----------------------------------------------------------------------------------

def collect(consumer: Consumer, message_type, until: Callable[[list[Record]], bool], timeout: float,
            keep: Callable[[Record], bool] = lambda r: True, alive: Callable[[], None] = lambda: None
            ) -> list[Record]:
    """Polls records (those `keep` accepts) until `until(records)` holds; fails after `timeout`."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records += [r for r in consumer.poll_batch(message_type, timeout=0.5) if keep(r)]
        if until(records):
            return records
        alive()
    raise AssertionError(f"timed out after {timeout}s; got {len(records)} records: "
                         f"{[r.value for r in records][:5]}")
