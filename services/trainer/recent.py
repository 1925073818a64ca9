"""The latest labelled feature records of each stream, read from `driftline.features` as they are
committed, so that a drift retrain's first rows do not wait for the feature service's next segment.

A segment is cut every `feature_segment_seconds` and then uploaded: on the loaded bench machine the
rows after a change reached the trainer 0.4-0.7 s after they were published, where a read_committed
consumer sees them one feature transaction later. The rows a dataset takes from here are written as
one Parquet part of its own (`recent_part_key`), named in its manifest as a segment is, so the
version stays content-addressed and `driftline datasets verify` checks it; the segments hold the
same events, and every later dataset is cut from them. Only a record's own label is kept: a delayed
label comes on `driftline.labels`, and a window that needs those fills from the segments as before.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import pyarrow as pa
from confluent_kafka import Message
from google.protobuf.message import DecodeError

from driftline.v1 import features_pb2
from services.common.datasets import segment_schema


class RecentRows:
    """Per stream, its last `per_stream` labelled feature records, in the order they were committed.

    >>> def record(i, **label):
    ...     r = features_pb2.FeatureRecord(event_id=f"e{i}", feature_set="s", values=[i / 2], **label)
    ...     r.event_time.FromMilliseconds(1000 * i)
    ...     return r
    >>> recent = RecentRows(per_stream=3)
    >>> for i in range(5):
    ...     recent.add_record(record(i, label=i % 2))
    >>> recent.add_record(record(5))  # no label: no training row
    >>> recent.rows_since("s", 3000, ["a"]).to_pydict()
    {'event_id': ['e3', 'e4'], 'entity_id': ['', ''], 'event_time_ms': [3000, 4000], 'label': [1, 0], 'a': [1.5, 2.0]}
    >>> recent.rows_since("s", 2000, ["a"]) is None  # e2 is the oldest held: e0 and e1 were pushed out
    True
    """

    def __init__(self, per_stream: int = 8192) -> None:
        self.per_stream = per_stream
        self._rows: dict[str, deque[tuple]] = {}
        self._lock = threading.Lock()

    def add(self, messages: Sequence[Message]) -> None:
        """Keeps the labelled records of a batch; anything that is no FeatureRecord is passed over
        (the feature service's segment writer reports it)."""
        for message in messages:
            try:
                record = features_pb2.FeatureRecord.FromString(message.value() or b"")
            except DecodeError:
                continue
            self.add_record(record)

    def add_record(self, record: features_pb2.FeatureRecord) -> None:
        if not record.HasField("label"):
            return
        try:
            event_time_ms = record.event_time.ToMilliseconds()
        except ValueError:  # out of Timestamp's range
            return
        row = (event_time_ms, record.event_id, record.entity_id, record.label, tuple(record.values))
        with self._lock:
            held = self._rows.get(record.feature_set)
            if held is None:
                held = self._rows[record.feature_set] = deque(maxlen=self.per_stream)
            held.append(row)

    def rows_since(self, stream: str, start_ms: int, feature_names: Sequence[str]) -> pa.Table | None:
        """The held rows of `stream` from `start_ms` on (event time) under `feature_names`, in the
        feature segments' schema; None unless a row held is older than `start_ms`: only then is no
        row of the window missing (the records before the trainer started, or pushed out)."""
        with self._lock:
            held = list(self._rows.get(stream, ()))
        if not held or min(row[0] for row in held) >= start_ms:
            return None
        rows = [row for row in held if row[0] >= start_ms and len(row[4]) == len(feature_names)]
        meta = [pa.array([row[i] for row in rows], kind) for i, kind in
                enumerate((pa.int64(), pa.string(), pa.string(), pa.int32()))]
        values = [pa.array([row[4][j] for row in rows], pa.float64()) for j in range(len(feature_names))]
        times, ids, entities, labels = meta
        return pa.Table.from_arrays([ids, entities, times, labels, *values], schema=segment_schema(feature_names))
