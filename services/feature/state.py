"""The entities' state: per (stream, entity) the state of the stateful
features and the latest vector, in memory for the partitions this process owns
and in a compacted changelog topic (`<app id>-entity_state-changelog`, one
partition per events partition, key the table key and value the row, both as
JSON, a tombstone for a deleted row: the format the faust app of earlier
releases wrote, so its state carries over).

The changelog is written in the same transaction as the feature records and
the consumed offsets (processor.py), so the state recovered from it is exactly
the state after the last committed event. A transaction's writes are held in
`Changes` until it commits: online reads and the next batch see committed state
only, and an aborted batch leaves the table as it was.

>>> table = EntityTable()
>>> table.load({0: {"a": {"n": 1}}})
>>> changes = Changes(table)
>>> changes.set(0, "b", {"n": 2}); changes.delete(0, "a")
>>> changes.get("a"), changes.get("b"), table.get("a"), table.get("b")
(None, {'n': 2}, {'n': 1}, None)
>>> table.apply(changes); dict(table)
{'b': {'n': 2}}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer as _Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

Row = dict[str, Any]


class EntityTable(Mapping[str, Row]):
    """The committed rows of the owned partitions; read by the online store from another thread
    (each read is one dict lookup, atomic under the GIL)."""

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}
        self._keys: dict[int, set[str]] = {}  # partition -> its keys

    def __getitem__(self, key: str) -> Row:
        return self._rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def load(self, partitions: Mapping[int, Mapping[str, Row]]) -> None:
        """Exactly these partitions' rows from now on (a new assignment)."""
        for partition in set(self._keys) - set(partitions):
            self.drop(partition)
        for partition, rows in partitions.items():
            for key in self._keys.pop(partition, ()):
                self._rows.pop(key, None)
            self._rows.update(rows)
            self._keys[partition] = set(rows)

    def drop(self, partition: int) -> None:
        for key in self._keys.pop(partition, ()):
            self._rows.pop(key, None)

    def apply(self, changes: Changes) -> None:
        """A committed transaction's writes."""
        for key, (partition, row) in changes.writes.items():
            keys = self._keys.setdefault(partition, set())
            if row is None:
                self._rows.pop(key, None)
                keys.discard(key)
            else:
                self._rows[key] = row
                keys.add(key)


class Changes(Mapping[str, Row]):
    """One transaction's view of the table: its own writes over the committed rows."""

    def __init__(self, table: EntityTable) -> None:
        self.table = table
        self.writes: dict[str, tuple[int, Row | None]] = {}  # key -> (partition, row or None: deleted)

    def __getitem__(self, key: str) -> Row:
        if key in self.writes:
            row = self.writes[key][1]
            if row is None:
                raise KeyError(key)
            return row
        return self.table[key]

    def __iter__(self) -> Iterator[str]:
        yield from (k for k, (_, row) in self.writes.items() if row is not None)
        yield from (k for k in self.table if k not in self.writes)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def set(self, partition: int, key: str, row: Row) -> None:
        self.writes[key] = (partition, row)

    def delete(self, partition: int, key: str) -> None:
        self.writes[key] = (partition, None)

    def changelog(self) -> Iterable[tuple[int, bytes, bytes | None]]:
        """(partition, key, value or None) for each row written: only its last value."""
        for key, (partition, row) in self.writes.items():
            yield partition, json.dumps(key).encode(), None if row is None else json.dumps(row).encode()


def read_changelog(bootstrap: str, topic: str, partitions: Iterable[int], timeout_s: float = 60.0,
                   client_config: Mapping[str, object] | None = None) -> dict[int, dict[str, Row]]:
    """The committed rows of `partitions`, read from the start of the changelog to its end.

    read_committed stops at the last stable offset: a transaction a dead process left open (it
    is aborted when its successor starts, or by the broker after the transaction timeout) is
    not part of the state, and nothing committed lies beyond it in that partition, whose only
    writer is its current owner.
    """
    wanted = sorted(set(partitions))
    rows: dict[int, dict[str, Row]] = {p: {} for p in wanted}
    if not wanted:
        return rows
    started = time.monotonic()
    consumer = _Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-restore",
                          "enable.auto.commit": False, "enable.partition.eof": True,
                          "isolation.level": "read_committed", **(client_config or {})})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        reading = set(wanted)
        deadline = time.monotonic() + timeout_s
        while reading:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(reading)} not read to the end after {timeout_s}s")
            for msg in consumer.consume(1000, 0.5):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    reading.discard(msg.partition())
                    continue
                key = json.loads(msg.key())
                value = msg.value()
                if value is None:
                    rows[msg.partition()].pop(key, None)
                else:
                    rows[msg.partition()][key] = json.loads(value)
    finally:
        consumer.close()
    log.info("state restored", extra={"topic": topic, "rows": {p: len(r) for p, r in rows.items()},
                                      "seconds": round(time.monotonic() - started, 3)})
    return rows
