"""The streams of a deployment: one schema file each in one folder, read by every service.

A deployment runs several streams, each with its own model, on one process per role. The
catalogue is the folder `DRIFTLINE_STREAMS_DIR` (`config/streams/` by default; a ConfigMap in
Kubernetes): every `*.json` (or `*.yaml`/`*.yml`) in it is a stream schema. Services call
`refresh()` now and then (it only stats the folder), so a stream added to a running platform is
picked up by every service without restarting one that serves another stream. A file that does
not parse is reported and skipped, and the streams that parsed keep working.

A raw record names its stream in the `driftline.stream` header (what `driftline produce` and
`kcat -H driftline.stream=NAME` send) or, for protobuf, in `Event.stream`; a record that names
none belongs to the deployment's default stream (`DRIFTLINE_STREAM`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from .schema import REPO_ROOT, SchemaError, StreamSchema

log = logging.getLogger(__name__)

STREAM_HEADER = "driftline.stream"
SUFFIXES = (".json", ".yaml", ".yml")


def schema_document(text: str, source: str) -> dict:
    """The object in a schema file's text (YAML when `source` ends in .yaml/.yml, else JSON);
    SchemaError with `source:line:column` for a syntax error.

    >>> schema_document('{"stream": ', "s.json")
    Traceback (most recent call last):
    ...
    services.common.schema.SchemaError: s.json:1:12: not valid JSON: Expecting value
    """
    if source.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as exc:  # PyYAML is optional at run time: JSON needs nothing
            raise SchemaError(f"{source}: YAML schemas need PyYAML (pip install pyyaml)") from exc
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            raise SchemaError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(doc, dict):
            raise SchemaError(f"{source}: a stream schema is an object, got {type(doc).__name__}")
        return doc
    return json_object(text, source, "a stream schema")


def json_object(text: str, source: str, what: str, line: int | None = None) -> dict:
    """The JSON object in `text` (line `line` of the file `source`, or all of it); SchemaError
    (a ValueError) with `source:line:column` otherwise.

    >>> json_object('[1]', "rows.jsonl", "a row", line=3)
    Traceback (most recent call last):
    ...
    services.common.schema.SchemaError: rows.jsonl:3: a row is a JSON object, got list
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{source}:{line or exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise SchemaError(f"{source}{f':{line}' if line else ''}: {what} is a JSON object, got {type(doc).__name__}")
    return doc


def parse_schema_text(text: str, source: str) -> StreamSchema:
    """A schema from the text of a JSON or YAML file; SchemaError names the file and the reason."""
    doc = schema_document(text, source)
    try:
        return StreamSchema.from_dict(doc)
    except SchemaError as exc:
        raise SchemaError(f"{source}: {exc}") from exc


class StreamCatalog:
    """The schemas of a streams folder, by stream name, re-read when the folder changes.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "sea.json").write_text('{"stream": "sea", "fields": [{"name": "x", "type": "number"}]}')
    >>> catalog = StreamCatalog(folder, default="sea")
    >>> catalog.names(), catalog.get("sea").model_name, catalog.get(None).stream
    (['sea'], 'sea', 'sea')
    >>> catalog.get("nope") is None
    True
    """

    def __init__(self, folder: str | Path, default: str = "default", *, min_interval_s: float = 1.0) -> None:
        folder = Path(folder)
        if not folder.is_absolute() and not folder.exists():
            folder = REPO_ROOT / folder
        self.folder = folder
        self.default = default
        self.min_interval_s = min_interval_s
        self.errors: dict[str, str] = {}  # file name -> why it was skipped
        self._schemas: dict[str, StreamSchema] = {}
        self._seen: dict[str, float] = {}  # file name -> mtime when read
        self._checked_at = float("-inf")
        self.refresh(force=True)

    @classmethod
    def from_settings(cls, settings) -> "StreamCatalog":
        return cls(settings.streams_dir, default=settings.stream)

    def refresh(self, force: bool = False) -> bool:
        """Re-reads the files that changed since the last look; True when a stream came, went or changed."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.min_interval_s:
            return False
        self._checked_at = now
        try:
            files = {p.name: p for p in self.folder.iterdir() if p.suffix in SUFFIXES and p.is_file()}
        except OSError as exc:
            log.error("cannot read the streams folder", extra={"folder": str(self.folder), "error": str(exc)})
            return False
        mtimes = {name: path.stat().st_mtime for name, path in files.items()}
        if mtimes == self._seen:
            return False
        schemas, errors = {}, {}
        for name in sorted(files):
            try:
                schema = parse_schema_text(files[name].read_text(), name)
            except (OSError, SchemaError) as exc:
                errors[name] = str(exc)
                continue
            if schema.stream in schemas:
                errors[name] = f"{name}: stream {schema.stream!r} is already defined by another file"
                continue
            schemas[schema.stream] = schema
        for name, why in errors.items():
            if self.errors.get(name) != why:
                log.error("stream schema skipped", extra={"file": name, "reason": why})
        changed = schemas != self._schemas
        self._schemas, self.errors, self._seen = schemas, errors, mtimes
        if changed:
            log.info("streams", extra={"streams": sorted(schemas)})
        return changed

    def get(self, stream: str | None) -> StreamSchema | None:
        """The schema of `stream` (the default stream when empty or None), or None if unknown."""
        self.refresh()
        return self._schemas.get(stream or self.default)

    def names(self) -> list[str]:
        return sorted(self._schemas)

    def __iter__(self) -> Iterator[StreamSchema]:
        return iter([self._schemas[name] for name in sorted(self._schemas)])

    def model_stream(self, model_name: str) -> StreamSchema | None:
        """The stream whose model is `model_name`, if one is."""
        self.refresh()
        return next((s for s in self._schemas.values() if s.model_name == model_name), None)
