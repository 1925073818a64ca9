"""Delayed labels into label segments: every Label of `driftline.labels`,
filed under its stream (`datasets/<stream>/labels/`), where the trainer joins
it onto the event's feature row by `event_id` when it cuts a dataset.

A label's stream is its `driftline.stream` header, else its `stream` field,
else the default stream; a stream the catalogue does not know still gets its
labels' segment (the labeller may know a stream before this process does, and a
label is never dropped for it). A record that is not a Label goes to the
feature dead-letter topic (stage `decode`). The writing, committing and
de-duplication are the segment writer's (segment_writer.py): at least once from
Kafka, and each label once in the segments.

>>> label = events_pb2.Label(event_id="e-1", label=1, stream="sea")
>>> label.labelled_at.FromMilliseconds(5000)
>>> label_stream(label, [("driftline.stream", b"hyper")], "default"), label_stream(label, [], "default")
('hyper', 'sea')
>>> label_row(7, label)
LabelRow(offset=7, event_id='e-1', label=1, labelled_at_ms=5000, event_time_ms=0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import Message

from driftline.v1 import events_pb2
from services.common.datasets import LABEL_COLUMNS, labels_prefix
from services.common.deadletter import DECODE, DeadLetterQueue, Headers
from services.common.kafka import DecodeFailure, decode, header
from services.common.objectstore import ObjectStore
from services.common.streams import StreamCatalog

from .metrics import LABEL_ROWS, LABEL_SEGMENTS
from .segment_writer import SegmentWriter
from .segments import LabelRow, write_label_segment
from .settings import FeatureSettings

log = logging.getLogger(__name__)

STREAM_HEADER = "driftline.stream"


def label_stream(label: events_pb2.Label, headers: Headers | None, default: str) -> str:
    return header(headers, STREAM_HEADER) or label.stream or default


def label_row(offset: int, label: events_pb2.Label) -> LabelRow:
    event_time_ms = label.event_time.ToMilliseconds() if label.HasField("event_time") else 0
    return LabelRow(offset, label.event_id, label.label, label.labelled_at.ToMilliseconds(), event_time_ms)


class LabelSegmentWriter(SegmentWriter):
    kind = "labels"
    segments = LABEL_SEGMENTS
    rows = LABEL_ROWS

    def __init__(self, settings: FeatureSettings, store: ObjectStore, catalog: StreamCatalog,
                 dead_letters: DeadLetterQueue) -> None:
        super().__init__(settings, store, settings.topics.labels, settings.labels_group_id)
        self.default_stream = catalog.default
        self.dead_letters = dead_letters

    def parse(self, msg: Message) -> tuple[str, tuple[str, ...], LabelRow] | None:
        try:
            label = decode(msg.value(), events_pb2.Label)
        except DecodeFailure as exc:
            # Sent before the offset is committed past it (the writer commits after this round).
            self.dead_letters.send(msg, str(exc), stage=DECODE)
            return None
        if not label.event_id:
            self.dead_letters.send(msg, "a Label without an event_id labels nothing", stage=DECODE, field="event_id")
            return None
        try:
            row = label_row(msg.offset(), label)
        except ValueError as exc:
            # A timestamp out of Timestamp's range: raised here it would end the writer's round and
            # lose the rest of the records polled with it, so it is this record's dead letter.
            self.dead_letters.send(msg, f"a Label with an invalid timestamp: {exc}", stage=DECODE)
            return None
        return label_stream(label, msg.headers(), self.default_stream), LABEL_COLUMNS, row

    def prefix(self, stream: str) -> str:
        return labels_prefix(stream)

    def write(self, stream: str, partition: int, rows: Sequence[LabelRow], layout: tuple[str, ...]
              ) -> dict[str, object]:
        return write_label_segment(self.store, stream, partition, rows)
