"""SqliteStore: the embedded store's `Store`, which runs each call on the connection's thread.
The SQL of documents, leases, the event log, resume tokens and idempotency keys is in the
module of that name; what is left here is short enough to read in place."""

from __future__ import annotations

import json
import os
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
    NewEvent,
    RequestClaim,
    ResumeToken,
    Revocation,
    Store,
    StoredEvent,
)
from storage.sqlite import changelog
from storage.sqlite.connection import (
    PRUNE_INTERVAL_S,
    SqliteConnection,
    dumps,
    write_transaction,
)
from storage.sqlite.documents import _delete, _get, _insert, _update
from storage.sqlite.eventlog import _append, _room_events, _stored
from storage.sqlite.idempotency import _claim
from storage.sqlite.leases import _acquire_lease, _check_fence, _read_lease
from storage.sqlite.schema import SCHEMA, _migrate
from storage.sqlite.tokens import _save_token


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

        return changelog.SqliteChangeStream(
            read_changes, after, self._poll_s, self._connection.commits
        )

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


def _probe_write(db: sqlite3.Connection) -> None:
    with write_transaction(db):
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('probed_ms', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(int(time.time() * 1000)),),
        )
