"""The embedded store: documents, the gateway's own state (resume tokens, the event log,
idempotency keys), and a change log written with every document write."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bson import ObjectId

from storage.base import (
    ChangeStream,
    Checkpoint,
    EventBounds,
    Fence,
    Lease,
    LeaseLost,
    NewEvent,
    RequestClaim,
    ResumeToken,
    Revocation,
    Store,
    StoredEvent,
    StoreError,
)
from storage.paths import set_at
from storage.sqlite import changelog
from storage.sqlite.connection import (
    PRUNE_INTERVAL_S,
    SqliteConnection,
    dumps,
    write_transaction,
)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resume_tokens (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    rooms TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS event_rooms (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,  -- '' until the request is answered
    expires_ms INTEGER NOT NULL,
    nonce TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_ms);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revocations (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    fence INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""
    + changelog.SCHEMA
)


class SqliteStore(Store):
    name = "sqlite"

    def __init__(
        self,
        path: str,
        database_name: str = "embedded",
        poll_ms: int = 10,
        retention_s: float = 7 * 86400,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ):
        self._connection = SqliteConnection(path)
        self._database_name = database_name
        self._poll_s = poll_ms / 1000
        self._retention_ms = int(retention_s * 1000)
        self._prune_interval_s = prune_interval_s

    def describe(self) -> str:
        return f"sqlite:{os.path.abspath(self._connection.path)}"

    async def open(self) -> None:
        def setup(db: sqlite3.Connection) -> None:
            db.executescript(SCHEMA)
            _migrate(db)
            self._prune(db)

        await self._connection.open(setup)

    async def start_maintenance(self) -> None:
        await self._connection.start_upkeep(self._prune, self._prune_interval_s)

    async def close(self) -> None:
        await self._connection.close()

    async def ping(self) -> None:
        """A read; after SQLite refused a call (disk full, a read-only file), a write, since
        reads may still work while nothing can be logged."""
        if self._connection.failure is None:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        else:
            await self._run(_probe_write)

    async def _run(self, function, *args):
        """`function(db, *args)` on the store's connection thread."""
        return await self._connection.run(lambda: function(self._connection.db, *args))

    async def prune(self, before_ms: int | None = None) -> None:
        """Forget events and changes older than the retention window (or `before_ms`). A
        consumer whose token is older than what is left then gets `ChangeHistoryLost`, and a
        replay from an older event id reports a gap, as with MongoDB's oplog and TTL index."""
        await self._run(self._prune, before_ms)

    def _prune(self, db: sqlite3.Connection, before_ms: int | None = None) -> None:
        horizon_ms = (
            before_ms if before_ms is not None else int(time.time() * 1000) - self._retention_ms
        )
        with write_transaction(db):
            db.execute(
                "DELETE FROM event_rooms WHERE seq IN"
                " (SELECT seq FROM events WHERE created_ms < ?)",
                (horizon_ms,),
            )
            db.execute("DELETE FROM events WHERE created_ms < ?", (horizon_ms,))
            changelog.prune(db, horizon_ms)
            db.execute("DELETE FROM revocations WHERE until_ms <= ?", (int(time.time() * 1000),))

    # -- documents ---------------------------------------------------------------------------
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self._run(_get, collection, str(doc_id))

    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = str(ObjectId())
        return await self._run(_insert, collection, document)

    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        return await self._run(_update, collection, str(doc_id), fields)

    async def delete_document(self, collection: str, doc_id: str) -> bool:
        return await self._run(_delete, collection, str(doc_id))

    async def drop_collection(self, collection: str) -> None:
        """Delete the collection's documents with one `drop` change, as MongoDB's `drop`
        command appears on a database's change stream."""

        def drop(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute("DELETE FROM documents WHERE collection = ?", (collection,))
                changelog.record(db, collection, "drop", "")

        await self._run(drop)

    # -- changes -----------------------------------------------------------------------------
    async def watch(
        self, collections: Sequence[str], resume_after: ResumeToken | None
    ) -> ChangeStream:
        after = await self._run(changelog.start_after, resume_after)
        watched = tuple(collections)

        async def read_changes(after: int, limit: int):
            return await self._run(changelog.read, self._database_name, watched, after, limit)

        return changelog.SqliteChangeStream(read_changes, after, self._poll_s)

    async def load_resume_token(self, name: str) -> ResumeToken | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT token FROM resume_tokens WHERE name = ?", (name,)
            ).fetchone()
        )
        return json.loads(row[0]) if row else None

    async def save_resume_token(
        self, name: str, token: ResumeToken | None, fence: Fence | None = None
    ) -> None:
        def save(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                _check_fence(db, fence)
                _save_token(db, name, token)

        await self._run(save)

    # -- leases ------------------------------------------------------------------------------
    async def acquire_lease(
        self, name: str, holder: str, ttl_s: float, replacing: str | None = None
    ) -> Lease:
        return await self._run(_acquire_lease, name, holder, ttl_s, replacing)

    async def release_lease(self, name: str, holder: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute(
                    "UPDATE leases SET expires_ms = ? WHERE name = ? AND holder = ?",
                    (int(time.time() * 1000), name, holder),
                )

        await self._run(release)

    async def read_lease(self, name: str) -> Lease | None:
        return await self._run(_read_lease, name)

    # -- event log ---------------------------------------------------------------------------
    async def log_identity(self) -> str:
        def identity(db: sqlite3.Connection) -> str:
            with write_transaction(db):
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('log_identity', ?)",
                    (uuid.uuid4().hex,),
                )
                return db.execute("SELECT value FROM meta WHERE key = 'log_identity'").fetchone()[0]

        return await self._run(identity)

    async def append_events(
        self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        return await self._run(_append, list(events), checkpoint)

    async def find_event(self, source: str) -> StoredEvent | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT seq, created_ms, name, payload, rooms FROM events WHERE source = ?",
                (source,),
            ).fetchone()
        )
        return _stored(*row) if row is not None else None

    async def room_events(
        self,
        room: str,
        after_sequence: int,
        limit: int,
        max_bytes: int | None = None,
        until: int | None = None,
    ) -> list[StoredEvent]:
        return await self._run(_room_events, room, after_sequence, limit, max_bytes, until)

    async def newest_room_event(
        self, room: str, name: str, until: int | None = None
    ) -> StoredEvent | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT e.seq, e.created_ms, e.name, e.payload, e.rooms FROM event_rooms r"
                " JOIN events e ON e.seq = r.seq WHERE r.room = ? AND r.seq <= ? AND e.name = ?"
                " ORDER BY r.seq DESC LIMIT 1",
                (room, until if until is not None else 2**63 - 1, name),
            ).fetchone()
        )
        return _stored(*row) if row is not None else None

    async def events_after(self, sequence: int, limit: int) -> list[StoredEvent]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT seq, created_ms, name, payload, rooms FROM events WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (sequence, limit),
            ).fetchall()
        )
        return [_stored(*row) for row in rows]

    async def event_bounds(self, room: str, until: int | None = None) -> EventBounds:
        def bounds(db: sqlite3.Connection) -> EventBounds:
            oldest = db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            newest = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            room_newest = db.execute(
                "SELECT MAX(seq) FROM event_rooms WHERE room = ? AND seq <= ?",
                (room, until if until is not None else 2**63 - 1),
            ).fetchone()[0]
            return EventBounds(oldest, newest[0] if newest else 0, room_newest)

        return await self._run(bounds)

    # -- idempotency keys --------------------------------------------------------------------
    async def claim_request(self, key: str, fingerprint: str, ttl_s: float) -> RequestClaim:
        return await self._run(_claim, key, fingerprint, ttl_s)

    async def complete_request(self, key: str, nonce: str, response: dict[str, Any]) -> None:
        def complete(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute(
                    "UPDATE idempotency_keys SET response = ? WHERE key = ? AND nonce = ?",
                    (dumps(response), key, nonce),
                )

        await self._run(complete)

    # -- revocations -------------------------------------------------------------------------
    async def revoke(self, revocation: Revocation) -> None:
        def keep(db: sqlite3.Connection) -> None:
            with write_transaction(db):
                db.execute(
                    "INSERT INTO revocations (kind, value, until_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT(kind, value) DO UPDATE SET until_ms = excluded.until_ms",
                    (revocation.kind, revocation.value, revocation.until_ms),
                )
                # forget what has passed (this one too, when it was a lift)
                db.execute(
                    "DELETE FROM revocations WHERE until_ms <= ?", (int(time.time() * 1000),)
                )

        await self._run(keep)

    async def revocations(self) -> list[Revocation]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT kind, value, until_ms FROM revocations WHERE until_ms > ?",
                (int(time.time() * 1000),),
            ).fetchall()
        )
        return [Revocation(*row) for row in rows]


# What runs on the connection's thread, one transaction each.


_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")


def _stored_id(db: sqlite3.Connection, collection: str, doc_id: str) -> str | None:
    """The id a document is stored under; ObjectId hex is found in either case, as MongoDB
    finds an ObjectId from it."""
    candidates = [doc_id]
    if _OBJECT_ID.fullmatch(doc_id) and doc_id.lower() != doc_id:
        candidates.append(doc_id.lower())
    for candidate in candidates:
        if db.execute(
            "SELECT 1 FROM documents WHERE collection = ? AND id = ?", (collection, candidate)
        ).fetchone():
            return candidate
    return None


def _get(db: sqlite3.Connection, collection: str, doc_id: str) -> dict[str, Any] | None:
    doc_id = _stored_id(db, collection, doc_id) or doc_id
    row = db.execute(
        "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
    ).fetchone()
    return json.loads(row[0]) if row else None


def _insert(db: sqlite3.Connection, collection: str, document: dict[str, Any]) -> str:
    doc_id = str(document["_id"])
    with write_transaction(db):
        try:
            db.execute(
                "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                (collection, doc_id, dumps(document)),
            )
        except sqlite3.IntegrityError:
            raise StoreError(f"{collection} already holds a document {doc_id!r}") from None
        changelog.record(db, collection, "insert", doc_id, after=document)
    return doc_id


def _update(db: sqlite3.Connection, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
    with write_transaction(db):
        doc_id = _stored_id(db, collection, doc_id) or doc_id
        before = _get(db, collection, doc_id)
        if before is None or not fields:
            return before is not None
        after = json.loads(dumps(before))
        for path, value in fields.items():
            set_at(after, path, value)
        db.execute(
            "UPDATE documents SET body = ? WHERE collection = ? AND id = ?",
            (dumps(after), collection, doc_id),
        )
        changelog.record(
            db,
            collection,
            "update",
            doc_id,
            after=after,
            before=before,
            update={"updatedFields": fields, "removedFields": []},
        )
    return True


def _delete(db: sqlite3.Connection, collection: str, doc_id: str) -> bool:
    with write_transaction(db):
        doc_id = _stored_id(db, collection, doc_id) or doc_id
        before = _get(db, collection, doc_id)
        if before is None:
            return False
        db.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        changelog.record(db, collection, "delete", doc_id, before=before)
    return True


def _probe_write(db: sqlite3.Connection) -> None:
    with write_transaction(db):
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('probed_ms', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(int(time.time() * 1000)),),
        )


def _save_token(db: sqlite3.Connection, name: str, token: ResumeToken | None) -> None:
    if token is None:
        db.execute("DELETE FROM resume_tokens WHERE name = ?", (name,))
    else:
        db.execute(
            "INSERT INTO resume_tokens (name, token) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET token = excluded.token",
            (name, dumps(dict(token))),
        )


def _check_fence(db: sqlite3.Connection, fence: Fence | None) -> None:
    """Inside the caller's write transaction (which holds SQLite's one write lock, so no
    takeover can commit between this check and the writes after it)."""
    if fence is None:
        return
    row = db.execute("SELECT fence FROM leases WHERE name = ?", (fence.lease,)).fetchone()
    if row is None or row[0] != fence.number:
        raise LeaseLost(f"lease {fence.lease!r} moved on from fence {fence.number}")


def _read_lease(db: sqlite3.Connection, name: str) -> Lease | None:
    row = db.execute(
        "SELECT holder, fence, since_ms, expires_ms FROM leases WHERE name = ?", (name,)
    ).fetchone()
    return Lease(name, *row) if row else None


def _acquire_lease(
    db: sqlite3.Connection, name: str, holder: str, ttl_s: float, replacing: str | None
) -> Lease:
    now_ms = int(time.time() * 1000)
    with write_transaction(db):
        current = _read_lease(db, name)
        if current is None:
            taken = Lease(name, holder, 1, now_ms, now_ms + int(ttl_s * 1000))
        elif current.holder == holder:
            taken = dataclasses.replace(current, expires_ms=now_ms + int(ttl_s * 1000))
        elif current.expires_ms <= now_ms or current.holder == replacing:
            taken = Lease(name, holder, current.fence + 1, now_ms, now_ms + int(ttl_s * 1000))
        else:
            return current
        db.execute(
            "INSERT INTO leases (name, holder, fence, since_ms, expires_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, fence = excluded.fence,"
            " since_ms = excluded.since_ms, expires_ms = excluded.expires_ms",
            (name, taken.holder, taken.fence, taken.since_ms, taken.expires_ms),
        )
    return taken


def _append(
    db: sqlite3.Connection, events: list[NewEvent], checkpoint: Checkpoint | None
) -> list[StoredEvent | None]:
    stored: list[StoredEvent | None] = []
    now_ms = int(time.time() * 1000)
    with write_transaction(db):
        if checkpoint is not None:
            _check_fence(db, checkpoint.fence)
        for event in events:
            row = db.execute(
                "INSERT INTO events (source, name, payload, rooms, created_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(source) DO NOTHING RETURNING seq",
                (event.source, event.name, dumps(event.payload), dumps(list(event.rooms)), now_ms),
            ).fetchone()
            if row is None:
                stored.append(None)
                continue
            db.executemany(
                "INSERT OR IGNORE INTO event_rooms (room, seq) VALUES (?, ?)",
                [(room, row[0]) for room in event.rooms],
            )
            stored.append(
                StoredEvent(row[0], now_ms, event.name, event.payload, tuple(event.rooms))
            )
        if checkpoint is not None:
            _save_token(db, checkpoint.name, checkpoint.token)
    return stored


def _stored(seq: int, created_ms: int, name: str, payload: str, rooms: str) -> StoredEvent:
    return StoredEvent(seq, created_ms, name, json.loads(payload), tuple(json.loads(rooms)))


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older version up to the schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency_keys)")}
    if "nonce" not in columns:
        db.execute("ALTER TABLE idempotency_keys ADD COLUMN nonce TEXT NOT NULL DEFAULT ''")


def _room_events(
    db: sqlite3.Connection,
    room: str,
    after: int,
    limit: int,
    max_bytes: int | None,
    until: int | None,
) -> list[StoredEvent]:
    rows = db.execute(
        "SELECT e.seq, e.created_ms, e.name, e.payload, e.rooms FROM event_rooms r"
        " JOIN events e ON e.seq = r.seq WHERE r.room = ? AND r.seq > ? AND r.seq <= ?"
        " ORDER BY r.seq LIMIT ?",
        (room, after, until if until is not None else 2**63 - 1, limit),
    )
    found, weight = [], 0
    for row in rows:  # read lazily: a slice bounded in bytes stops reading when full
        found.append(_stored(*row))
        weight += len(row[3])
        if max_bytes is not None and weight >= max_bytes:
            break
    return found


def _claim(db: sqlite3.Connection, key: str, fingerprint: str, ttl_s: float) -> RequestClaim:
    now_ms = int(time.time() * 1000)
    with write_transaction(db):
        row = db.execute(
            "SELECT fingerprint, nonce, response FROM idempotency_keys"
            " WHERE key = ? AND expires_ms > ?",
            (key, now_ms),
        ).fetchone()
        if row is not None:
            return RequestClaim(row[0], row[1], json.loads(row[2]) if row[2] else None)
        # forget what has expired (this key's old record among them)
        db.execute("DELETE FROM idempotency_keys WHERE expires_ms <= ?", (now_ms,))
        nonce = uuid.uuid4().hex
        db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, nonce, response, expires_ms)"
            " VALUES (?, ?, ?, '', ?)",
            (key, fingerprint, nonce, now_ms + int(ttl_s * 1000)),
        )
    return RequestClaim(fingerprint, nonce, None)
