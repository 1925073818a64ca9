"""Writes the labelled FeatureRecords of `driftline.features` to segments.

It reads the feature topic back (its own consumer group) rather than taking
rows from inside the faust agent, so that a row is never lost and never
written twice:
- offsets are committed only up to the first row still in a buffer, so a
  crash replays exactly the rows not yet in a segment;
- a replayed row already in a segment (crash between upload and commit) is
  skipped: the object store's segment names say which offsets are covered.
The faust agent's own offsets are committed on faust's schedule and do not
have to wait for a segment upload.

One buffer per partition; a buffer is written when it holds
`feature_segment_rows` rows or its oldest row is `feature_segment_seconds`
old, when its partition is revoked, and on stop (after reading up to the end
of the topic, so the last features the agent produced are in a segment).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer as _Consumer, Message, TopicPartition

from driftline.v1 import features_pb2
from services.common.kafka import Consumer, DecodeFailure, decode
from services.common.objectstore import ObjectStore
from services.common.threads import Backoff, StoppableThread

from .metrics import SEGMENT_ROWS, SEGMENTS, SEGMENT_FAILURES
from .segments import SegmentRow, covered_offset, write_segment
from .settings import FeatureSettings

log = logging.getLogger(__name__)


@dataclass
class _Buffer:
    rows: list[SegmentRow] = field(default_factory=list)
    opened_at: float = 0.0  # monotonic time of the oldest row


class SegmentWriter(StoppableThread):
    def __init__(self, settings: FeatureSettings, store: ObjectStore, feature_names: list[str]) -> None:
        super().__init__("feature-segments")
        self.store = store
        self.stream = settings.stream
        self.feature_names = list(feature_names)
        self.topic = settings.topics.features
        self.max_rows = settings.feature_segment_rows
        self.max_age_s = settings.feature_segment_seconds
        self.drain_timeout_s = settings.shutdown_grace_s
        self.consumer = Consumer(settings.kafka_bootstrap, settings.segments_group_id, [self.topic],
                                 from_beginning=True)
        # Re-subscribe with callbacks: a revoked partition's buffer is written while still owned.
        self.consumer.raw.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._buffers: dict[int, _Buffer] = {}
        self._next_offset: dict[int, int] = {}  # partition -> offset after the last record seen
        self._covered: dict[int, int] = {}  # partition -> last offset already in a segment
        self._committed: dict[int, int] = {}  # partition -> offset this writer last committed
        self.segments_written = 0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping:
            try:
                for msg in self.consumer.poll_messages(500, 0.2):
                    self._add(msg)
                self._flush(force=False)
                backoff.reset()
            except Exception:
                # The buffers and uncommitted offsets stay as they are; the next round retries.
                SEGMENT_FAILURES.inc()
                log.exception("segment round failed; retrying")
                self.wait(backoff.next())
        try:
            self._drain()
            self._flush(force=True)
        except Exception:
            log.exception("final segment flush failed; the rows stay uncommitted and will be replayed")
        finally:
            self.consumer.close()

    # -- rows in ----------------------------------------------------------------------------------

    def _add(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        self._next_offset[partition] = offset + 1
        if offset <= self._covered_offset(partition):
            return
        try:
            record = decode(msg.value(), features_pb2.FeatureRecord)
        except DecodeFailure:
            log.error("skipping a record that is not a FeatureRecord",
                      extra={"partition": partition, "offset": offset})
            return
        if not record.HasField("label"):
            return  # only labelled rows are training data
        if len(record.values) != len(self.feature_names):
            log.error("skipping a FeatureRecord with the wrong number of values",
                      extra={"offset": offset, "values": len(record.values), "expected": len(self.feature_names)})
            return
        buffer = self._buffers.setdefault(partition, _Buffer())
        if not buffer.rows:
            buffer.opened_at = time.monotonic()
        buffer.rows.append(SegmentRow(offset, record.event_id, record.entity_id,
                                      record.event_time.ToMilliseconds(), record.label, list(record.values)))

    def _covered_offset(self, partition: int) -> int:
        if partition not in self._covered:
            self._covered[partition] = covered_offset(self.store, self.stream, partition)
        return self._covered[partition]

    # -- segments out -----------------------------------------------------------------------------

    def _flush(self, force: bool, partitions: list[int] | None = None) -> None:
        now = time.monotonic()
        for partition in partitions if partitions is not None else list(self._buffers):
            buffer = self._buffers.get(partition)
            if buffer is None or not buffer.rows:
                continue
            everything = force or now - buffer.opened_at >= self.max_age_s
            # Full segments first (a backlog polled at once still makes segments of max_rows rows);
            # a remainder waits for more rows unless it is due. Rows leave the buffer only once
            # their segment is stored.
            while len(buffer.rows) >= self.max_rows or (everything and buffer.rows):
                self._write(partition, buffer.rows[:self.max_rows])
                del buffer.rows[:self.max_rows]
                buffer.opened_at = now
            if not buffer.rows:
                del self._buffers[partition]
        self._commit(partitions)

    def _write(self, partition: int, rows: list[SegmentRow]) -> None:
        sidecar = write_segment(self.store, self.stream, partition, rows, self.feature_names)
        self._covered[partition] = rows[-1].offset
        self.segments_written += 1
        SEGMENTS.inc()
        SEGMENT_ROWS.inc(len(rows))
        log.info("segment written", extra={"key": sidecar["key"], "rows": len(rows)})

    def _commit(self, partitions: list[int] | None = None) -> None:
        """Commits each partition up to its first buffered row (or all it has seen)."""
        offsets = []
        for partition, next_offset in self._next_offset.items():
            if partitions is not None and partition not in partitions:
                continue
            buffer = self._buffers.get(partition)
            offset = buffer.rows[0].offset if buffer and buffer.rows else next_offset
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
            if all(self._next_offset.get(p, start[p]) >= end for p, (_, end) in watermarks.items()):
                return
            for msg in self.consumer.poll_messages(500, 0.2):
                self._add(msg)
        log.warning("stopped before reading to the end; the rest is written by the next run")

    # -- rebalances (called from inside poll, on this thread) --------------------------------------

    def _on_assign(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._covered.pop(tp.partition, None)  # another owner may have written segments meanwhile

    def _on_revoke(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions]
        try:
            self._flush(force=True, partitions=revoked)
        except Exception:
            # Not committed, so the next owner replays these rows from Kafka.
            log.exception("could not write revoked partitions' segments", extra={"partitions": revoked})
        for partition in revoked:
            self._buffers.pop(partition, None)
            self._next_offset.pop(partition, None)
            self._committed.pop(partition, None)
