"""Dataset versions in the object store: where their parts are and what names a version, once.

    datasets/<stream>/segments/<name>.parquet + .json   immutable feature segments and their
                                                       sidecars (written by feature)
    datasets/<stream>/labels/<name>.parquet + .json     immutable label segments: the labels of
                                                       `driftline.labels` (written by feature)
    datasets/<stream>/versions/<dataset_id>.json       a dataset version's manifest (trainer)
    datasets/<stream>/eval/<dataset_id>.parquet        its held-out slice (trainer)
    datasets/<stream>/recent/<sha256>.parquet          rows a version took from the features
                                                       topic before a segment held them (trainer)

A dataset version is a manifest naming the segments it was cut from (with their sha256), the
label segments its delayed labels came from (when any did), its event-time window, its feature
names and its row count. Its id is the sha256 of the canonical JSON (sorted keys, no whitespace)
of the segments, the label segments (only when there are some), the window and the feature
names; the row count follows from the segments and is left out. The same data therefore always
has the same id, whoever computes it (the trainer writing a version, `driftline datasets verify`
checking one):

>>> manifest = {"segments": [], "window_start_ms": 0, "window_end_ms": 5, "feature_names": ["a"], "rows": 0}
>>> dataset_id(manifest)
'4b28df7a1682088176a9ef1752c8165c9aad7fbf7f50aab94d08fcaa9d13099a'
>>> dataset_id({**manifest, "rows": 7, "stream": "s"}) == dataset_id(manifest)  # not part of the identity
True
>>> dataset_id({**manifest, "feature_names": ["b"]})[:8]
'5c45900b'
>>> dataset_id({**manifest, "label_segments": []}) == dataset_id(manifest)  # no delayed labels
True
>>> dataset_id({**manifest, "label_segments": [{"key": "k", "sha256": "s", "labels": 1}]})[:8]
'9cb80acb'
>>> manifest_key("sea", "4b28df7a"), parse_manifest_key("datasets/sea/versions/4b28df7a.json")
('datasets/sea/versions/4b28df7a.json', ('sea', '4b28df7a'))
>>> parse_manifest_key("datasets/sea/segments/p000-000000000000-000000000009.json") is None
True
>>> label_segment_key("sea", 0, 0, 9)
'datasets/sea/labels/p000-000000000000-000000000009.parquet'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import pyarrow as pa

PREFIX = "datasets/"
LABELS = "labels"
# Label segments' columns: the label of an event, when it became known, and the event's time
# (0 when the labeller did not know it).
LABEL_COLUMNS = ("event_id", "label", "labelled_at_ms", "event_time_ms")
# The manifest's parts that name a version (everything else in it follows from them).
IDENTITY_KEYS = ("segments", "window_start_ms", "window_end_ms", "feature_names")
# Parts of the identity only when not empty, so a version without them keeps the id it had before.
OPTIONAL_IDENTITY_KEYS = ("label_segments",)


def dataset_id(manifest: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of the manifest's segments, label segments, window and feature names."""
    identity = {key: manifest[key] for key in IDENTITY_KEYS}
    identity.update({key: manifest[key] for key in OPTIONAL_IDENTITY_KEYS if manifest.get(key)})
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stream_prefix(stream: str | None = None) -> str:
    """Where one stream's datasets are (every stream's without one)."""
    return f"{PREFIX}{stream}/" if stream else PREFIX


def segments_prefix(stream: str) -> str:
    return f"{stream_prefix(stream)}segments/"


def labels_prefix(stream: str) -> str:
    return f"{stream_prefix(stream)}{LABELS}/"


def segment_name(partition: int, first_offset: int, last_offset: int) -> str:
    """A segment's file name: its source partition and offset range, so a name never repeats.
    Names of one partition sort by offset after a common start (`partition_part`).

    >>> segment_name(2, 0, 99), partition_part_of(segment_name(2, 0, 99)) == partition_part(2)
    ('p002-000000000000-000000000099', True)
    """
    return f"{partition_part(partition)}{first_offset:012d}-{last_offset:012d}"


def partition_part(partition: int) -> str:
    """What the name of every segment of `partition` starts with."""
    return f"p{partition:03d}-"


def partition_part_of(name: str) -> str:
    """The `partition_part` a segment name starts with."""
    return name[:name.index("-") + 1]


def segment_schema(feature_names: Sequence[str]) -> pa.Schema:
    """The columns of a feature segment (and of a recent part): the event, its own label, its values."""
    return pa.schema([
        ("event_id", pa.string()), ("entity_id", pa.string()), ("event_time_ms", pa.int64()),
        ("label", pa.int32()), *((name, pa.float64()) for name in feature_names)])


def recent_part_key(stream: str, sha256: str) -> str:
    """Where the rows a dataset version took from the features topic are, by their content."""
    return f"{stream_prefix(stream)}recent/{sha256}.parquet"


def label_segment_key(stream: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The Parquet object of a label segment (its sidecar: the same key ending in .json)."""
    return f"{labels_prefix(stream)}{segment_name(partition, first_offset, last_offset)}.parquet"


def versions_prefix(stream: str) -> str:
    return f"{stream_prefix(stream)}versions/"


def manifest_key(stream: str, dataset_id: str) -> str:
    return f"{versions_prefix(stream)}{dataset_id}.json"


def eval_key(stream: str, dataset_id: str) -> str:
    return f"{stream_prefix(stream)}eval/{dataset_id}.parquet"


def parse_manifest_key(key: str) -> tuple[str, str] | None:
    """(stream, dataset id) of a manifest's key, None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and f"{parts[0]}/" == PREFIX and parts[2] == "versions" and parts[3].endswith(".json"):
        return parts[1], parts[3][: -len(".json")]
    return None
