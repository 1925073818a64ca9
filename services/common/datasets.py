"""Dataset versions in the object store: where their parts are and what names a version, once.

    datasets/<stream>/segments/<name>.parquet + .json   immutable feature segments and their
                                                       sidecars (written by feature)
    datasets/<stream>/versions/<dataset_id>.json       a dataset version's manifest (trainer)
    datasets/<stream>/eval/<dataset_id>.parquet        its held-out slice (trainer)

A dataset version is a manifest naming the segments it was cut from (with their sha256), its
event-time window, its feature names and its row count. Its id is the sha256 of the canonical
JSON (sorted keys, no whitespace) of the segments, the window and the feature names; the row
count follows from the segments and is left out. The same data therefore always has the same id,
whoever computes it (the trainer writing a version, `driftline datasets verify` checking one):

>>> manifest = {"segments": [], "window_start_ms": 0, "window_end_ms": 5, "feature_names": ["a"], "rows": 0}
>>> dataset_id(manifest)
'4b28df7a1682088176a9ef1752c8165c9aad7fbf7f50aab94d08fcaa9d13099a'
>>> dataset_id({**manifest, "rows": 7, "stream": "s"}) == dataset_id(manifest)  # not part of the identity
True
>>> dataset_id({**manifest, "feature_names": ["b"]})[:8]
'5c45900b'
>>> manifest_key("sea", "4b28df7a"), parse_manifest_key("datasets/sea/versions/4b28df7a.json")
('datasets/sea/versions/4b28df7a.json', ('sea', '4b28df7a'))
>>> parse_manifest_key("datasets/sea/segments/p000-000000000000-000000000009.json") is None
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

PREFIX = "datasets/"
# The manifest's parts that name a version (everything else in it follows from them).
IDENTITY_KEYS = ("segments", "window_start_ms", "window_end_ms", "feature_names")


def dataset_id(manifest: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of the manifest's segments, window and feature names."""
    identity = {key: manifest[key] for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stream_prefix(stream: str | None = None) -> str:
    """Where one stream's datasets are (every stream's without one)."""
    return f"{PREFIX}{stream}/" if stream else PREFIX


def segments_prefix(stream: str) -> str:
    return f"{stream_prefix(stream)}segments/"


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
