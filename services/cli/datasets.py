"""`driftline datasets list | show ID | verify ID`: the dataset versions in the object store.

A dataset version is a manifest, `datasets/<stream>/versions/<id>.json`, naming the feature
segments it was cut from with their sha256. Its id and that layout are the rule of
services/common/datasets.py, the one the trainer writes versions by; `verify` recomputes the id
with it.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Annotated

import typer

from services.common import datasets as layout

from . import output
from .clients import s3_client
from .errors import CliError
from .state import Platform

SHA256_META = "x-amz-meta-sha256"  # what services.common.objectstore records on every write

app = typer.Typer(help="Dataset versions: list, show, verify (the object store).", no_args_is_help=True)
JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
StreamOpt = Annotated[str | None, typer.Option("--stream", help="Only this stream's datasets.")]
IdArg = Annotated[str, typer.Argument(help="The dataset id, or a prefix of it that only one id has.")]


def _get(client, bucket: str, key: str) -> tuple[bytes, str | None] | None:
    """(bytes, recorded sha256) of an object, None when there is none."""
    from minio.error import S3Error

    try:
        response = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise CliError(f"s3: reading {key}: {exc.code}") from None
    try:
        return response.read(), response.headers.get(SHA256_META)
    finally:
        response.close()
        response.release_conn()


def list_manifests(client, bucket: str, stream: str | None = None) -> list[dict]:
    found = []
    for obj in client.list_objects(bucket, layout.versions_prefix(stream) if stream else layout.PREFIX,
                                   recursive=True):
        if parsed := layout.parse_manifest_key(obj.object_name):
            found.append({"stream": parsed[0], "id": parsed[1], "key": obj.object_name,
                          "written": obj.last_modified.isoformat() if obj.last_modified else ""})
    return sorted(found, key=lambda m: m["written"])


def find(client, bucket: str, wanted: str, stream: str | None = None) -> dict:
    matches = [m for m in list_manifests(client, bucket, stream) if m["id"].startswith(wanted.lower())]
    if not matches:
        raise CliError(f"no dataset {wanted!r} in s3://{bucket}/datasets/ (driftline datasets list)")
    if len(matches) > 1:
        raise CliError(f"{wanted!r} names {len(matches)} datasets: {', '.join(m['id'][:12] for m in matches)}")
    return matches[0]


def read_manifest(client, bucket: str, stream: str, dataset_id: str) -> dict:
    key = layout.manifest_key(stream, dataset_id)
    got = _get(client, bucket, key)
    if got is None:
        raise CliError(f"no manifest {key} in s3://{bucket}")
    try:
        return json.loads(got[0])
    except ValueError:
        raise CliError(f"{key} is not JSON") from None


def verify_dataset(client, bucket: str, stream: str, dataset_id: str) -> tuple[dict, list[dict]]:
    """(manifest, one entry per part checked: {"part", "ok", "problem"})."""
    key = layout.manifest_key(stream, dataset_id)
    got = _get(client, bucket, key)
    if got is None:
        raise CliError(f"no manifest {key} in s3://{bucket}")
    data, recorded = got
    actual = hashlib.sha256(data).hexdigest()
    checks = [{"part": key, "ok": recorded == actual,
               "problem": "" if recorded == actual else f"sha256 {actual} but recorded {recorded}"}]
    try:
        manifest = json.loads(data)
        computed = layout.dataset_id(manifest)
    except (ValueError, KeyError, TypeError) as exc:
        checks.append({"part": f"{key} (id)", "ok": False, "problem": f"not a manifest: {exc!r}"})
        return {}, checks
    checks.append({"part": "dataset id", "ok": computed == dataset_id,
                   "problem": "" if computed == dataset_id else f"the manifest hashes to {computed}"})
    total = 0
    for segment in manifest.get("segments", []):
        total += int(segment.get("rows", 0))
        checks.append(_verify_segment(client, bucket, segment))
    checks.append({"part": "rows", "ok": total == manifest.get("rows"),
                   "problem": "" if total == manifest.get("rows") else
                   f"the manifest says {manifest.get('rows')} rows, its segments {total}"})
    return manifest, checks


def _verify_segment(client, bucket: str, segment: dict) -> dict:
    key, expected = segment["key"], segment["sha256"]
    got = _get(client, bucket, key)
    if got is None:
        return {"part": key, "ok": False, "problem": "missing"}
    data, recorded = got
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return {"part": key, "ok": False, "problem": f"sha256 {actual} does not match the manifest's {expected}"}
    if recorded != expected:
        return {"part": key, "ok": False, "problem": f"recorded sha256 {recorded} is not the manifest's {expected}"}
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    if rows < int(segment["rows"]):
        return {"part": key, "ok": False, "problem": f"{rows} rows, the manifest takes {segment['rows']}"}
    return {"part": key, "ok": True, "problem": ""}


@app.command("list")
def list_command(stream: StreamOpt = None, json_out: JsonOut = False) -> None:
    """The dataset versions trained on so far (oldest first)."""
    client, bucket = s3_client(Platform.load())
    rows = []
    for m in list_manifests(client, bucket, stream):
        manifest = read_manifest(client, bucket, m["stream"], m["id"])
        rows.append({**m, "rows": manifest.get("rows"), "segments": len(manifest.get("segments", [])),
                     "window_start_ms": manifest.get("window_start_ms"), "window_end_ms": manifest.get("window_end_ms")})
    if json_out:
        return output.emit_json(rows)
    output.table(["id", "stream", "rows", "segments", "window", "written"],
                 [(r["id"], r["stream"], r["rows"], r["segments"],
                   f"{output.iso(r['window_start_ms']) or 'start'} → {output.iso(r['window_end_ms'])}", r["written"])
                  for r in rows])


@app.command("show")
def show(dataset: IdArg, stream: StreamOpt = None, json_out: JsonOut = False) -> None:
    """One dataset version's manifest: window, feature names, segments."""
    client, bucket = s3_client(Platform.load())
    found = find(client, bucket, dataset, stream)
    manifest = read_manifest(client, bucket, found["stream"], found["id"])
    if json_out:
        return output.emit_json({"id": found["id"], "key": found["key"], **manifest})
    output.pairs([("dataset", found["id"]), ("stream", found["stream"]), ("manifest", f"s3://{bucket}/{found['key']}"),
                  ("window", f"{output.iso(manifest['window_start_ms']) or 'start'} → "
                             f"{output.iso(manifest['window_end_ms'])}"),
                  ("rows", manifest["rows"]), ("features", ", ".join(manifest["feature_names"]))])
    output.table(["segment", "rows", "sha256"], [(s["key"], s["rows"], s["sha256"]) for s in manifest["segments"]])


@app.command("verify")
def verify(dataset: IdArg, stream: StreamOpt = None, json_out: JsonOut = False) -> None:
    """Re-read and re-hash every segment and the manifest, recompute the id; exit 1 naming what differs."""
    client, bucket = s3_client(Platform.load())
    found = find(client, bucket, dataset, stream)
    _, checks = verify_dataset(client, bucket, found["stream"], found["id"])
    bad = [c for c in checks if not c["ok"]]
    if json_out:
        output.emit_json({"id": found["id"], "ok": not bad, "checks": checks})
    else:
        output.table(["part", "ok", "problem"], [(c["part"], "ok" if c["ok"] else "FAIL", c["problem"]) for c in checks])
    if bad:
        raise CliError(f"dataset {found['id'][:12]} does not verify: {bad[0]['part']}: {bad[0]['problem']}"
                       + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if not json_out:
        output.say(f"dataset {found['id']} verified: {len(checks) - 3} segments, manifest and id")
