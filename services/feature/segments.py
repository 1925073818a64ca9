"""Immutable segments in the object store: Parquet files, each with a JSON
sidecar, named by the Kafka offsets of the records they hold (the key layout
is services/common/datasets.py's).

    datasets/<stream>/segments/p{partition:03d}-{first:012d}-{last:012d}.parquet + .json
        feature segments: every FeatureRecord of `driftline.features`; columns event_id
        (string), entity_id (string), event_time_ms (int64), label (int32, null when the
        event came without one), then one float64 column per feature name, in order
    datasets/<stream>/labels/p{partition:03d}-{first:012d}-{last:012d}.parquet + .json
        label segments: every Label of `driftline.labels`; columns event_id (string),
        label (int32), labelled_at_ms (int64), event_time_ms (int64, 0 when unknown)

Unlabelled feature rows are kept because a delayed label joins them later (the
trainer's point-in-time join: the row is the vector as it was at the event's
time). The sidecar is written after the Parquet file, so a sidecar always names
a complete segment: readers list sidecars, not Parquet files.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.datasets import (
    LABEL_COLUMNS, labels_prefix, partition_part, segment_name, segment_schema, segments_prefix,
)
from services.common.objectstore import ObjectStore

_SEGMENT_NAME = re.compile(r"p(\d{3,})-(\d{12,})-(\d{12,})\.json$")


@dataclass(frozen=True, slots=True)
class SegmentRow:
    offset: int  # of the FeatureRecord in its partition of `driftline.features`
    event_id: str
    entity_id: str
    event_time_ms: int
    label: int | None
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class LabelRow:
    offset: int  # of the Label in its partition of `driftline.labels`
    event_id: str
    label: int
    labelled_at_ms: int
    event_time_ms: int


def segment_stem(stream: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{segments_prefix(stream)}{segment_name(partition, first_offset, last_offset)}"


def label_stem(stream: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{labels_prefix(stream)}{segment_name(partition, first_offset, last_offset)}"


LABEL_SCHEMA = pa.schema(list(zip(LABEL_COLUMNS, (pa.string(), pa.int32(), pa.int64(), pa.int64()))))


def _parquet(columns: Sequence[Sequence[object]], schema: pa.Schema) -> bytes:
    """One Parquet file (the same rows give the same bytes, so the same sha256)."""
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def encode_parquet(rows: Sequence[SegmentRow], feature_names: Sequence[str]) -> bytes:
    columns: list[list] = [[r.event_id for r in rows], [r.entity_id for r in rows],
                           [r.event_time_ms for r in rows], [r.label for r in rows]]
    columns += [[r.values[i] for r in rows] for i in range(len(feature_names))]
    return _parquet(columns, segment_schema(feature_names))


def encode_labels(rows: Sequence[LabelRow]) -> bytes:
    return _parquet([[getattr(r, name) for r in rows] for name in LABEL_COLUMNS], LABEL_SCHEMA)


def _store(store: ObjectStore, stem: str, data: bytes, partition: int, rows: Sequence, stream: str,
           **extra: object) -> dict[str, object]:
    """Uploads the Parquet file, then its sidecar; returns the sidecar."""
    ref = store.put_bytes(f"{stem}.parquet", data, "application/vnd.apache.parquet")
    sidecar = {
        "key": ref.key, "sha256": ref.sha256, "rows": len(rows), "partition": partition,
        "first_offset": rows[0].offset, "last_offset": rows[-1].offset, "stream": stream,
        "min_event_time_ms": min(r.event_time_ms for r in rows),
        "max_event_time_ms": max(r.event_time_ms for r in rows), **extra,
    }
    store.put_json(f"{stem}.json", sidecar)
    return sidecar


def write_segment(store: ObjectStore, stream: str, partition: int, rows: Sequence[SegmentRow],
                  feature_names: Sequence[str]) -> dict[str, object]:
    if not rows:
        raise ValueError("a segment needs at least one row")
    stem = segment_stem(stream, partition, rows[0].offset, rows[-1].offset)
    return _store(store, stem, encode_parquet(rows, feature_names), partition, rows, stream,
                  feature_names=list(feature_names))


def write_label_segment(store: ObjectStore, stream: str, partition: int, rows: Sequence[LabelRow]
                        ) -> dict[str, object]:
    if not rows:
        raise ValueError("a segment needs at least one row")
    stem = label_stem(stream, partition, rows[0].offset, rows[-1].offset)
    return _store(store, stem, encode_labels(rows), partition, rows, stream,
                  min_labelled_at_ms=min(r.labelled_at_ms for r in rows),
                  max_labelled_at_ms=max(r.labelled_at_ms for r in rows))


def covered_offset(store: ObjectStore, prefix: str, partition: int) -> int:
    """The last offset of `partition` already in a segment under `prefix`, or -1.

    After a crash between writing a segment and committing its offsets, the
    replayed records up to here are skipped instead of written twice.
    """
    last = -1
    for key in store.list_keys(f"{prefix}{partition_part(partition)}"):
        if match := _SEGMENT_NAME.search(key):
            last = max(last, int(match.group(3)))
    return last
