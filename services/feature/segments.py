"""Immutable feature segments: labelled rows as Parquet in the object store,
each with a JSON sidecar, named by the Kafka offsets they hold.

    datasets/<stream>/segments/p{partition:03d}-{first_offset:012d}-{last_offset:012d}.parquet
    datasets/<stream>/segments/p{partition:03d}-{first_offset:012d}-{last_offset:012d}.json

Columns: event_id (string), entity_id (string), event_time_ms (int64),
label (int32), then one float64 column per feature name, in order. The
sidecar is written after the Parquet file, so a sidecar always names a
complete segment: readers list sidecars, not Parquet files.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.datasets import segments_prefix
from services.common.objectstore import ObjectStore

_SEGMENT_NAME = re.compile(r"p(\d{3,})-(\d{12,})-(\d{12,})\.json$")


@dataclass(frozen=True, slots=True)
class SegmentRow:
    offset: int  # of the FeatureRecord in its partition of `driftline.features`
    event_id: str
    entity_id: str
    event_time_ms: int
    label: int
    values: Sequence[float]


def segment_stem(stream: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{segments_prefix(stream)}p{partition:03d}-{first_offset:012d}-{last_offset:012d}"


def arrow_schema(feature_names: Sequence[str]) -> pa.Schema:
    return pa.schema([
        ("event_id", pa.string()), ("entity_id", pa.string()), ("event_time_ms", pa.int64()),
        ("label", pa.int32()), *((name, pa.float64()) for name in feature_names)])


def encode_parquet(rows: Sequence[SegmentRow], feature_names: Sequence[str]) -> bytes:
    """The rows as one Parquet file (same rows → same bytes, so the same sha256)."""
    columns: list[list] = [[r.event_id for r in rows], [r.entity_id for r in rows],
                           [r.event_time_ms for r in rows], [r.label for r in rows]]
    columns += [[r.values[i] for r in rows] for i in range(len(feature_names))]
    table = pa.Table.from_arrays([pa.array(c) for c in columns], schema=arrow_schema(feature_names))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_segment(store: ObjectStore, stream: str, partition: int, rows: Sequence[SegmentRow],
                  feature_names: Sequence[str]) -> dict[str, object]:
    """Uploads the Parquet file, then its sidecar; returns the sidecar."""
    if not rows:
        raise ValueError("a segment needs at least one row")
    first, last = rows[0].offset, rows[-1].offset
    stem = segment_stem(stream, partition, first, last)
    ref = store.put_bytes(f"{stem}.parquet", encode_parquet(rows, feature_names),
                          "application/vnd.apache.parquet")
    sidecar = {
        "key": ref.key, "sha256": ref.sha256, "rows": len(rows), "partition": partition,
        "first_offset": first, "last_offset": last,
        "min_event_time_ms": min(r.event_time_ms for r in rows),
        "max_event_time_ms": max(r.event_time_ms for r in rows),
        "feature_names": list(feature_names), "stream": stream,
    }
    store.put_json(f"{stem}.json", sidecar)
    return sidecar


def covered_offset(store: ObjectStore, stream: str, partition: int) -> int:
    """The last offset of `partition` already in a segment, or -1.

    After a crash between writing a segment and committing its offsets, the
    replayed records up to here are skipped instead of written twice.
    """
    last = -1
    for key in store.list_keys(f"{segments_prefix(stream)}p{partition:03d}-"):
        if match := _SEGMENT_NAME.search(key):
            last = max(last, int(match.group(3)))
    return last
