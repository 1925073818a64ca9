"""Dataset versions from feature segments and label segments.

The feature service writes immutable Parquet segments of feature rows (the
vector as it was at the event's time), each with a JSON sidecar (offsets,
event-time range, row count, sha256), and every label of `driftline.labels`
into label segments beside them. A dataset version is the segment rows inside
an event-time window, each event once (a replayed row can be in two segments:
the one in the first segment, by key, is kept), labelled by the event's own
label or else by the latest (`labelled_at_ms`) of its delayed labels in the
label segments that exist when the dataset is cut; a row with neither is no
training row. A manifest names the segments and label segments it took rows and
labels from, and its sha256 is the dataset id: the same data always gets the
same id, a label that arrives changes it, and every part is read back against
the sha256 the manifest records. A drift retrain's first rows may come from the
features topic instead, before a segment holds them (recent.py): written as a part
of their own, they are named in the manifest as a segment is.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.common.datasets import labels_prefix, partition_part_of, recent_part_key, segments_prefix
from services.common.objectstore import ObjectStore, sha256_of

from .recent import RecentRows

log = logging.getLogger(__name__)

META_COLUMNS = ["event_id", "entity_id", "event_time_ms", "label"]
# Working columns of window_rows: which segment a row came from, and its place in it.
_SEGMENT, _ROW = "__segment", "__row"


class WindowNotFilled(RuntimeError):
    """The window did not reach min_rows labelled rows within the wait."""


class Cancelled(RuntimeError):
    """The service is stopping; the request is left for redelivery."""


class Superseded(RuntimeError):
    """A newer request of the model made this one pointless; it stopped."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment as its sidecar describes it."""

    key: str
    sha256: str
    rows: int
    min_event_time_ms: int
    max_event_time_ms: int
    feature_names: tuple[str, ...]

    @classmethod
    def from_sidecar(cls, sidecar: dict) -> "Segment":
        return cls(sidecar["key"], sidecar["sha256"], int(sidecar["rows"]), int(sidecar["min_event_time_ms"]),
                   int(sidecar["max_event_time_ms"]), tuple(sidecar["feature_names"]))


@dataclass(frozen=True, slots=True)
class Window:
    start_ms: int
    end_ms: int | None  # None: open, up to now

    def overlaps(self, segment: Segment, now_ms: int) -> bool:
        end = now_ms if self.end_ms is None else self.end_ms
        return segment.max_event_time_ms >= self.start_ms and segment.min_event_time_ms <= end


@dataclass(frozen=True, slots=True)
class LabelSegment:
    """A label segment as its sidecar describes it: rows of (event_id, label, labelled_at_ms,
    event_time_ms)."""

    key: str
    sha256: str
    rows: int

    @classmethod
    def from_sidecar(cls, sidecar: dict) -> "LabelSegment":
        return cls(sidecar["key"], sidecar["sha256"], int(sidecar["rows"]))


@dataclass(frozen=True)
class Dataset:
    """The labelled rows of a window, sorted by event time, and where they came from."""

    window: Window
    feature_names: list[str]
    segments: list[tuple[Segment, int]]  # (segment, rows taken from it)
    table: pa.Table  # META_COLUMNS + feature columns
    label_segments: list[tuple[LabelSegment, int]] = ()  # (label segment, labels taken from it)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def from_topic(self) -> bool:
        """Whether the rows came from the features topic (one recent part), not from segments."""
        return any("/recent/" in segment.key for segment, _ in self.segments)

    @property
    def end_ms(self) -> int:
        """The window's end; an open window ends at its last row, so the manifest describes the data."""
        if self.window.end_ms is not None:
            return self.window.end_ms
        return int(pc.max(self.table.column("event_time_ms")).as_py())

    def manifest(self, stream: str) -> dict:
        return {
            "stream": stream,
            "window_start_ms": self.window.start_ms,
            "window_end_ms": self.end_ms,
            "feature_names": self.feature_names,
            "segments": [{"key": s.key, "sha256": s.sha256, "rows": n}
                         for s, n in sorted(self.segments, key=lambda item: item[0].key)],
            "label_segments": [{"key": s.key, "sha256": s.sha256, "labels": n}
                               for s, n in sorted(self.label_segments, key=lambda item: item[0].key)],
            "rows": self.rows,
        }

    def time_split(self, holdout_fraction: float) -> tuple[pa.Table, pa.Table]:
        """(train, eval): the eval slice is the most recent `holdout_fraction` of the rows."""
        n_eval = min(self.rows - 1, max(1, round(self.rows * holdout_fraction)))
        cut = self.rows - n_eval
        return self.table.slice(0, cut), self.table.slice(cut)


def features_and_labels(table: pa.Table, feature_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False) for n in feature_names]).astype(np.float32)
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    return x, y


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


class SidecarListing:
    """The sidecars under one prefix, by key, kept current by listing what is new.

    Segment names start with their partition (`p000-`, then offsets, zero-padded), so each
    partition's new segments sort after its last one: a listing per partition that starts after
    that key returns only them. Listing everything took 70-150 ms at 400 segments, on every
    poll of a drift retrain's wait. A full listing every FULL_EVERY_S finds new partitions, a
    segment that a replay named below the last one, and the segments retention removed.
    """

    FULL_EVERY_S = 10.0

    def __init__(self, store: ObjectStore, prefix: str, parse: Callable[[dict], object]) -> None:
        self.store, self.prefix, self.parse = store, prefix, parse
        self._sidecars: dict[str, object] = {}
        self._last_per_partition: dict[str, str] = {}  # partition_part -> its last sidecar's key
        self._full_at = float("-inf")
        self._lock = threading.Lock()  # the trainer's two lanes share a reader

    def listed(self) -> list:
        """The sidecars as the last listing left them."""
        with self._lock:
            return list(self._sidecars.values())

    def current(self) -> list:
        """Every sidecar listed now, by key."""
        with self._lock:
            if time.monotonic() - self._full_at >= self.FULL_EVERY_S:
                self._full_at = time.monotonic()
                keys = self.store.list_keys(self.prefix)
                self._sidecars = {key: self._sidecars[key] for key in keys if key in self._sidecars}
                self._last_per_partition = {}
            else:
                keys = [key for partition, last in self._last_per_partition.items()
                        for key in self.store.list_keys(f"{self.prefix}{partition}", start_after=last)]
            for key in keys:
                if key.endswith(".json"):
                    if key not in self._sidecars:
                        self._sidecars[key] = self.parse(self.store.get_json(key))
                    partition = partition_part_of(key[len(self.prefix):])
                    self._last_per_partition[partition] = max(key, self._last_per_partition.get(partition, key))
            return sorted(self._sidecars.values(), key=lambda sidecar: sidecar.key)


class SegmentReader:
    """Lists and reads a stream's feature and label segments. All are immutable, so a reader is
    kept for the trainer's life: a fresh one fetched every sidecar of the stream again (0.46 s for
    400 segments), twice per drift request. The sidecars are listed incrementally
    (`SidecarListing`); the tables cached are the newest TABLES_CACHED read."""

    TABLES_CACHED = 1024

    def __init__(self, store: ObjectStore, stream: str) -> None:
        self.store = store
        self.stream = stream
        self._segments = SidecarListing(store, segments_prefix(stream), Segment.from_sidecar)
        self._label_segments = SidecarListing(store, labels_prefix(stream), LabelSegment.from_sidecar)
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._lock = threading.Lock()  # the trainer's two lanes share a reader

    def segments(self) -> list[Segment]:
        return self._segments.current()

    def newest_feature_names(self) -> tuple[str, ...] | None:
        """The feature names of the newest segment listed so far (listed now only if none was): a
        feature record's values name none, and a listing after a quiet spell fetches the sidecar of
        every segment written since (0.6 s for 100 of them, in the bench), where a drift retrain
        that takes its rows from the topic needs nothing else of the segments."""
        segments = self._segments.listed() or self._segments.current()
        return max(segments, key=lambda s: s.max_event_time_ms).feature_names if segments else None

    def label_segments(self) -> list[LabelSegment]:
        """Every label segment written so far, by key (a sidecar names a complete segment)."""
        return self._label_segments.current()

    def table(self, segment: Segment | LabelSegment) -> pa.Table:
        with self._lock:
            table = self._tables.get(segment.key)
            if table is not None:
                self._tables.move_to_end(segment.key)
                return table
        data = self.store.get_bytes(segment.key, expected_sha256=segment.sha256)
        table = pq.read_table(io.BytesIO(data))
        with self._lock:
            self._tables[segment.key] = table
            while len(self._tables) > self.TABLES_CACHED:
                self._tables.popitem(last=False)
        return table

    def window_rows(self, window: Window, now_ms: int) -> Dataset | None:
        """The labelled rows in the window as of now, or None when no segment overlaps it."""
        candidates = [s for s in self.segments() if window.overlaps(s, now_ms)]
        if not candidates:
            return None
        # A schema change splits the stream: train on the newest feature set only.
        newest = max(candidates, key=lambda s: s.max_event_time_ms).feature_names
        skipped = [s.key for s in candidates if s.feature_names != newest]
        if skipped:
            log.warning("segments with other feature names left out", extra={"segments": skipped})
        end = now_ms if window.end_ms is None else window.end_ms
        columns = META_COLUMNS + list(newest)
        ordered = sorted((s for s in candidates if s.feature_names == newest), key=lambda s: s.key)
        parts = []
        for index, segment in enumerate(ordered):
            table = self.table(segment).select(columns)
            t = table.column("event_time_ms")
            rows = table.filter(pc.and_(pc.greater_equal(t, window.start_ms), pc.less_equal(t, end)))
            if rows.num_rows:
                rows = rows.append_column(_SEGMENT, pa.array(np.full(rows.num_rows, index, np.int32)))
                parts.append(rows.cast(parts[0].schema) if parts else rows)
        if not parts:
            return None
        # Segments in key order are in (partition, offset) order: the first copy is the original.
        table, label_segments = self._labelled(first_per_event(pa.concat_tables(parts)))
        table = table.filter(pc.is_valid(table.column("label")))
        if not table.num_rows:
            return None
        counts = pc.value_counts(table.column(_SEGMENT)).to_pylist()
        taken = [(ordered[c["values"]], c["counts"]) for c in counts]
        table = table.drop_columns([_SEGMENT]).sort_by([("event_time_ms", "ascending"), ("event_id", "ascending")])
        return Dataset(window, list(newest), taken, table, label_segments)

    def recent_rows(self, recent: RecentRows, window: Window, now_ms: int, min_rows: int,
                    feature_names: tuple[str, ...]) -> Dataset | None:
        """The window's rows as `recent` holds them, once they are `min_rows` (None before, or when
        `recent` does not reach back to the window's start); they are written as the dataset's one
        part (`recent_part_key`), which its manifest names."""
        table = recent.rows_since(self.stream, window.start_ms, feature_names)
        if table is None or table.num_rows < min_rows:
            return None
        end = now_ms if window.end_ms is None else window.end_ms
        table = first_per_event(table.filter(pc.less_equal(table.column("event_time_ms"), end)))
        if table.num_rows < min_rows:
            return None
        table = table.sort_by([("event_time_ms", "ascending"), ("event_id", "ascending")])
        data = to_parquet(table)
        ref = self.store.put_bytes(recent_part_key(self.stream, sha256_of(data)), data)
        times = table.column("event_time_ms")
        part = Segment(ref.key, ref.sha256, table.num_rows, int(pc.min(times).as_py()), int(pc.max(times).as_py()),
                       feature_names)
        return Dataset(window, list(feature_names), [(part, table.num_rows)], table)

    def _labelled(self, table: pa.Table) -> tuple[pa.Table, list[tuple[LabelSegment, int]]]:
        """`table` with each row lacking its own label given its latest delayed label, and the
        label segments those labels came from (with how many each gave)."""
        own = table.column("label")
        missing = table.filter(pc.is_null(own)).column("event_id")
        label_segments = self.label_segments() if len(missing) else []
        parts = []
        for index, segment in enumerate(label_segments):
            labels = self.table(segment).select(["event_id", "label", "labelled_at_ms"])
            labels = labels.filter(pc.is_in(labels.column("event_id"), value_set=missing))
            if labels.num_rows:
                parts.append(labels.append_column(_SEGMENT, pa.array(np.full(labels.num_rows, index, np.int32)))
                             .append_column(_ROW, pa.array(np.arange(labels.num_rows, dtype=np.int64))))
        if not parts:
            return table, []
        # Latest labelled_at first; of equal ones the last written (the later segment, the later row).
        latest = first_per_event(pa.concat_tables(parts).sort_by(
            [("labelled_at_ms", "descending"), (_SEGMENT, "descending"), (_ROW, "descending")]))
        found = pc.index_in(table.column("event_id"), value_set=latest.column("event_id"))
        delayed = latest.column("label").take(found).cast(own.type)
        used = pc.and_(pc.is_null(own), pc.is_valid(delayed))
        sources = pc.filter(latest.column(_SEGMENT).take(found), used)
        given = [(label_segments[c["values"]], c["counts"]) for c in pc.value_counts(sources).to_pylist()]
        labelled = table.set_column(table.schema.get_field_index("label"), "label", pc.coalesce(own, delayed))
        return labelled, given


def first_per_event(table: pa.Table) -> pa.Table:
    """The first row of each event_id, in the table's order.

    >>> first_per_event(pa.table({"event_id": ["a", "b", "a"], "v": [1, 2, 3]})).to_pylist()
    [{'event_id': 'a', 'v': 1}, {'event_id': 'b', 'v': 2}]
    """
    ids = table.column("event_id")
    return table.take(pc.index_in(pc.unique(ids), value_set=ids))


def wait_for_rows(reader: SegmentReader, window: Window, min_rows: int, *, timeout_s: float,
                  poll_s: float, cancelled: threading.Event,
                  superseded: Callable[[], bool] = lambda: False, recent: RecentRows | None = None) -> Dataset:
    """Polls the segments (and `recent`, first, when given) until the window holds `min_rows`
    labelled rows (Superseded once `superseded()` says so).

    Sidecar row counts are an upper bound (a segment may straddle the window's
    edges), so segments are read only once that bound reaches `min_rows`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        now_ms = int(time.time() * 1000)
        names = reader.newest_feature_names() if recent is not None else None
        if names is not None:
            dataset = reader.recent_rows(recent, window, now_ms, min_rows, names)
            if dataset is not None:
                return dataset
        have = sum(s.rows for s in reader.segments() if window.overlaps(s, now_ms))
        if have >= min_rows:
            dataset = reader.window_rows(window, now_ms)
            have = dataset.rows if dataset else 0
            if have >= min_rows:
                return dataset
        if time.monotonic() >= deadline:
            raise WindowNotFilled(
                f"window [{window.start_ms}, {window.end_ms or 'now'}] of stream {reader.stream!r} has "
                f"{have} labelled rows after waiting {timeout_s:g}s; {min_rows} needed")
        if cancelled.wait(poll_s):
            raise Cancelled("trainer stopping while waiting for rows")
        if superseded():
            raise Superseded(f"a newer request of the model came while {min_rows} rows were awaited ({have} so far)")
