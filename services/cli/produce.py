"""`driftline produce FILE --stream NAME`: replays a file into the raw events topic as JSON, the
way an external producer would (services/ingest validates it there).

A row without an event time gets the time it is sent; a row without an id gets a stable one, a
hash of the stream, the row's content and its index, so a replay of the same file sends the same
ids (ingest de-duplicates them) and a delayed label can name its event:

>>> stable_id("default", {"salary": 1.0}, 0) == stable_id("default", {"salary": 1.0}, 0)
True
>>> stable_id("default", {"salary": 1.0}, 0) != stable_id("default", {"salary": 1.0}, 1)
True
>>> plain_row({"a": None, "b": 2, "t": datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)})
{'b': 2, 't': 1000}
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import time
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from driftline.v1 import events_pb2

from services.common.kafka import JSON
from services.common.streams import STREAM_HEADER

from . import output, streams
from .clients import producer, require_serving
from .errors import CliError, json_object
from .state import Platform

FORMATS = (".jsonl", ".csv", ".parquet")


def stable_id(stream: str, row: dict, index: int) -> str:
    content = json.dumps([stream, index, row], sort_keys=True, separators=(",", ":"), default=str)
    return f"{stream}-{hashlib.sha256(content.encode()).hexdigest()[:32]}"


def plain_row(row: dict) -> dict:
    """JSON-ready values: nulls dropped (a missing field), times as epoch milliseconds."""
    result = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, datetime):
            value = int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp() * 1000)
        elif isinstance(value, date):
            value = int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp() * 1000)
        elif isinstance(value, Decimal):
            value = float(value)
        result[key] = value
    return result


def read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CliError(f"{path}: not one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    if suffix == ".jsonl":
        rows = []
        with path.open() as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    rows.append(plain_row(json_object(line, path, "a row", line=n)))
        return rows
    if suffix == ".csv":
        return read_csv_rows(path)
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise CliError(f"{path}: cannot read as parquet: {exc}") from None
    return [plain_row(row) for row in table.to_pylist()]


def csv_value(text: str) -> object:
    """A CSV cell as a JSON producer would send it: a number when it reads as one, else the text.

    Cell by cell, not column by column (as a columnar reader infers types): one mistyped cell must
    make one bad record, the one ingest dead-letters, not turn the whole column into strings.

    >>> [csv_value(v) for v in ["3", "-2.5", "1e3", "oops", " 7 "]]
    [3, -2.5, 1000.0, 'oops', 7]
    """
    stripped = text.strip()
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            continue
    return text


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header line; an empty cell is a missing field."""
    import csv

    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise CliError(f"{path}: no header line")
            return [{k: csv_value(v) for k, v in row.items() if k is not None and v not in (None, "")}
                    for row in reader]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read as csv: {exc}") from None


def produce(file: Annotated[Path, typer.Argument(help="Rows to send: .jsonl, .csv or .parquet.")],
            stream: Annotated[str, typer.Option(help="The stream the rows belong to (driftline streams list).")],
            rate: Annotated[float, typer.Option(help="Rows per second (0: as fast as Kafka takes them).")] = 0.0,
            label_delay: Annotated[float | None, typer.Option(
                help="Strip the label from each event and send it S seconds later on the labels topic.")] = None,
            check: Annotated[bool, typer.Option(help="Refuse when ingest does not answer its health check.")] = True,
            json_out: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False) -> None:
    """Replay a file into the platform's raw events topic, as JSON."""
    platform = Platform.load()
    _, schema = streams.find_stream(platform, stream)
    rows = read_rows(file)
    if check:
        require_serving(platform, "ingest")
    topics = platform.topics
    kafka = producer(platform)
    labels: collections.deque[tuple[float, events_pb2.Label]] = collections.deque()
    counts = collections.Counter()
    started = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    headers = [("content-type", JSON.encode()), (STREAM_HEADER, schema.stream.encode())]

    def send_due_labels(now: float) -> None:
        while labels and labels[0][0] <= now:
            _, label = labels.popleft()
            label.labelled_at.GetCurrentTime()
            kafka.produce(topics.labels, label, key=label.event_id)
            counts["labels"] += 1

    from rich.progress import Progress

    with Progress(console=output.err, disable=json_out or not output.err.is_terminal) as progress:
        task = progress.add_task(f"{file.name} → {topics.events_raw}", total=len(rows))
        for index, row in enumerate(rows):
            if interval:
                delay = started + index * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            event = dict(row)
            if not event.get(schema.id_field):
                event[schema.id_field] = stable_id(schema.stream, row, index)
                counts["generated_ids"] += 1
            if event.get(schema.time_field) is None:
                event[schema.time_field] = int(time.time() * 1000)
                counts["generated_times"] += 1
            if label_delay is not None and event.get(schema.label_field) is not None:
                label = events_pb2.Label(event_id=str(event[schema.id_field]), label=int(event.pop(schema.label_field)))
                if isinstance(event[schema.time_field], int):
                    label.event_time.FromMilliseconds(event[schema.time_field])
                labels.append((time.monotonic() + label_delay, label))
            key = str(event.get(schema.entity_field) or event[schema.id_field])
            kafka.produce_raw(topics.events_raw, json.dumps(event).encode(), key, headers)
            counts["sent"] += 1
            send_due_labels(time.monotonic())
            progress.advance(task)
        if labels:
            progress.add_task(f"labels after {label_delay:g}s", total=None)
        while labels:
            time.sleep(max(0.0, min(0.2, labels[0][0] - time.monotonic())))
            send_due_labels(time.monotonic())
    try:
        kafka.flush(30)
    except Exception as exc:
        raise CliError(f"kafka: not every row was delivered: {exc}") from None
    result = {"topic": topics.events_raw, "sent": counts["sent"], "labels_topic": topics.labels,
              "labels": counts["labels"], "generated_ids": counts["generated_ids"],
              "generated_times": counts["generated_times"], "seconds": round(time.monotonic() - started, 2)}
    if json_out:
        return output.emit_json(result)
    extra = f", {result['labels']} labels to {topics.labels} {label_delay:g}s later" if label_delay is not None else ""
    output.say(f"sent {result['sent']} rows of {file} to {topics.events_raw}{extra} in {result['seconds']}s "
               f"({result['generated_ids']} ids and {result['generated_times']} event times given here)")
