"""Writes a topic's records to immutable segments in the object store, per
(stream, partition): the FeatureRecords of `driftline.features` (feature
segments) and the Labels of `driftline.labels` (label segments, labels.py).

A writer reads its topic (read_committed, its own consumer group) rather than
taking rows from inside the feature processor, so that a row is never lost and
never written twice:
- offsets are committed only up to the first row still in a buffer, of any
  stream, so a crash replays exactly the rows not yet in a segment;
- a replayed row already in its stream's segment (crash between upload and
  commit) is skipped: the object store's segment names say which offsets of a
  (stream, partition) are covered;
- read_committed: the records of a feature transaction aborted by a crash are
  never seen, so each event_id reaches a segment once.
The processor's own transactions do not wait for a segment upload.

A feature record's stream is its `feature_set`; its segments go to
`datasets/<stream>/segments/` with that stream's feature names (from the
catalogue, looked up when the row is read). Every record is written, labelled
or not: a label that arrives later on `driftline.labels` is joined onto the row
by the trainer. One buffer per (stream, partition); a buffer is written when it
holds `feature_segment_rows` rows or its oldest row is `feature_segment_seconds`
old, when its partition is revoked, and on stop (after reading up to the end of
the topic, so the last records produced are in a segment). A stream whose
feature names change while rows are buffered gets a new buffer; the old one is
written first, under the names its rows were computed with.

Streams are independent: a burst in one writes that stream's full segments
and nothing else, and a failed upload backs off that (stream, partition)
only; its rows stay buffered and uncommitted, and the other streams' segments
are written meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer as _Consumer, Message, TopicPartition

from driftline.v1 import features_pb2
from services.common.datasets import segments_prefix
from services.common.kafka import Consumer, DecodeFailure, decode, exit_if_fatal
from services.common.objectstore import ObjectStore
from services.common.streams import StreamCatalog
from services.common.threads import Backoff, StoppableThread

from .catalog import current_schema
from .metrics import SEGMENT_FAILURES, SEGMENT_ROWS, SEGMENTS, SKIPPED_ROWS
from .segments import SegmentRow, covered_offset, write_segment
from .settings import FeatureSettings

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (stream, partition)


@dataclass
class _Buffer:
    layout: tuple[str, ...]  # the rows' columns (a feature stream's names): a change starts a new buffer
    opened_at: float  # monotonic time of the oldest row
    rows: list = field(default_factory=list)


@dataclass
class _Pending:
    """One (stream, partition)'s rows not yet in a segment: its buffers, oldest first (more than
    one only when the layout changed), and when a failed upload may be retried."""

    buffers: list[_Buffer] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)
    retry_at: float = 0.0

    @property
    def first_offset(self) -> int:
        return self.buffers[0].rows[0].offset


class SegmentWriter(StoppableThread):
    """The buffering, flushing and committing; a subclass says what a record is (`parse`), where
    its stream's segments are (`prefix`) and how a segment is written (`write`)."""

    kind = "segments"
    segments = SEGMENTS
    rows = SEGMENT_ROWS

    def __init__(self, settings: FeatureSettings, store: ObjectStore, topic: str, group_id: str) -> None:
        super().__init__(f"feature-{self.kind}")
        self.store = store
        self.topic = topic
        self.max_rows = settings.feature_segment_rows
        self.max_age_s = settings.feature_segment_seconds
        self.drain_timeout_s = settings.shutdown_grace_s
        self.consumer = Consumer(settings.kafka_bootstrap, group_id, [self.topic], from_beginning=True,
                                 read_committed=True, instance_id=settings.member_id(self.kind),
                                 session_timeout_ms=settings.kafka_session_timeout_ms,
                                 config=settings.kafka_client_config())
        # Re-subscribe with callbacks: a revoked partition's buffers are written while still owned.
        self.consumer.raw.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._pending: dict[Key, _Pending] = {}
        self._next_offset: dict[int, int] = {}  # partition -> offset after the last record seen
        self._covered: dict[Key, int] = {}  # (stream, partition) -> last offset already in a segment
        self._committed: dict[int, int] = {}  # partition -> offset this writer last committed
        self.segments_written = 0

    def parse(self, msg: Message) -> tuple[str, tuple[str, ...], object] | None:
        """(stream, layout, row with an `offset`) of a record, or None to skip it."""
        raise NotImplementedError

    def prefix(self, stream: str) -> str:
        raise NotImplementedError

    def write(self, stream: str, partition: int, rows: Sequence, layout: tuple[str, ...]) -> dict[str, object]:
        """Stores one segment; returns its sidecar."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                for msg in self.consumer.poll_messages(500, 0.2):
                    self._add(msg)
                self._flush(force=False)
                backoff.reset()
            except Exception as exc:
                exit_if_fatal(exc)  # a fenced consumer can never commit again: the next process takes over
                # Kafka trouble: the buffers and uncommitted offsets stay as they are; the next round retries.
                SEGMENT_FAILURES.inc()
                log.exception("segment round failed; retrying", extra={"writer": self.kind})
                self.wait(backoff.next())
        try:
            self._drain()
            if self._flush(force=True):
                log.error("some segments could not be written at stop; their rows stay uncommitted "
                          "and will be replayed", extra={"writer": self.kind})
        except Exception:
            log.exception("final segment flush failed; the rows stay uncommitted and will be replayed")
        finally:
            self.consumer.close()

    # -- rows in ----------------------------------------------------------------------------------

    def _add(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        self._next_offset[partition] = offset + 1
        parsed = self.parse(msg)
        if parsed is None:
            return
        stream, layout, row = parsed
        if offset <= self._covered_offset(stream, partition):
            return  # already in one of the stream's segments
        pending = self._pending.setdefault((stream, partition), _Pending())
        if not pending.buffers or pending.buffers[-1].layout != layout:
            pending.buffers.append(_Buffer(layout, time.monotonic()))
        pending.buffers[-1].rows.append(row)

    def _covered_offset(self, stream: str, partition: int) -> int:
        key = (stream, partition)
        if key not in self._covered:
            self._covered[key] = covered_offset(self.store, self.prefix(stream), partition)
        return self._covered[key]

    # -- segments out -----------------------------------------------------------------------------

    def _flush(self, force: bool, partitions: list[int] | None = None) -> list[Key]:
        """Writes what is due (everything when forced), then commits; returns the keys that failed."""
        now = time.monotonic()
        failed = []
        for key in list(self._pending):
            if partitions is not None and key[1] not in partitions:
                continue
            pending = self._pending[key]
            if not force and now < pending.retry_at:
                continue
            try:
                self._flush_pending(key, pending, force, now)
            except Exception:
                # Only this (stream, partition) waits: its rows stay buffered and uncommitted.
                SEGMENT_FAILURES.inc()
                pending.retry_at = time.monotonic() + pending.backoff.next()
                failed.append(key)
                log.exception("segment upload failed; retrying", extra={"stream": key[0], "partition": key[1]})
                continue
            pending.backoff.reset()
            pending.retry_at = 0.0
            if not pending.buffers:
                del self._pending[key]
        self._commit(partitions)
        return failed

    def _flush_pending(self, key: Key, pending: _Pending, force: bool, now: float) -> None:
        while pending.buffers:
            buffer = pending.buffers[0]
            # A buffer followed by another (the feature names changed) gets no more rows: write it all.
            everything = force or len(pending.buffers) > 1 or now - buffer.opened_at >= self.max_age_s
            # Full segments first (a backlog polled at once still makes segments of max_rows rows);
            # a remainder waits for more rows unless it is due. Rows leave the buffer only once
            # their segment is stored.
            while len(buffer.rows) >= self.max_rows or (everything and buffer.rows):
                self._write(key, buffer, buffer.rows[:self.max_rows])
                del buffer.rows[:self.max_rows]
                buffer.opened_at = now
            if buffer.rows:
                return
            pending.buffers.pop(0)

    def _write(self, key: Key, buffer: _Buffer, rows: list) -> None:
        stream, partition = key
        sidecar = self.write(stream, partition, rows, buffer.layout)
        self._covered[key] = rows[-1].offset
        self.segments_written += 1
        self.segments.labels(stream).inc()
        self.rows.labels(stream).inc(len(rows))
        log.info("segment written", extra={"key": sidecar["key"], "rows": len(rows), "stream": stream})

    def _commit(self, partitions: list[int] | None = None) -> None:
        """Commits each partition up to its first buffered row of any stream (or all it has seen)."""
        first_buffered: dict[int, int] = {}
        for (_, partition), pending in self._pending.items():
            first_buffered[partition] = min(pending.first_offset, first_buffered.get(partition, pending.first_offset))
        offsets = []
        for partition, next_offset in self._next_offset.items():
            if partitions is not None and partition not in partitions:
                continue
            offset = first_buffered.get(partition, next_offset)
            if self._committed.get(partition) != offset:  # this runs every poll round: commit changes only
                offsets.append(TopicPartition(self.topic, partition, offset))
        if offsets:
            self.consumer.raw.commit(offsets=offsets, asynchronous=False)
            self._committed.update((tp.partition, tp.offset) for tp in offsets)

    def _drain(self) -> None:
        """Reads to the end of every assigned partition (bounded), so a stop flushes everything produced."""
        raw = self.consumer.raw
        assignment = raw.assignment()
        if not assignment:
            return
        # Where reading stands: past the last record seen or, with nothing seen since the
        # assignment, at the committed offset (the start of the partition when none).
        watermarks = {tp.partition: raw.get_watermark_offsets(tp, timeout=2, cached=False) for tp in assignment}
        start = {tp.partition: tp.offset if tp.offset >= 0 else watermarks[tp.partition][0]
                 for tp in raw.committed(assignment, timeout=5)}
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline:
            # The position, not the last record + 1: a transaction's commit marker takes the offset
            # after its last record, and only the position moves past it.
            reached = {tp.partition: max(tp.offset, start[tp.partition]) for tp in raw.position(assignment)}
            if all(reached[p] >= end for p, (_, end) in watermarks.items()):
                return
            for msg in self.consumer.poll_messages(500, 0.2):
                self._add(msg)
        log.warning("stopped before reading to the end; the rest is written by the next run")

    # -- rebalances (called from inside poll, on this thread) --------------------------------------

    def _on_assign(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        assigned = {tp.partition for tp in partitions}
        for key in [k for k in self._covered if k[1] in assigned]:
            del self._covered[key]  # another owner may have written segments meanwhile

    def _on_revoke(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions]
        try:
            if failed := self._flush(force=True, partitions=revoked):
                log.error("could not write some revoked partitions' segments", extra={"failed": failed})
        except Exception:
            # Not committed, so the next owner replays these rows from Kafka.
            log.exception("could not write revoked partitions' segments", extra={"partitions": revoked})
        for key in [k for k in self._pending if k[1] in revoked]:
            del self._pending[key]
        for partition in revoked:
            self._next_offset.pop(partition, None)
            self._committed.pop(partition, None)


class FeatureSegmentWriter(SegmentWriter):
    """Every FeatureRecord of `driftline.features`, under its stream's feature names."""

    def __init__(self, settings: FeatureSettings, store: ObjectStore, catalog: StreamCatalog) -> None:
        super().__init__(settings, store, settings.topics.features, settings.segments_group_id)
        self.catalog = catalog

    def parse(self, msg: Message) -> tuple[str, tuple[str, ...], SegmentRow] | None:
        partition, offset = msg.partition(), msg.offset()
        try:
            record = decode(msg.value(), features_pb2.FeatureRecord)
        except DecodeFailure:
            # The processor's own output: not a producer's mistake to dead-letter, a bug to see.
            SKIPPED_ROWS.labels("undecodable").inc()
            log.error("skipping a record that is not a FeatureRecord",
                      extra={"partition": partition, "offset": offset})
            return None
        stream = record.feature_set or self.catalog.default
        schema = current_schema(self.catalog, stream)
        if schema is None:
            SKIPPED_ROWS.labels("unknown_stream").inc()
            log.error("skipping a FeatureRecord of a stream the catalogue no longer has",
                      extra={"stream": stream, "partition": partition, "offset": offset})
            return None
        names = tuple(schema.feature_names)
        if len(record.values) != len(names):
            SKIPPED_ROWS.labels("wrong_length").inc()
            log.error("skipping a FeatureRecord with the wrong number of values", extra={
                "stream": stream, "offset": offset, "values": len(record.values), "expected": len(names)})
            return None
        label = record.label if record.HasField("label") else None
        try:
            event_time_ms = record.event_time.ToMilliseconds()
        except ValueError:  # out of Timestamp's range; raised, it would drop the rest of the round's records
            SKIPPED_ROWS.labels("invalid_time").inc()
            log.error("skipping a FeatureRecord with an invalid event_time",
                      extra={"stream": stream, "offset": offset})
            return None
        return stream, names, SegmentRow(offset, record.event_id, record.entity_id, event_time_ms, label,
                                         list(record.values))

    def prefix(self, stream: str) -> str:
        return segments_prefix(stream)

    def write(self, stream: str, partition: int, rows: Sequence[SegmentRow], layout: tuple[str, ...]
              ) -> dict[str, object]:
        return write_segment(self.store, stream, partition, rows, layout)
