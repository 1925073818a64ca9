"""The monitor's wire decoding: what it reads of its input records, as arrays.

* Feature records (`driftline.features`), the bulk of the input: `FeatureScan` finds every
  record's fields in one numpy pass over a batch's bytes (FeatureRecord's wire format in field
  order, each record's framing checked; None for any other layout, and the caller parses
  record by record) and gathers what is asked of them — the labelled records' event ids and
  labels (`labelled_records`), the records of one stream and their feature vectors as one
  matrix; `event_time_ms` reads one record's event time (the join keeps a record's bytes and
  parses it only if it ever joins).
* Prediction logs (`driftline.predictions`): `prediction_columns` reads either form of a
  `PredictionLog` (columnar buffers, or a message per row) as arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from driftline.v1 import features_pb2, serving_pb2


def event_time_ms(raw: bytes) -> int:
    """The event time of a feature record's bytes (the join keeps bytes, not parsed records);
    0 (unknown) when a field `labelled_records` does not parse turns out to be damaged."""
    try:
        ts = features_pb2.FeatureRecord.FromString(raw).event_time
    except DecodeError:
        return 0
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def labelled_records(values: Sequence[bytes], *, feature_sets: bool = False
                     ) -> tuple[list[int], list[str], list[int]] | tuple[list[int], list[str], list[int], list[str]] | None:
    """The labelled feature records of a batch — (their positions, event ids, labels) — read in
    one numpy pass over the batch's bytes instead of a parsed message per record; with
    `feature_sets`, a fourth list: each labelled record's feature set (its stream; "" when it
    names none), read by the same pass. `FeatureScan.of(values).labelled(…)`, for a caller that
    reads nothing else of the batch.

    >>> from driftline.v1 import features_pb2
    >>> records = [features_pb2.FeatureRecord(event_id="e1", values=[0.5, 1.0], label=1),
    ...            features_pb2.FeatureRecord(event_id="e2", entity_id="u", values=[2.0]),
    ...            features_pb2.FeatureRecord(event_id="é3", feature_set="s", label=0)]
    >>> labelled_records([r.SerializeToString() for r in records])
    ([0, 2], ['e1', 'é3'], [1, 0])
    >>> labelled_records([r.SerializeToString() for r in records], feature_sets=True)[3]
    ['', 's']
    >>> labelled_records([features_pb2.FeatureRecord(event_id="e4", label=-1).SerializeToString()]) is None
    True
    >>> labelled_records([b"\\x0a\\x05e1"]) is None  # an event id longer than its record
    True
    """
    scan = FeatureScan.of(values)
    return None if scan is None else scan.labelled(feature_sets=feature_sets)


class FeatureScan:
    """Where every field of a batch of FeatureRecords is, found in one numpy pass over the batch's
    bytes (`of`); what the monitor reads of them is then gathered from those positions:
    the labelled records' ids and labels (`labelled`), the records of one feature set
    (`in_set`) and their feature vectors as one float64 matrix (`vectors`).

    The pass reads FeatureRecord's wire format as serializers write it: fields in field-number
    order, each at most once, lengths of at most two bytes, a label of 0–127. It checks every
    record's framing (each field inside the record, a whole number of doubles, nothing after the
    label); the event ids' UTF-8 (and the feature sets', when asked for) is checked when they are
    read, the event time is not parsed. `of` is None when any record is outside that layout
    (another field order, unknown fields, a negative label, damage): the caller then parses the
    batch record by record, which also finds the undecodable ones.

    >>> from driftline.v1 import features_pb2
    >>> records = [features_pb2.FeatureRecord(event_id="e1", feature_set="s", values=[0.5, 1.0], label=1),
    ...            features_pb2.FeatureRecord(event_id="e2", values=[2.0, 3.0]),
    ...            features_pb2.FeatureRecord(event_id="e3", feature_set="s", values=[4.0])]
    >>> scan = FeatureScan.of([r.SerializeToString() for r in records])
    >>> rows = np.flatnonzero(scan.in_set(b"s", or_empty=False)); rows.tolist()
    [0, 2]
    >>> matrix, taken = scan.vectors(rows, 2)  # the record of one value is not of this width
    >>> matrix.tolist(), taken.tolist()
    ([[0.5, 1.0]], [0])
    >>> scan.in_set(b"s", or_empty=True).tolist()  # a record that names no feature set: the default stream's
    [True, True, True]
    """

    __slots__ = ("n", "_buf", "_id", "_set", "_values", "_has_label", "_label")

    def __init__(self, n, buf, id_field, set_field, values_field, has_label, label) -> None:
        self.n, self._buf = n, buf
        self._id, self._set, self._values = id_field, set_field, values_field  # (start, length; 0 when absent)
        self._has_label, self._label = has_label, label

    @classmethod
    def of(cls, values: Sequence[bytes]) -> FeatureScan | None:
        n = len(values)
        lengths = np.fromiter(map(len, values), np.int64, n)
        buf = np.frombuffer(b"".join(values) + b"\0\0\0", np.uint8)  # padded: reads run 2 bytes ahead
        end = np.cumsum(lengths)
        pos = end - lengths
        ok = np.ones(n, bool)
        has_id, id_start, id_length, pos = _length_delimited(buf, pos, end, ok, 0x0A)  # 1 event_id
        pos = _length_delimited(buf, pos, end, ok, 0x12)[3]  # 2 entity_id
        has_set, set_start, set_length, pos = _length_delimited(buf, pos, end, ok, 0x1A)  # 3 feature_set
        pos = _length_delimited(buf, pos, end, ok, 0x22)[3]  # 4 event_time
        has_values, values_start, values_length, pos = _length_delimited(buf, pos, end, ok, 0x2A)  # 5 values, packed
        ok &= ~has_values | (values_length % 8 == 0)
        has_label = (pos < end) & (buf[pos] == 0x30)  # 6 label, a one-byte varint
        label = buf[pos + 1]
        ok &= (np.where(has_label, pos + 2, pos) == end) & ~(has_label & (label >= 0x80))
        if not ok.all():
            return None
        return cls(n, buf, (id_start, np.where(has_id, id_length, 0)), (set_start, np.where(has_set, set_length, 0)),
                   (values_start, np.where(has_values, values_length, 0)), has_label, label)

    def labelled(self, *, feature_sets: bool = False):
        """(positions, event ids, labels) of the labelled records, and with `feature_sets` their
        feature sets; None when an id (or a feature set) is not UTF-8 (see `labelled_records`)."""
        rows = np.flatnonzero(self._has_label)
        if not len(rows):
            return ([], [], [], []) if feature_sets else ([], [], [])
        ids = _strings(self._buf, self._id[0][rows], self._id[1][rows])
        if ids is None:
            return None
        if not feature_sets:
            return rows.tolist(), ids, self._label[rows].tolist()
        sets = _strings(self._buf, self._set[0][rows], self._set[1][rows])
        if sets is None:
            return None
        return rows.tolist(), ids, self._label[rows].tolist(), sets

    def in_set(self, name: bytes, *, or_empty: bool) -> np.ndarray:
        """(n,) bool: the records whose feature set is `name` (UTF-8), and with `or_empty` those that
        name none (the default stream's). Compared as bytes, nothing decoded."""
        start, length = self._set
        same = length == len(name)
        if name and same.any():
            rows = np.flatnonzero(same)
            chars = self._buf[start[rows, None] + np.arange(len(name))]
            same[rows] = (chars == np.frombuffer(name, np.uint8)).all(axis=1)
        return same | (length == 0) if or_empty else same

    def vectors(self, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The feature vectors of the records at `rows` that hold `width` values, as one (m, width)
        float64 matrix gathered from the batch's bytes, and those records' positions (m,)."""
        start, length = self._values
        taken = rows[length[rows] == 8 * width]
        raw = self._buf[start[taken, None] + np.arange(8 * width)]  # (m, 8·width) bytes, little-endian doubles
        return raw.view("<f8").reshape(len(taken), width).astype(np.float64, copy=False), taken


def _strings(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> list[str] | None:
    """The UTF-8 strings at (start, length) of `buf`, gathered into one buffer with a separator
    after each, decoded and split at once; None when one is not UTF-8 or holds the separator."""
    m, total = len(start), int(length.sum())
    chars = buf[np.arange(total) + np.repeat(start - (np.cumsum(length) - length), length)]
    if (chars == 0x1F).any():
        return None
    joined = np.full(total + m, 0x1F, np.uint8)
    joined[np.arange(total) + np.repeat(np.arange(m), length)] = chars
    try:
        return joined[:-1].tobytes().decode("utf-8").split("\x1f")
    except UnicodeDecodeError:
        return None


def _length_delimited(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray, tag: int):
    """Reads, where present, the length-delimited field `tag` at `pos`; marks `ok` false where its
    length takes more than two bytes or overruns the record. (present, data start, length, next pos)."""
    present = (pos < end) & (buf[pos] == tag)
    b1, b2 = buf[pos + 1].astype(np.int64), buf[pos + 2].astype(np.int64)
    two = b1 >= 0x80
    length = np.where(two, (b1 & 0x7F) | (b2 << 7), b1)
    after = pos + 2 + two + length
    ok &= ~present | ((after <= end) & ~(two & (b2 >= 0x80)))
    return present, pos + 2 + two, length, np.where(present, np.minimum(after, end), pos)  # stays in its record


class PredictionColumns(NamedTuple):
    """One prediction log's rows as arrays, whichever form it came in."""
    features: np.ndarray  # float32 [N, F]; [N, 0] when the rows' widths disagree (row-wise form)
    scores: np.ndarray    # float32 [N, C]; [N, 0] when the rows' score counts disagree
    labels: np.ndarray    # int32 [N]
    event_ids: Sequence[str]  # N ids (some may be ""), or empty when the log has none

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows (N, F) and their positive-class scores (N,; NaN without two scores), as float64."""
        scores = (self.scores[:, 1].astype(np.float64) if self.scores.shape[1] >= 2
                  else np.full(len(self.labels), np.nan))
        return self.features.astype(np.float64), scores


def prediction_columns(log: serving_pb2.PredictionLog) -> PredictionColumns:
    """Reads a `PredictionLog` of either form (columnar buffers, or a `PredictedRow` per row) as
    arrays; raises ValueError when a columnar log's buffers disagree with its row count.

    >>> columnar = serving_pb2.PredictionLog(
    ...     feature_count=2, features_f32=np.array([[1, 2], [3, 4]], "<f4").tobytes(),
    ...     score_count=2, scores_f32=np.array([[.5, .5], [.25, .75]], "<f4").tobytes(),
    ...     labels_i32=np.array([0, 1], "<i4").tobytes(), event_ids=["e1", "e2"])
    >>> c = prediction_columns(columnar)
    >>> c.features.tolist(), c.scores[:, 1].tolist(), c.labels.tolist(), list(c.event_ids)
    ([[1.0, 2.0], [3.0, 4.0]], [0.5, 0.75], [0, 1], ['e1', 'e2'])
    >>> rowwise = serving_pb2.PredictionLog(rows=[serving_pb2.PredictedRow(
    ...     event_id="e1", features=[1, 2], scores=[.25, .75], label=1)])
    >>> c = prediction_columns(rowwise)
    >>> c.features.tolist(), c.scores.tolist(), c.labels.tolist(), list(c.event_ids)
    ([[1.0, 2.0]], [[0.25, 0.75]], [1], ['e1'])
    >>> prediction_columns(serving_pb2.PredictionLog(labels_i32=b"\\0" * 8, feature_count=3))
    Traceback (most recent call last):
    ...
    ValueError: features: 0 values for 2 rows of 3
    """
    rows = log.rows
    if rows:
        n = len(rows)
        labels = np.fromiter((r.label for r in rows), np.int32, n)
        event_ids = [r.event_id for r in rows]
        return PredictionColumns(_ragged(n, [r.features for r in rows]), _ragged(n, [r.scores for r in rows]),
                                 labels, event_ids if any(event_ids) else [])
    labels = np.frombuffer(log.labels_i32, "<i4")
    n = len(labels)
    if len(log.labels_i32) % 4:
        raise ValueError(f"labels: {len(log.labels_i32)} bytes is not a whole number of int32")
    features = _matrix(log.features_f32, n, log.feature_count, "features")
    scores = _matrix(log.scores_f32, n, log.score_count, "scores")
    event_ids = log.event_ids
    if event_ids and len(event_ids) != n:
        raise ValueError(f"{len(event_ids)} event ids for {n} rows")
    return PredictionColumns(features, scores, labels, event_ids)


def _matrix(buffer: bytes, n: int, width: int, what: str) -> np.ndarray:
    if width < 0 or len(buffer) != 4 * n * width:
        raise ValueError(f"{what}: {len(buffer) / 4:g} values for {n} rows of {width}")
    return np.frombuffer(buffer, "<f4").reshape(n, width)


def _ragged(n: int, rows: list) -> np.ndarray:
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        return np.empty((n, 0), np.float32)
    return np.fromiter(itertools.chain.from_iterable(rows), np.float32, n * width).reshape(n, width)
