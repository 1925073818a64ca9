"""The registry's tables in SQLite (stdlib sqlite3): WAL journal, one writer.

One connection is shared by the gRPC handlers and the outbox relay behind a
lock; every write runs in a `BEGIN IMMEDIATE` transaction, so the write lock
is taken up front and the version number read inside it cannot race.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from driftline.v1 import registry_pb2
from services.common.errors import NotFound

from . import events
from .errors import AliasChanged
from .store import Caller, OutboxRow, RegistryStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    artifact_uri    TEXT    NOT NULL,
    artifact_sha256 TEXT    NOT NULL,
    dataset_id      TEXT    NOT NULL,
    code_version    TEXT    NOT NULL,
    params          TEXT    NOT NULL,  -- JSON object of strings
    metrics         TEXT    NOT NULL,  -- JSON object of numbers
    feature_names   TEXT    NOT NULL,  -- JSON array
    metadata_uri    TEXT    NOT NULL,
    eval_uri        TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS model_versions_by_artifact
    ON model_versions (name, artifact_sha256, dataset_id);

CREATE TABLE IF NOT EXISTS aliases (
    name          TEXT    NOT NULL,
    alias         TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);

CREATE TABLE IF NOT EXISTS gate_decisions (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name         TEXT    NOT NULL,
    alias              TEXT    NOT NULL,
    candidate_version  INTEGER NOT NULL,
    baseline_version   INTEGER NOT NULL,
    candidate_accuracy REAL    NOT NULL,
    baseline_accuracy  REAL    NOT NULL,
    eval_rows          INTEGER NOT NULL,
    eval_uri           TEXT    NOT NULL,
    promoted           INTEGER NOT NULL,
    reason             TEXT    NOT NULL,
    decided_at_ms      INTEGER NOT NULL,
    idempotency_key    TEXT    NOT NULL DEFAULT ''
);

-- Who moved an alias or asked the gate, when and why (AuditRecord), written with the change.
CREATE TABLE IF NOT EXISTS audit_log (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name       TEXT    NOT NULL,
    action           TEXT    NOT NULL,  -- AuditRecord.Action name
    alias            TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    previous_version INTEGER NOT NULL,
    moved            INTEGER NOT NULL,
    subject          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    promoted         INTEGER NOT NULL,
    gate_reason      TEXT    NOT NULL,
    at_ms            INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_by_model ON audit_log (model_name, id);

-- Events waiting for the relay: sent_at_ms is set only after the broker acknowledged them.
CREATE TABLE IF NOT EXISTS outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    model_name    TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sent_at_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at_ms IS NULL;
"""

# Columns added since the first schema, for a database created before them: (table, column, type).
ADDED_COLUMNS = [("model_versions", "idempotency_key", "TEXT NOT NULL DEFAULT ''"),
                 ("gate_decisions", "idempotency_key", "TEXT NOT NULL DEFAULT ''")]
# One version and one decision per key: a retry that races the first call cannot add a second.
KEY_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_by_key
    ON model_versions (name, idempotency_key) WHERE idempotency_key != '';
CREATE UNIQUE INDEX IF NOT EXISTS gate_decisions_by_key
    ON gate_decisions (model_name, idempotency_key) WHERE idempotency_key != '';
"""

_VERSION_COLUMNS = ("name, version, artifact_uri, artifact_sha256, dataset_id, code_version, params, "
                    "metrics, feature_names, metadata_uri, eval_uri, created_at_ms, idempotency_key")
_AUDIT_COLUMNS = ("model_name, action, alias, version, previous_version, moved, subject, reason, promoted, "
                  "gate_reason, at_ms")
_DECISION_COLUMNS = ("model_name, alias, candidate_version, baseline_version, candidate_accuracy, "
                     "baseline_accuracy, eval_rows, eval_uri, promoted, reason, decided_at_ms, idempotency_key")


class SqliteRegistryStore(RegistryStore):
    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly, never implicitly.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # The outbox promises that an acknowledged change survives a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Statement by statement: executescript() would commit the transaction half-way.
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            for table, column, kind in ADDED_COLUMNS:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in KEY_INDEXES.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    @staticmethod
    def _append_event(db: sqlite3.Connection, event: registry_pb2.RegistryEvent) -> None:
        db.execute(
            "INSERT INTO outbox (event_id, model_name, kind, payload, created_at_ms) VALUES (?, ?, ?, ?, ?)",
            (event.event_id, event.model_name, registry_pb2.RegistryEvent.Kind.Name(event.kind),
             event.SerializeToString(), event.occurred_at.ToMilliseconds()))

    # -- versions -------------------------------------------------------------------------

    def register_version(self, version: registry_pb2.ModelVersion) -> tuple[registry_pb2.ModelVersion, bool]:
        with self._transaction() as db:
            existing = version.idempotency_key and self._version_by_key(db, version.name, version.idempotency_key)
            existing = existing or db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions "
                "WHERE name = ? AND artifact_sha256 = ? AND dataset_id = ?",
                (version.name, version.artifact_sha256, version.dataset_id)).fetchone()
            if existing:
                return _version_from_row(existing), False
            (number,) = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = ?",
                                   (version.name,)).fetchone()
            stored = registry_pb2.ModelVersion()
            stored.CopyFrom(version)
            stored.version = number
            created_ms = events.now_ms()
            stored.created_at.FromMilliseconds(created_ms)
            db.execute(f"INSERT INTO model_versions ({_VERSION_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                       _version_to_row(stored))
            self._append_event(db, events.version_registered(stored, created_ms))
            return stored, True

    def get_version(self, name: str, version: int) -> registry_pb2.ModelVersion:
        with self._read() as db:
            return self._get_version(db, name, version)

    def version_by_key(self, name: str, idempotency_key: str) -> registry_pb2.ModelVersion:
        with self._read() as db:
            row = self._version_by_key(db, name, idempotency_key)
            if row is None:
                self._require_model(db, name)
                raise NotFound(f"model {name!r} has no version registered with key {idempotency_key!r}")
        return _version_from_row(row)

    @staticmethod
    def _version_by_key(db: sqlite3.Connection, name: str, idempotency_key: str) -> tuple | None:
        return db.execute(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = ? AND idempotency_key = ?",
                          (name, idempotency_key)).fetchone()

    def _get_version(self, db: sqlite3.Connection, name: str, version: int) -> registry_pb2.ModelVersion:
        row = db.execute(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = ? AND version = ?",
                         (name, version)).fetchone()
        if row is None:
            self._require_model(db, name)
            raise NotFound(f"model {name!r} has no version {version}")
        return _version_from_row(row)

    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]:
        with self._read() as db:
            rows = db.execute(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = ? ORDER BY version",
                              (name,)).fetchall()
            if not rows:
                self._require_model(db, name)
        return [_version_from_row(row) for row in rows]

    @staticmethod
    def _require_model(db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM model_versions WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            raise NotFound(f"no model named {name!r}")

    # -- aliases --------------------------------------------------------------------------

    def resolve_alias(self, name: str, alias: str) -> int:
        with self._read() as db:
            return self._resolve_alias(db, name, alias)

    @staticmethod
    def _resolve_alias(db: sqlite3.Connection, name: str, alias: str) -> int:
        row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        return row[0] if row else 0

    def set_alias(self, name: str, alias: str, version: int, caller: Caller = Caller()) -> int:
        with self._transaction() as db:
            target = self._get_version(db, name, version)
            previous = self._resolve_alias(db, name, alias)
            moved = previous != version  # pointing it where it already points is not a change
            if moved:
                self._move_alias(db, target, alias, previous)
            self._audit(db, registry_pb2.AuditRecord(
                model_name=name, action=registry_pb2.AuditRecord.SET_ALIAS, alias=alias, version=version,
                previous_version=previous, moved=moved, subject=caller.subject, reason=caller.reason))
            return previous

    def _move_alias(self, db: sqlite3.Connection, target: registry_pb2.ModelVersion, alias: str,
                    previous: int) -> None:
        moved_ms = events.now_ms()
        db.execute("INSERT INTO aliases (name, alias, version, updated_at_ms) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
                   "updated_at_ms = excluded.updated_at_ms",
                   (target.name, alias, target.version, moved_ms))
        self._append_event(db, events.alias_moved(target, alias, previous, moved_ms))

    # -- gate decisions -------------------------------------------------------------------

    def record_decision(self, decision: registry_pb2.GateDecision, caller: Caller = Caller()) -> None:
        with self._transaction() as db:
            name, alias = decision.model_name, decision.alias
            current = self._resolve_alias(db, name, alias)
            if current != decision.baseline_version:
                raise AliasChanged(
                    f"alias {alias!r} of {name!r} moved to v{current} while the gate compared "
                    f"against v{decision.baseline_version}; promote again")
            candidate = self._get_version(db, name, decision.candidate_version)
            db.execute(f"INSERT INTO gate_decisions ({_DECISION_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                       _decision_to_row(decision))
            self._append_event(db, events.gate_decided(decision, candidate, decision.decided_at.ToMilliseconds()))
            moved = decision.promoted and current != candidate.version
            if moved:
                self._move_alias(db, candidate, alias, current)
            self._audit(db, registry_pb2.AuditRecord(
                model_name=name, action=registry_pb2.AuditRecord.PROMOTE, alias=alias, version=candidate.version,
                previous_version=current, moved=moved, subject=caller.subject, reason=caller.reason,
                promoted=decision.promoted, gate_reason=decision.reason, at=decision.decided_at))

    # -- audit ----------------------------------------------------------------------------

    @staticmethod
    def _audit(db: sqlite3.Connection, record: registry_pb2.AuditRecord) -> None:
        if not record.HasField("at"):
            record.at.FromMilliseconds(events.now_ms())
        db.execute(f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                   (record.model_name, registry_pb2.AuditRecord.Action.Name(record.action), record.alias,
                    record.version, record.previous_version, int(record.moved), record.subject, record.reason,
                    int(record.promoted), record.gate_reason, record.at.ToMilliseconds()))

    def audit_log(self, name: str) -> list[registry_pb2.AuditRecord]:
        with self._read() as db:
            self._require_model(db, name)
            rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE model_name = ? ORDER BY id",
                              (name,)).fetchall()
        return [_audit_from_row(row) for row in rows]

    def decision_by_key(self, name: str, idempotency_key: str) -> registry_pb2.GateDecision | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_DECISION_COLUMNS} FROM gate_decisions "
                             "WHERE model_name = ? AND idempotency_key = ?", (name, idempotency_key)).fetchone()
        return _decision_from_row(row) if row else None

    def list_decisions(self, name: str) -> list[registry_pb2.GateDecision]:
        with self._read() as db:
            self._require_model(db, name)
            rows = db.execute(f"SELECT {_DECISION_COLUMNS} FROM gate_decisions WHERE model_name = ? ORDER BY id",
                              (name,)).fetchall()
        return [_decision_from_row(row) for row in rows]

    # -- outbox ---------------------------------------------------------------------------

    def unsent_events(self, limit: int) -> list[OutboxRow]:
        with self._read() as db:
            rows = db.execute("SELECT seq, model_name, payload FROM outbox WHERE sent_at_ms IS NULL "
                              "ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [OutboxRow(seq, name, bytes(payload)) for seq, name, payload in rows]

    def mark_sent(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._transaction() as db:
            db.executemany("UPDATE outbox SET sent_at_ms = ? WHERE seq = ?",
                           [(events.now_ms(), seq) for seq in seqs])

    def count_unsent(self) -> int:
        with self._read() as db:
            return db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- rows <-> messages ----------------------------------------------------------------------

def _version_to_row(v: registry_pb2.ModelVersion) -> tuple:
    return (v.name, v.version, v.artifact_uri, v.artifact_sha256, v.dataset_id, v.code_version,
            json.dumps(dict(v.params), sort_keys=True), json.dumps(dict(v.metrics), sort_keys=True),
            json.dumps(list(v.feature_names)), v.metadata_uri, v.eval_uri, v.created_at.ToMilliseconds(),
            v.idempotency_key)


def _version_from_row(row: tuple) -> registry_pb2.ModelVersion:
    (name, version, artifact_uri, artifact_sha256, dataset_id, code_version, params, metrics,
     feature_names, metadata_uri, eval_uri, created_at_ms, idempotency_key) = row
    v = registry_pb2.ModelVersion(
        name=name, version=version, artifact_uri=artifact_uri, artifact_sha256=artifact_sha256,
        dataset_id=dataset_id, code_version=code_version, params=json.loads(params),
        metrics=json.loads(metrics), feature_names=json.loads(feature_names),
        metadata_uri=metadata_uri, eval_uri=eval_uri, idempotency_key=idempotency_key)
    v.created_at.FromMilliseconds(created_at_ms)
    return v


def _audit_from_row(row: tuple) -> registry_pb2.AuditRecord:
    (model_name, action, alias, version, previous_version, moved, subject, reason, promoted, gate_reason,
     at_ms) = row
    record = registry_pb2.AuditRecord(
        model_name=model_name, action=registry_pb2.AuditRecord.Action.Value(action), alias=alias, version=version,
        previous_version=previous_version, moved=bool(moved), subject=subject, reason=reason,
        promoted=bool(promoted), gate_reason=gate_reason)
    record.at.FromMilliseconds(at_ms)
    return record


def _decision_to_row(d: registry_pb2.GateDecision) -> tuple:
    return (d.model_name, d.alias, d.candidate_version, d.baseline_version, d.candidate_accuracy,
            d.baseline_accuracy, d.eval_rows, d.eval_uri, int(d.promoted), d.reason,
            d.decided_at.ToMilliseconds(), d.idempotency_key)


def _decision_from_row(row: tuple) -> registry_pb2.GateDecision:
    (model_name, alias, candidate_version, baseline_version, candidate_accuracy, baseline_accuracy,
     eval_rows, eval_uri, promoted, reason, decided_at_ms, idempotency_key) = row
    d = registry_pb2.GateDecision(
        model_name=model_name, alias=alias, candidate_version=candidate_version,
        baseline_version=baseline_version, candidate_accuracy=candidate_accuracy,
        baseline_accuracy=baseline_accuracy, eval_rows=eval_rows, eval_uri=eval_uri,
        promoted=bool(promoted), reason=reason, idempotency_key=idempotency_key)
    d.decided_at.FromMilliseconds(decided_at_ms)
    return d
