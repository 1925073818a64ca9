"""`driftline streams add FILE | list | show NAME`: a stream is its schema file.

The platform's streams are the folder `$DRIFTLINE_HOME/streams/`: `driftline up` copies the
bundled schemas (`config/streams/`) there once and runs every service with it as
DRIFTLINE_STREAMS_DIR (services/common/streams.py, re-read when it changes), so a stream added
with `streams add` (always stored as JSON, `<stream>.json`) reaches a running platform: the
services that serve every stream pick it up from the folder, and the supervisor starts a serving
process for its model (serving runs one process per model), restarting no other. Before the
first `up` the bundled streams are listed too. A schema is read from JSON, or YAML when the
file ends in .yaml/.yml and PyYAML is installed, and checked by services.common.schema; a
malformed one is refused with the place (a JSON path, or line:column for a syntax error) and
the reason:

>>> check_schema({"stream": "s", "fields": [{"name": "a", "type": "float"}]})
Traceback (most recent call last):
...
services.cli.errors.CliError: $.fields[0]: field 'a': type 'float' is not one of ('number', 'integer', 'string', 'bool')
>>> check_schema({"stream": "s", "fields": [{"type": "number"}]})
Traceback (most recent call last):
...
services.cli.errors.CliError: $.fields[0]: missing 'name'
>>> check_schema({"stream": "s", "fields": [{"name": "a"}], "entity_features": [{"name": "m", "source": "b"}]})
Traceback (most recent call last):
...
services.cli.errors.CliError: $.entity_features[0]: entity feature 'm': source 'b' is not a numeric field
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from services.common import schema as schema_rules
from services.common.schema import SchemaError, StreamSchema
from services.common.streams import schema_document

from . import output
from .errors import CliError
from .processes import serve_new_models
from .state import Platform

BUNDLED = schema_rules.REPO_ROOT / "config" / "streams"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

app = typer.Typer(help="Stream schemas: add, list, show.", no_args_is_help=True)
JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]


# -- reading and checking a schema --------------------------------------------------------------


def parse_file(path: Path) -> dict:
    """The document in a schema file; CliError with FILE:line:column for a syntax error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return schema_document(text, str(path))
    except SchemaError as exc:
        raise CliError(str(exc)) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    if isinstance(exc, SchemaError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)


def check_schema(doc: dict) -> StreamSchema:
    """The schema services.common.schema makes of `doc`; CliError '<JSON path>: <reason>' if it refuses."""
    for key, kind in (("stream", str), ("fields", list)):
        if key not in doc:
            raise CliError(f"$: missing {key!r}")
        if not isinstance(doc[key], kind):
            raise CliError(f"$.{key}: expected {'a string' if kind is str else 'a list'}, got {type(doc[key]).__name__}")
    if not _NAME.match(doc["stream"]):
        raise CliError(f"$.stream: {doc['stream']!r} must be letters, digits, '.', '_' or '-'")
    if not doc["fields"]:
        raise CliError("$.fields: a stream needs at least one field")
    # Each part on its own first, so that a refusal names where it is.
    parts = [(f"$.fields[{i}]", schema_rules._field_spec, f) for i, f in enumerate(doc["fields"])]
    parts += [(f"$.entity_features[{i}]", schema_rules._entity_feature_spec, e)
              for i, e in enumerate(doc.get("entity_features") or [])]
    if doc.get("label") is not None:
        parts.append(("$.label", schema_rules._field_spec, {"name": doc.get("label_field", "label"), **_obj(doc["label"], "$.label")}))
    for where, rule, part in parts:
        try:
            rule(_obj(part, where))
        except (KeyError, TypeError, ValueError) as exc:
            raise CliError(f"{where}: {_reason(exc)}") from None
    try:
        return StreamSchema.from_dict(doc)
    except (SchemaError, ValueError) as exc:
        raise CliError(f"{_place(doc, str(exc))}: {exc}") from None


def _obj(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise CliError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _place(doc: dict, reason: str) -> str:
    """The JSON path of the field or entity feature a consistency rule names, else '$'."""
    if match := re.match(r"(field|entity feature) '([^']+)'", reason):
        key = "fields" if match[1] == "field" else "entity_features"
        for i, part in enumerate(doc.get(key) or []):
            if isinstance(part, dict) and part.get("name") == match[2]:
                return f"$.{key}[{i}]"
    if "label" in reason:
        return "$.label"
    return "$"


# -- where streams are --------------------------------------------------------------------------


def _schema_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".json", ".yaml", ".yml") and p.is_file())


def read_streams(platform: Platform) -> dict[str, tuple[Path, StreamSchema | CliError]]:
    """stream name -> (schema file, its schema or why it has none): the bundled ones, then the
    platform's own (which win); each file read once."""
    found = {}
    for path in _schema_files(BUNDLED) + _schema_files(platform.streams_dir):
        try:
            schema = load(path)
        except CliError as exc:
            found.setdefault(path.stem, (path, exc))  # listed, with its error, under its file's name
        else:
            found[schema.stream] = (path, schema)
    return found


def platform_models(platform: Platform) -> list[str]:
    """The models of the platform's streams, the default stream's (DRIFTLINE_MODEL_NAME) first."""
    names = [platform.settings.model_name]
    names += [schema.model_name for _, schema in read_streams(platform).values() if isinstance(schema, StreamSchema)]
    return list(dict.fromkeys(names))


def seed(platform: Platform) -> None:
    """The bundled schemas into the platform's streams folder, where it has none of that name."""
    platform.streams_dir.mkdir(parents=True, exist_ok=True)
    for path in _schema_files(BUNDLED):
        target = platform.streams_dir / path.name
        if not target.exists():
            target.write_text(path.read_text())


def find_stream(platform: Platform, name: str) -> tuple[Path, StreamSchema]:
    found = read_streams(platform).get(name)
    if found is None:
        raise CliError(f"unknown stream {name!r} (driftline streams list; add one with driftline streams add FILE)")
    path, schema = found
    if isinstance(schema, CliError):
        raise schema
    return path, schema


def load(path: Path) -> StreamSchema:
    try:
        return check_schema(parse_file(path))
    except CliError as exc:
        raise CliError(f"{path}: {exc}" if not str(exc).startswith(str(path)) else str(exc)) from None


def add(platform: Platform, path: Path, replace: bool = False) -> tuple[Path, StreamSchema, bool]:
    """Stores the schema at `path` as a stream of the platform; returns (where, schema, changed)."""
    doc = parse_file(path)
    try:
        schema = check_schema(doc)
    except CliError as exc:
        raise CliError(f"{path}: {exc}") from None
    existing, _ = read_streams(platform).get(schema.stream, (None, None))
    # One file per stream in the folder: a stream already there is replaced in its own file.
    target = existing if existing and existing.parent == platform.streams_dir else platform.streams_dir / f"{schema.stream}.json"
    text = json.dumps(doc, indent=2) + "\n"
    if target.exists():
        if target.read_text() == text:
            return target, schema, False
        if not replace:
            raise CliError(f"stream {schema.stream!r} is already at {target} with another schema (--replace overwrites it)")
    if target.suffix != ".json":  # the stream's YAML file gives way to the JSON one
        target.unlink()
        target = target.with_suffix(".json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target, schema, True


def resolve(platform: Platform, spec: str) -> tuple[Path, StreamSchema]:
    """`--stream` of `up`: a schema file (added to the platform) or the name of a known stream."""
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        where, schema, _ = add(platform, path, replace=True)
        return where, schema
    return find_stream(platform, spec)


def describe(schema: StreamSchema, path: Path) -> dict:
    return {
        "stream": schema.stream, "file": str(path), "source": "bundled" if path.parent == BUNDLED else "platform",
        "id_field": schema.id_field, "entity_field": schema.entity_field, "time_field": schema.time_field,
        "label_field": schema.label_field, "classes": schema.classes, "model": schema.model_name,
        "fields": [{"name": f.name, "type": f.type, "required": f.required, "min": f.min, "max": f.max}
                   for f in schema.fields],
        "entity_features": [{"name": e.name, "kind": e.kind, "source": e.source, "alpha": e.alpha}
                            for e in schema.entity_features],
        "feature_names": schema.feature_names,
    }


# -- the verbs ----------------------------------------------------------------------------------


@app.command("add")
def add_command(file: Annotated[Path, typer.Argument(help="The schema: .json, or .yaml/.yml with PyYAML.")],
                replace: Annotated[bool, typer.Option(help="Overwrite a stream of that name with another schema.")] = False,
                timeout: Annotated[float, typer.Option(
                    help="On a running platform: seconds to wait for the new serving process.")] = 60.0,
                json_out: JsonOut = False) -> None:
    """Check a stream schema and keep it in the platform's streams directory; on a running platform,
    start a serving process for its model (when it has none), restarting nothing else."""
    platform = Platform.load()
    where, schema, changed = add(platform, file, replace)
    info = {**describe(schema, where), "changed": changed, "serving": None}
    if platform.running():
        started = {row["model"]: row for row in serve_new_models(platform, timeout)}
        row = started.get(schema.model_name)
        info["serving"] = row or {"model": schema.model_name, "address": platform.serving.get(
            schema.model_name, {}).get("address")}
        info["serving"]["started"] = row is not None
    if json_out:
        return output.emit_json(info)
    verb = "added" if changed else "already there, unchanged:"
    output.say(f"stream {schema.stream} {verb} {where} ({len(schema.fields)} fields, "
               f"{len(schema.feature_names)} features)")
    if info["serving"]:
        serving = info["serving"]
        how = f"started (pid {serving['pid']})" if serving["started"] else "already served"
        output.say(f"model {schema.model_name}: serving at {serving['address']}, {how}")


@app.command("list")
def list_command(json_out: JsonOut = False) -> None:
    """The streams this platform knows (bundled and added)."""
    platform = Platform.load()
    rows = [describe(schema, path) if isinstance(schema, StreamSchema) else
            {"stream": name, "file": str(path), "error": str(schema)}
            for name, (path, schema) in read_streams(platform).items()]
    if json_out:
        return output.emit_json(rows)
    output.table(["stream", "model", "fields", "features", "label", "source", "file"],
                 [(r["stream"], r.get("model", ""), len(r.get("fields", [])), len(r.get("feature_names", [])),
                   r.get("label_field", r.get("error", "")), r.get("source", "broken"), r["file"]) for r in rows])


@app.command("show")
def show_command(name: Annotated[str, typer.Argument(help="The stream's name.")], json_out: JsonOut = False) -> None:
    """One stream's fields, entity features and feature vector."""
    path, schema = find_stream(Platform.load(), name)
    info = describe(schema, path)
    if json_out:
        return output.emit_json(info)
    output.pairs([("stream", schema.stream), ("model", schema.model_name), ("file", path), ("id / entity / time", f"{schema.id_field} / "
                  f"{schema.entity_field} / {schema.time_field}"),
                  ("label", f"{schema.label_field} {schema.classes or ''}".strip()),
                  ("features", ", ".join(schema.feature_names))])
    output.table(["field", "type", "required", "min", "max"],
                 [(f["name"], f["type"], f["required"], f["min"], f["max"]) for f in info["fields"]])
    if schema.entity_features:
        output.table(["entity feature", "kind", "source", "alpha"],
                     [(e.name, e.kind, e.source, e.alpha) for e in schema.entity_features])
