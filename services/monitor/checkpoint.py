"""The monitor's state, saved to the object store and recovered after a restart.

A snapshot is the DriftMonitor's whole state — trackers with their calibrated detectors and
windows, the label join's waiting entries, the policy's cooldowns and the requests in flight,
first-model counts, the dashboard's history — together with the input positions it reflects (per
partition, the next offset not yet applied). It is taken under the monitor's lock after a batch or
an idle poll, every `snapshot_every_s`, right after a training request was delivered, and on a clean
stop; it is written by a thread of its own, so a slow or stopped object store never holds up the
stream (a write that fails is counted and the next snapshot tries again). On start the newest
snapshot is loaded and the consumer is positioned at its offsets instead of the group's committed
ones, so the records after it are applied once more to exactly the state they had not reached.

The object store rather than a compacted topic: the state is one object of up to tens of megabytes
(a full label join), read once at start; a topic would cut it into records under the broker's
message size and replay them all. The payload is a pickle: the detectors' state (river's ADWIN
among them) has no other complete form. It is read back only by the code that wrote it, with the
same state settings: the header names the format, a fingerprint of the monitor's code and the
settings the state depends on, and a snapshot that does not match is ignored with a log line (the
monitor then starts afresh from the group's committed offsets, as before snapshots). The bucket is
the platform's own (the one models are stored in, same trust), and every object is checked against
its sha256 on read (objectstore.py).

The clock the monitor's timers read (the join's time-to-live, the cooldowns, report intervals) is a
`Clock`: monotonic within a process, and resumed from the snapshot's reading plus the wall time
since, so a cooldown started before a restart still runs out when it would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services.common.kafka import Consumer
from services.common.objectstore import ObjectNotFound, ObjectStore
from services.common.threads import Backoff

from .metrics import SNAPSHOT_BYTES, SNAPSHOT_SECONDS, SNAPSHOTS

log = logging.getLogger(__name__)

MAGIC = b"DLMONSNAP"
FORMAT = 1  # the header's layout; the payload's is covered by the code fingerprint
STOP_WAIT_S = 10.0  # how long a clean stop waits for its last snapshot to be written

Positions = dict[tuple[str, int], int]  # (topic, partition) → next offset to apply


class Clock:
    """`time.monotonic`, resumable after a restart (see the module's docstring).

    >>> clock = Clock(); clock.resume(1000.0, time.time() - 5.0)
    >>> 1004.9 < clock() < 1006.0
    True
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def resume(self, reading: float, wall_s: float) -> None:
        """Continues from `reading`, taken at epoch `wall_s` (never backwards across the restart)."""
        self.offset = reading + max(0.0, time.time() - wall_s) - time.monotonic()


def code_fingerprint() -> str:
    """The monitor's code (its modules' sources) and the libraries whose objects the state holds."""
    import river
    digest = hashlib.sha256(f"{FORMAT} numpy {np.__version__} river {river.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def settings_fingerprint(values: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Pickler(pickle.Pickler):
    """Pickles the state graph; the live objects it reaches (the monitor itself, its producer,
    clients, hub, lock, catalogue and clock) are written as names and given back, on load, as the
    new process's own."""

    def __init__(self, file, environment: Mapping[str, object]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._names = {id(obj): name for name, obj in environment.items() if obj is not None}

    def persistent_id(self, obj):
        return self._names.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, environment: Mapping[str, object]) -> None:
        super().__init__(file)
        self._environment = environment

    def persistent_load(self, name):
        return self._environment[name]


def dump(state: object, environment: Mapping[str, object], header: Mapping[str, object]) -> bytes:
    """A snapshot's bytes: MAGIC, the header's length and JSON, then the pickled state."""
    head = json.dumps(dict(header), sort_keys=True).encode()
    out = io.BytesIO()
    out.write(MAGIC + struct.pack(">I", len(head)) + head)
    _Pickler(out, environment).dump(state)
    return out.getvalue()


def read_header(data: bytes) -> tuple[dict, int]:
    """The header and where the payload begins; ValueError for bytes that are no snapshot."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError("not a monitor snapshot")
    (size,) = struct.unpack_from(">I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(data[start:start + size]), start + size


def load(data: bytes, start: int, environment: Mapping[str, object]) -> object:
    return _Unpickler(io.BytesIO(memoryview(data)[start:]), environment).load()


class Checkpoints:
    """Saves the monitor's snapshots (`after_batch`, `save`, `close`) and loads the newest (`restore`).

    `monitor` is a DriftMonitor: `saved_state(dump)` pickles its state under its lock,
    `restore_state(state)` puts one back, and `requests_delivered` / `undelivered` say when a
    snapshot is due and whether it may be taken (never while something it published may not have
    reached the broker: a snapshot must not claim a training request that is not on its topic)."""

    def __init__(self, monitor, store: ObjectStore, key: str, *, every_s: float, settings: Mapping[str, object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.store = store
        self.key = key
        self.every_s = every_s
        self.fingerprints = {"format": FORMAT, "code": code_fingerprint(), "settings": settings_fingerprint(settings)}
        self.restored: Positions | None = None  # the positions of the snapshot loaded at start
        self._clock = clock
        self._last = clock()
        self._requests = monitor.requests_delivered
        self._pending: bytes | None = None  # the newest snapshot not written yet (older ones are superseded)
        self._written = 0  # snapshots written: `close` waits for its own
        self._cond = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="monitor-snapshots", daemon=True)
        self._writer.start()

    @property
    def durable(self) -> bool:
        """Whether some snapshot holds this monitor's state: one was restored at start, or written
        since. Until then its consumer commits nothing, so a monitor killed before its first
        snapshot leaves no committed offsets past state that died with it: the next one reads
        its inputs from where the last snapshot (or the topics' start) left them."""
        with self._cond:
            return self.restored is not None or self._written > 0

    # -- saving ---------------------------------------------------------------------------------

    def after_batch(self) -> None:
        """After a batch or an idle poll: a snapshot once `every_s` has passed or a training
        request has been delivered since the last."""
        if self.monitor.undelivered:
            return
        requests = self.monitor.requests_delivered
        if requests != self._requests or self._clock() - self._last >= self.every_s:
            self._requests = requests
            self.save()

    def save(self) -> None:
        """Takes a snapshot now; its write happens on the writer thread."""
        started = time.perf_counter()
        data = self.monitor.saved_state(self._dump)
        SNAPSHOT_SECONDS.labels("take").observe(time.perf_counter() - started)
        SNAPSHOT_BYTES.set(len(data))
        self._last = self._clock()
        with self._cond:
            if self._pending is not None:
                SNAPSHOTS.labels("superseded").inc()
            self._pending = data
            self._cond.notify()

    def _dump(self, state: object, environment: Mapping[str, object], positions: Positions) -> bytes:
        header = {**self.fingerprints, "written_at_s": time.time(), "clock": self.monitor.clock_reading(),
                  "positions": [[topic, partition, offset] for (topic, partition), offset in sorted(positions.items())]}
        return dump(state, environment, header)

    def close(self, timeout: float = STOP_WAIT_S) -> None:
        """A clean stop: the last snapshot (the worker has stopped), written before the process exits."""
        if not self.monitor.undelivered:
            self.save()
        with self._cond:
            target = self._written + (self._pending is not None)
            self._closing = True
            self._cond.notify()
            self._cond.wait_for(lambda: self._written >= target or not self._writer.is_alive(), timeout)
            if self._written < target:
                log.warning("the last snapshot was not written before the stop",
                            extra={"key": self.key, "timeout_s": timeout})

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closing)
                if self._pending is None:
                    return
                data, self._pending = self._pending, None
            started = time.perf_counter()
            try:
                self.store.put_bytes(self.key, data)
            except Exception as exc:  # the store is down or refuses: the next snapshot tries again
                SNAPSHOTS.labels("failed").inc()
                log.warning("could not write the monitor's snapshot; the next one will try again",
                            extra={"key": self.key, "bytes": len(data), "error": str(exc)})
                with self._cond:
                    if self._pending is None and not self._closing:
                        self._pending = data
                    self._cond.notify_all()
                time.sleep(1.0)  # a store that refuses at once is not asked in a tight loop
                continue
            SNAPSHOTS.labels("written").inc()
            SNAPSHOT_SECONDS.labels("write").observe(time.perf_counter() - started)
            with self._cond:
                self._written += 1
                self._cond.notify_all()

    # -- loading --------------------------------------------------------------------------------

    def restore(self, wait_s: float = 0.0) -> Positions | None:
        """Loads the newest snapshot into the monitor; its positions, or None (none, or not ours to
        read: the monitor starts afresh). A store that does not answer is asked again for up to
        `wait_s`: starting afresh would soon overwrite the snapshot it could not read."""
        deadline = time.monotonic() + wait_s
        backoff = Backoff(0.5, 5.0)
        while True:
            try:
                data = self.store.get_bytes(self.key)
                break
            except ObjectNotFound:
                log.info("no monitor snapshot yet; starting afresh", extra={"key": self.key})
                return None
            except Exception as exc:
                pause = backoff.next()
                if time.monotonic() + pause > deadline:
                    SNAPSHOTS.labels("unreadable").inc()
                    log.warning("cannot read the monitor's snapshot; starting afresh",
                                extra={"key": self.key, "error": str(exc)})
                    return None
                log.warning("cannot read the monitor's snapshot yet; retrying", extra={"key": self.key, "error": str(exc)})
                time.sleep(pause)
        try:
            header, start = read_header(data)
            wanted = {name: header.get(name) for name in self.fingerprints}
            if wanted != self.fingerprints:
                differ = sorted(name for name in self.fingerprints if wanted[name] != self.fingerprints[name])
                SNAPSHOTS.labels("ignored").inc()
                log.warning("ignoring a monitor snapshot of other code or settings; starting afresh",
                            extra={"key": self.key, "differs": differ})
                return None
            state = load(data, start, self.monitor.environment())
        except Exception as exc:  # any damage: a snapshot that cannot be read must never stop the monitor
            SNAPSHOTS.labels("ignored").inc()
            log.warning("ignoring an unreadable monitor snapshot; starting afresh",
                        extra={"key": self.key, "error": f"{type(exc).__name__}: {exc}"})
            return None
        positions = {(topic, partition): offset for topic, partition, offset in header["positions"]}
        self.monitor.restore_state(state, positions, clock=header["clock"], wall_s=header["written_at_s"])
        self.restored = positions
        SNAPSHOTS.labels("restored").inc()
        log.info("monitor state restored", extra={
            "key": self.key, "bytes": len(data), "age_s": round(time.time() - header["written_at_s"], 1),
            "positions": {f"{t}[{p}]": o for (t, p), o in positions.items()}})
        return positions


def resume_at(consumer: Consumer, topics: list[str], positions: Callable[[], Positions], restored: bool) -> None:
    """Subscribes `consumer` so that each partition it is assigned starts where the monitor's state
    ends (`positions()`, read at each assignment): after a restore, at the snapshot's offsets (a
    partition it does not name began after it: from its start); before anything is known of a
    partition, at the group's committed offset, which is then recorded as where the state begins."""

    def on_assign(raw, partitions: list[TopicPartition]) -> None:
        known = positions()
        unknown = [p for p in partitions if (p.topic, p.partition) not in known]
        if unknown and not restored:
            committed = {(p.topic, p.partition): p.offset for p in raw.committed(unknown, timeout=10)}
        for p in partitions:
            where = (p.topic, p.partition)
            if where in known:
                p.offset = known[where]
            elif restored or committed[where] < 0:
                p.offset = OFFSET_BEGINNING
            else:
                p.offset = committed[where]
            known.setdefault(where, p.offset)
        raw.assign(partitions)
        log.info("partitions assigned", extra={"at": {f"{p.topic}[{p.partition}]": p.offset for p in partitions}})

    consumer.raw.subscribe(list(topics), on_assign=on_assign)
