"""Dataset versions cut from real feature and label segments in the real S3 server: each event
once, however often its row was replayed into segments, and delayed labels joined in from label
segments (`services.trainer.dataset`)."""

from __future__ import annotations

import threading
import uuid

import pytest

from helpers_models import STEP_MS, T0_MS, agrawal_rows, write_segments
from services.common.datasets import dataset_id
from services.trainer.dataset import SegmentReader, Window, WindowNotFilled, wait_for_rows
from trainer_support import write_label_segment

NOW_MS = T0_MS + 10**9  # long after every event time: the windows below are all in the past
LABEL_DELAY_MS = 30_000


@pytest.fixture
def store(s3, bucket_name):
    return s3.store(bucket_name)


@pytest.fixture
def stream() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


def unlabelled(rows: list[dict]) -> list[dict]:
    return [{**r, "label": None} for r in rows]


def delayed(rows: list[dict], delay_ms: int = LABEL_DELAY_MS) -> list[tuple[str, int, int, int]]:
    """Each row's label as the labeller sends it, `delay_ms` after the event."""
    return [(r["event_id"], r["label"], r["event_time_ms"] + delay_ms, r["event_time_ms"]) for r in rows]


def cut(store, stream, start_ms: int = T0_MS, end_ms: int | None = None):
    return SegmentReader(store, stream).window_rows(Window(start_ms, end_ms), NOW_MS)


def test_a_replayed_row_is_in_the_dataset_once(store, stream):
    rows = agrawal_rows(300, seed=21)
    first = write_segments(store, stream, rows[:200], per_segment=100)
    # A crash replayed rows 150..299 into a later segment (offsets after the first write's).
    replayed = write_segments(store, stream, rows[150:], per_segment=150, first_offset=200)

    dataset = cut(store, stream)
    ids = dataset.table.column("event_id").to_pylist()
    assert dataset.rows == 300 and sorted(ids) == sorted(r["event_id"] for r in rows)
    assert dataset.table.column("event_time_ms").to_pylist() == [r["event_time_ms"] for r in rows]
    # The first copy of a row (the lower offset) is the one taken; the replay adds only rows 200..299.
    taken = {segment.key: n for segment, n in dataset.segments}
    assert taken == {first[0]["key"]: 100, first[1]["key"]: 100, replayed[0]["key"]: 100}
    manifest = dataset.manifest(stream)
    assert sum(s["rows"] for s in manifest["segments"]) == manifest["rows"] == 300


def test_a_window_counts_distinct_events_toward_min_rows(store, stream):
    rows = agrawal_rows(200, seed=22)
    write_segments(store, stream, rows)
    write_segments(store, stream, rows, first_offset=200)  # every row twice: 400 in the sidecars
    with pytest.raises(WindowNotFilled, match="has 200 labelled rows"):
        wait_for_rows(SegmentReader(store, stream), Window(T0_MS, None), 300, timeout_s=0, poll_s=0,
                      cancelled=threading.Event())


def test_a_label_sent_30_s_after_its_event_is_in_the_next_dataset_that_covers_it(store, stream):
    rows = agrawal_rows(400, seed=23)
    labelled_early, late = rows[:300], rows[300:]
    write_segments(store, stream, labelled_early + unlabelled(late))
    end_ms = T0_MS + 399 * STEP_MS

    before = cut(store, stream, end_ms=end_ms)
    assert before.rows == 300 and before.manifest(stream)["label_segments"] == []

    sidecar = write_label_segment(store, stream, delayed(late))
    after = cut(store, stream, end_ms=end_ms)
    assert after.rows == 400
    by_id = dict(zip(after.table.column("event_id").to_pylist(), after.table.column("label").to_pylist()))
    assert all(by_id[r["event_id"]] == r["label"] for r in rows)
    manifest = after.manifest(stream)
    assert manifest["label_segments"] == [{"key": sidecar["key"], "sha256": sidecar["sha256"], "labels": 100}]
    assert dataset_id(manifest) != dataset_id(before.manifest(stream))  # the label changed the version


def test_the_latest_delayed_label_wins_and_the_event_own_label_wins_over_all(store, stream):
    rows = agrawal_rows(4, seed=24)
    a, b, c, d = (r["event_id"] for r in rows)
    t = rows[0]["event_time_ms"]
    write_segments(store, stream, [{**rows[0], "label": 1}] + unlabelled(rows[1:]))
    first = write_label_segment(store, stream, [
        (a, 0, t + 5, t),  # the event carried label 1: that one stands
        (b, 1, t + 9, t),  # later than its correction below, so it stands
        (c, 0, t + 1, t)], first_offset=0)
    second = write_label_segment(store, stream, [(b, 0, t + 2, t), (c, 1, t + 3, t)], first_offset=3)

    dataset = cut(store, stream)
    labels = dict(zip(dataset.table.column("event_id").to_pylist(), dataset.table.column("label").to_pylist()))
    assert labels == {a: 1, b: 1, c: 1}  # d has no label anywhere: not a training row
    assert dataset.manifest(stream)["label_segments"] == [
        {"key": first["key"], "sha256": first["sha256"], "labels": 1},
        {"key": second["key"], "sha256": second["sha256"], "labels": 1}]


def test_labels_of_events_outside_the_window_are_not_used(store, stream):
    rows = agrawal_rows(20, seed=25)
    write_segments(store, stream, unlabelled(rows))
    write_label_segment(store, stream, delayed(rows[10:]))
    dataset = cut(store, stream, end_ms=rows[9]["event_time_ms"])
    assert dataset is None  # the window's rows have no label yet; the labelled ones lie after it


def test_a_kept_reader_lists_each_partitions_new_segments_and_now_and_then_everything(store, stream):
    rows = agrawal_rows(400, seed=26)
    reader = SegmentReader(store, stream)
    listing = reader._segments
    first = write_segments(store, stream, rows[:100], per_segment=50)
    assert [s.key for s in reader.segments()] == [s["key"] for s in first]  # the first listing is full

    listing.FULL_EVERY_S = float("inf")  # from here on, only what is new after each partition's last
    newer = write_segments(store, stream, rows[100:200], per_segment=50, first_offset=100)
    other = write_segments(store, stream, rows[200:300], per_segment=100, partition=1)
    store.client.remove_object(store.bucket, first[0]["key"].replace(".parquet", ".json"))
    assert [s.key for s in reader.segments()] == [s["key"] for s in first + newer]

    listing.FULL_EVERY_S = 0.0  # a full listing finds the new partition and the removed segment
    assert [s.key for s in reader.segments()] == [s["key"] for s in first[1:] + newer + other]
    listing.FULL_EVERY_S = float("inf")
    later = write_segments(store, stream, rows[300:], per_segment=100, partition=1, first_offset=100)
    assert [s.key for s in reader.segments()] == [s["key"] for s in first[1:] + newer + other + later]
