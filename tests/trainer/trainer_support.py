"""Label segments written into the bucket exactly as the storage contract says
(`services.common.datasets`: `label_segment_key`, `LABEL_COLUMNS`), the way the feature
service writes them, so the trainer's tests need no feature service."""

from __future__ import annotations

import pyarrow as pa

from helpers_models import parquet_bytes
from services.common.datasets import LABEL_COLUMNS, label_segment_key
from services.common.objectstore import ObjectStore


def write_label_segment(store: ObjectStore, stream: str, labels: list[tuple[str, int, int, int]], *,
                        partition: int = 0, first_offset: int = 0) -> dict:
    """One label segment of (event_id, label, labelled_at_ms, event_time_ms) rows, then its sidecar;
    returns the sidecar."""
    columns = list(zip(*labels))
    table = pa.table({name: pa.array(values, kind) for name, values, kind in
                      zip(LABEL_COLUMNS, columns, (pa.string(), pa.int32(), pa.int64(), pa.int64()))})
    last_offset = first_offset + len(labels) - 1
    ref = store.put_bytes(label_segment_key(stream, partition, first_offset, last_offset), parquet_bytes(table))
    sidecar = {"key": ref.key, "sha256": ref.sha256, "rows": len(labels), "partition": partition,
               "first_offset": first_offset, "last_offset": last_offset, "stream": stream}
    store.put_json(ref.key.removesuffix(".parquet") + ".json", sidecar)
    return sidecar
