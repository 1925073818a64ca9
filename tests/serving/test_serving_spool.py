"""The prediction-log spool on a real directory: its quota to the byte, segments read back in
order and deleted one by one, what a torn write leaves, what an earlier process left, and one
owner at a time."""

from __future__ import annotations

import pytest

from services.serving.spool import MAGIC, Spool, SpoolLocked, encode_record


def test_the_quota_refuses_exactly_the_records_that_would_pass_it(tmp_path):
    record = encode_record(b"k", b"x" * 90)
    spool = Spool(tmp_path, max_bytes=len(MAGIC) + 3 * len(record))
    assert [spool.append(b"k", b"x" * 90) for _ in range(5)] == [True, True, True, False, False]
    assert spool.bytes == len(MAGIC) + 3 * len(record)
    segment = spool.oldest()
    spool.delete(segment)
    assert spool.append(b"k", b"x" * 90)  # room again once a segment is gone
    spool.close()


def test_segments_come_back_oldest_first_and_each_is_deleted_alone(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=64)
    values = [f"log-{i}".encode() * 4 for i in range(10)]
    for value in values:
        assert spool.append(b"m", value)
    assert len(spool) > 2
    read = []
    while (segment := spool.oldest()) is not None:
        read += [value for _, value in segment.records]
        spool.delete(segment)
        assert not segment.path.exists()
    assert read == values
    assert spool.bytes == 0 and len(spool) == 0
    spool.close()


def test_a_later_process_reads_what_an_earlier_one_left_and_a_torn_tail_ends_its_segment(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for value in (b"a", b"b", b"c"):
        spool.append(b"k", value)
    spool.close()
    (path,) = tmp_path.glob("*.seg")
    path.write_bytes(path.read_bytes()[:-1])  # a crash in the middle of the last write

    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.append(b"k", b"d")  # appends go to a new segment, never after a torn tail
    first = again.oldest()
    assert (first.records, first.corrupt) == ([(b"k", b"a"), (b"k", b"b")], True)
    again.delete(first)
    second = again.oldest()
    assert (second.records, second.corrupt) == ([(b"k", b"d")], False)
    again.close()


def test_one_process_owns_a_spool_directory_at_a_time(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolLocked, match="another process is using the spool"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()
