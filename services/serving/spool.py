"""A bounded, append-only spool on local disk for records the broker could not take yet.

The spool is a directory of segment files named by a sequence number (`00000000000000000001.seg`,
...). A segment starts with the 8 bytes `DLSPOOL1`, then holds records, each
`<u32 body length><u32 crc32 of body>` followed by the body `<u16 key length><key><value>`
(little-endian). Appends go to the newest segment, which is sealed (fsynced, closed) once it holds
`segment_bytes`; a reader takes segments oldest first and a segment is deleted only when every one
of its records has been delivered, so what is on disk is always what is still owed.

Durability: each record is handed to the kernel with one `write` as it is appended, so it survives
the process being killed at once; it survives a crash of the machine once fsynced, which happens
when its segment is sealed and otherwise at most `fsync_interval_s` after it was appended. A torn
or corrupt record (a machine crash during a write) ends its segment's readable part: it and the
rest of that segment are dropped and counted, never delivered half.

The quota bounds the bytes of every segment together; a record that would pass it is refused and
the caller counts it. One process owns a spool directory at a time (an exclusive `flock`).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     spool = Spool(folder, max_bytes=1 << 20)
...     spool.append(b"k", b"one"), spool.append(b"k", b"two")
...     segment = spool.oldest(); segment.records
...     spool.delete(segment); spool.bytes, spool.oldest()
...     spool.close()
(True, True)
[(b'k', b'one'), (b'k', b'two')]
(0, None)
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"DLSPOOL1"
SUFFIX = ".seg"
_RECORD = struct.Struct("<II")
_KEY = struct.Struct("<H")
RECORD_OVERHEAD = _RECORD.size + _KEY.size


class SpoolLocked(RuntimeError):
    """Another live process owns this spool directory."""


@dataclass
class Segment:
    """A sealed segment's records, read back whole; `corrupt`: it ended in an unreadable record."""

    path: Path
    size: int
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    corrupt: bool = False


def encode_record(key: bytes, value: bytes) -> bytes:
    body = _KEY.pack(len(key)) + key + value
    return _RECORD.pack(len(body), zlib.crc32(body)) + body


def decode_records(data: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The records of a segment's bytes, and whether it ended in a torn or corrupt record.

    >>> good = MAGIC + encode_record(b"a", b"1") + encode_record(b"", b"22")
    >>> decode_records(good)
    ([(b'a', b'1'), (b'', b'22')], False)
    >>> decode_records(good[:-1]), decode_records(good[:-2] + b"x2")[1]
    (([(b'a', b'1')], True), True)
    """
    records: list[tuple[bytes, bytes]] = []
    if not data.startswith(MAGIC):
        return records, bool(data)
    position = len(MAGIC)
    while position < len(data):
        if position + _RECORD.size > len(data):
            return records, True
        length, checksum = _RECORD.unpack_from(data, position)
        body = data[position + _RECORD.size:position + _RECORD.size + length]
        if len(body) != length or zlib.crc32(body) != checksum or length < _KEY.size:
            return records, True
        (key_length,) = _KEY.unpack_from(body)
        records.append((bytes(body[_KEY.size:_KEY.size + key_length]), bytes(body[_KEY.size + key_length:])))
        position += _RECORD.size + length
    return records, False


class Spool:
    """The spool directory: `append` to its end, `oldest` / `delete` from its start."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, *, segment_bytes: int = 4 << 20,
                 fsync_interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"another process is using the spool {self.directory}; give each process "
                              "its own directory") from None
        self._sizes = {path: path.stat().st_size for path in self._segment_paths()}
        self._bytes = sum(self._sizes.values())
        self._next = max((int(p.stem) for p in self._sizes), default=0) + 1
        self._active: tuple[Path, int] | None = None  # the segment appended to, and its descriptor
        self._dirty_since: float | None = None

    @property
    def bytes(self) -> int:
        """Bytes of every segment on disk, the one being written included."""
        return self._bytes

    def __len__(self) -> int:
        """Segments on disk."""
        return len(self._sizes)

    def _segment_paths(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())

    def append(self, key: bytes, value: bytes) -> bool:
        """Writes one record at the end; False (nothing written) when it would pass the quota."""
        record = encode_record(key, value)
        opening = self._active is None or self._sizes[self._active[0]] >= self.segment_bytes
        if self.bytes + len(record) + (len(MAGIC) if opening else 0) > self.max_bytes:
            return False
        if opening:
            self.seal()
            self._open_segment()
        path, fd = self._active
        os.write(fd, record)
        self._sizes[path] += len(record)
        self._bytes += len(record)
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        return True

    def _open_segment(self) -> None:
        path = self.directory / f"{self._next:020d}{SUFFIX}"
        self._next += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(fd, MAGIC)
        self._active = (path, fd)
        self._sizes[path] = len(MAGIC)
        self._bytes += len(MAGIC)
        # The new name must survive a crash too, or its records would vanish with it.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def sync_if_due(self) -> None:
        """fsyncs the segment being written when it has waited `fsync_interval_s`."""
        if self._dirty_since is not None and time.monotonic() - self._dirty_since >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self._active is not None and self._dirty_since is not None:
            os.fsync(self._active[1])
        self._dirty_since = None

    def seal(self) -> None:
        """Ends the segment being written: the next append starts a new one."""
        if self._active is not None:
            self.sync()
            os.close(self._active[1])
            self._active = None

    def oldest(self) -> Segment | None:
        """The oldest segment, read whole (sealed first if it is the one being written); None: empty."""
        if not self._sizes:
            return None
        path = min(self._sizes)
        if self._active is not None and self._active[0] == path:
            self.seal()
        data = path.read_bytes()
        records, corrupt = decode_records(data)
        if corrupt:
            log.error("a spool segment ends in a torn or corrupt record; what follows it is lost",
                      extra={"segment": str(path), "readable_records": len(records)})
        return Segment(path, len(data), records, corrupt)

    def delete(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        self._bytes -= self._sizes.pop(segment.path, 0)

    def close(self) -> None:
        self.seal()
        self._lock.close()  # releases the flock
