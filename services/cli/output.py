"""Output: a rich table for people by default, JSON with --json (one document on stdout).

>>> from driftline.v1 import registry_pb2
>>> plain(registry_pb2.GateDecision(model_name="m", candidate_version=2, promoted=True))["candidate_version"]
2
>>> plain(registry_pb2.ModelVersion(name="m", params={"a": "b"}))["params"]
{'a': 'b'}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table


def _console(stream) -> Console:
    # Off a terminal (a pipe, a test) a table is not wrapped at 80 columns.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=stream, width=width, soft_wrap=False, highlight=False)


out = _console(sys.stdout)
err = _console(sys.stderr)


def emit_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> None:
    t = Table(title=title, title_justify="left", header_style="bold", show_edge=False, pad_edge=False)
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(t)


def pairs(items: Iterable[tuple[str, object]], title: str | None = None) -> None:
    """A two-column key/value table."""
    t = Table(title=title, title_justify="left", show_header=False, show_edge=False, pad_edge=False, box=None)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, value in items:
        t.add_row(key, "" if value is None else str(value))
    out.print(t)


def say(text: str) -> None:
    out.print(text, markup=False, soft_wrap=True)  # a log line stays one line


def note(text: str) -> None:
    """Progress and remarks go to stderr, so stdout stays the answer (tables or JSON)."""
    err.print(text, markup=False, soft_wrap=True)


def iso(ts: Timestamp | int | float | None) -> str:
    """A Timestamp, or epoch milliseconds, as ISO-8601 UTC; '' when unset."""
    if isinstance(ts, Timestamp):
        if not ts.seconds and not ts.nanos:
            return ""
        ms = ts.ToMilliseconds()
    elif not ts:
        return ""
    else:
        ms = int(ts)
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plain(message: Message) -> dict:
    """A protobuf message as JSON-ready Python values: int64 stays a number, a Timestamp is ISO-8601."""
    result = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {k: _value(v, value_field) for k, v in value.items()}
        elif field.is_repeated:
            result[field.name] = [_value(v, field) for v in value]
        else:
            result[field.name] = _value(value, field)
    return result


def _value(value, field):
    if isinstance(value, Timestamp):
        return iso(value)
    if isinstance(value, Message):
        return plain(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value
