"""The embedded store: one SQLite file, shared safely by several processes on one machine.

Every document write also appends, in the same transaction, a change to an ordered change log
shaped like a MongoDB change event, so the pipeline above runs unchanged on either store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from typing import Any

import aiosqlite
from bson import ObjectId, Timestamp

from storage.base import (
    ChangeHistoryLost,
    ChangeStream,
    NewEvent,
    ResumeToken,
    Store,
    StoreError,
    StoredEvent,
    event_id,
)

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
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
    response TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_ms);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    operation TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    full_document TEXT,
    before_document TEXT,
    update_description TEXT,
    wall_time_ms INTEGER NOT NULL
);
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = document
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[leaf] = value


class SqliteStore(Store):
    name = "sqlite"

    PRUNE_EVERY = 500  # appends between two prunings of the logs

    def __init__(self, path: str, database_name: str = "embedded", poll_ms: int = 50,
                 retention_s: float = 7 * 86400):
        self._path = path
        self._poll_s = poll_ms / 1000
        self._retention_ms = int(retention_s * 1000)
        self._appends = 0
        self._database_name = database_name
        self._db: aiosqlite.Connection | None = None
        # one connection: its transactions must not interleave between coroutines
        self._write_lock = asyncio.Lock()

    def describe(self) -> str:
        return f"sqlite:{os.path.abspath(self._path)}"

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self._path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._db.executescript(SCHEMA)
            await self.prune()
        except Exception as exc:  # sqlite3.Error, OSError
            raise StoreError(f"cannot open {self._path}: {exc}") from exc

    async def prune(self) -> None:
        """Forget events and changes older than the retention window. A consumer whose token
        is older than what is left then gets `ChangeHistoryLost`, as with MongoDB's oplog."""
        horizon_ms = int(time.time() * 1000) - self._retention_ms
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM event_rooms WHERE seq IN (SELECT seq FROM events WHERE created_ms < ?)",
                (horizon_ms,))
            await db.execute("DELETE FROM events WHERE created_ms < ?", (horizon_ms,))
            # keep the newest change: it carries the sequence a fresh stream starts from
            await db.execute("DELETE FROM changes WHERE wall_time_ms < ? AND seq < "
                             "(SELECT MAX(seq) FROM changes)", (horizon_ms,))
    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def ping(self) -> None:
        try:
            await self.db.execute("SELECT 1")
        except Exception as exc:
            raise StoreError(f"sqlite does not answer: {exc}") from exc

    # -- documents ---------------------------------------------------------------------------
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        async with self.db.execute(
            "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, str(doc_id))
        ) as cursor:
            row = await cursor.fetchone()
        return json.loads(row[0]) if row else None

    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = str(ObjectId())
        doc_id = str(document["_id"])
        async with self._transaction() as db:
            try:
                await db.execute(
                    "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                    (collection, doc_id, _dumps(document)),
                )
            except aiosqlite.IntegrityError:
                raise StoreError(f"{collection} already holds a document {doc_id!r}") from None
            await self._record(db, collection, "insert", doc_id, after=document)
        return doc_id

    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        async with self._transaction() as db:
            before = await self._locked_get(db, collection, doc_id)
            if before is None or not fields:
                return before is not None
            after = json.loads(_dumps(before))
            for path, value in fields.items():
                _set_path(after, path, value)
            await db.execute(
                "UPDATE documents SET body = ? WHERE collection = ? AND id = ?",
                (_dumps(after), collection, str(doc_id)),
            )
            await self._record(db, collection, "update", str(doc_id), after=after, before=before,
                               update={"updatedFields": fields, "removedFields": []})
        return True

    async def delete_document(self, collection: str, doc_id: str) -> bool:
        async with self._transaction() as db:
            before = await self._locked_get(db, collection, doc_id)
            if before is None:
                return False
            await db.execute(
                "DELETE FROM documents WHERE collection = ? AND id = ?", (collection, str(doc_id))
            )
            await self._record(db, collection, "delete", str(doc_id), before=before)
        return True

    async def _locked_get(self, db: aiosqlite.Connection, collection: str,
                          doc_id: str) -> dict[str, Any] | None:
        async with db.execute(
            "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, str(doc_id))
        ) as cursor:
            row = await cursor.fetchone()
        return json.loads(row[0]) if row else None

    async def _record(self, db: aiosqlite.Connection, collection: str, operation: str,
                      doc_id: str, after: dict | None = None, before: dict | None = None,
                      update: dict | None = None) -> None:
        await db.execute(
            "INSERT INTO changes (collection, operation, doc_id, full_document, before_document,"
            " update_description, wall_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (collection, operation, doc_id,
             _dumps(after) if after is not None else None,
             _dumps(before) if before is not None else None,
             _dumps(update) if update is not None else None,
             int(time.time() * 1000)),
        )

    # -- changes -----------------------------------------------------------------------------
    async def watch(self, collections, resume_after: ResumeToken | None) -> ChangeStream:
        newest = await self._newest_change()
        if resume_after is None:
            after = newest
        else:
            after = _token_sequence(resume_after)
            if after > newest:
                raise ChangeHistoryLost(f"resume token {after} is ahead of the change log "
                                        f"({newest}): the store was replaced")
            oldest = await self._scalar("SELECT MIN(seq) FROM changes")
            if oldest is not None and after < oldest - 1:
                raise ChangeHistoryLost(f"changes after {after} were pruned (oldest {oldest})")
        return SqliteChangeStream(self, tuple(collections), after, self._poll_s)

    async def _newest_change(self) -> int:
        newest = await self._scalar("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(newest or 0)

    async def _scalar(self, sql: str, params: tuple = ()) -> Any:
        async with self.db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def read_changes(self, collections: tuple[str, ...], after: int,
                           limit: int) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(collections))
        async with self.db.execute(
            "SELECT seq, collection, operation, doc_id, full_document, before_document,"
            f" update_description, wall_time_ms FROM changes WHERE seq > ? AND collection IN"
            f" ({marks}) ORDER BY seq LIMIT ?", (after, *collections, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [self._change_event(*row) for row in rows]

    def _change_event(self, seq, collection, operation, doc_id, full_document, before_document,
                      update_description, wall_time_ms) -> dict[str, Any]:
        """A row of the change log in MongoDB's change-event shape."""
        event: dict[str, Any] = {
            "_id": _token(seq),
            "operationType": operation,
            "ns": {"db": self._database_name, "coll": collection},
            "documentKey": {"_id": doc_id},
            "clusterTime": Timestamp(wall_time_ms // 1000, seq % 2**32),
            "wallTime": wall_time(wall_time_ms),
        }
        if full_document is not None:
            event["fullDocument"] = json.loads(full_document)
        if before_document is not None:
            event["fullDocumentBeforeChange"] = json.loads(before_document)
        if update_description is not None:
            event["updateDescription"] = json.loads(update_description)
        return event

    async def load_resume_token(self, name: str) -> ResumeToken | None:
        text = await self._scalar("SELECT token FROM resume_tokens WHERE name = ?", (name,))
        return json.loads(text) if text else None

    async def save_resume_token(self, name: str, token: ResumeToken | None) -> None:
        async with self._transaction() as db:
            if token is None:
                await db.execute("DELETE FROM resume_tokens WHERE name = ?", (name,))
            else:
                await db.execute(
                    "INSERT INTO resume_tokens (name, token) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET token = excluded.token",
                    (name, _dumps(dict(token))))

    # -- event log ---------------------------------------------------------------------------
    async def append_events(self, events) -> list[StoredEvent | None]:
        stored: list[StoredEvent | None] = []
        now_ms = int(time.time() * 1000)
        async with self._transaction() as db:
            for event in events:
                async with db.execute(
                    "INSERT INTO events (source, name, payload, rooms, created_ms)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(source) DO NOTHING RETURNING seq",
                    (event.source, event.name, _dumps(event.payload), _dumps(list(event.rooms)),
                     now_ms),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    stored.append(None)
                    continue
                await db.executemany("INSERT OR IGNORE INTO event_rooms (room, seq) VALUES (?, ?)",
                                     [(room, row[0]) for room in event.rooms])
                stored.append(StoredEvent(event_id(row[0]), now_ms, event.name, event.payload,
                                          tuple(event.rooms)))
        self._appends += len(events)
        if self._appends >= self.PRUNE_EVERY:
            self._appends = 0
            await self.prune()
        return stored

    async def find_event(self, source: str) -> StoredEvent | None:
        async with self.db.execute(
            "SELECT seq, created_ms, name, payload, rooms FROM events WHERE source = ?", (source,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        seq, created_ms, name, payload, rooms = row
        return StoredEvent(event_id(seq), created_ms, name, json.loads(payload),
                           tuple(json.loads(rooms)))

    # -- idempotency keys --------------------------------------------------------------------
    async def recall_request(self, key: str) -> tuple[str, dict[str, Any]] | None:
        async with self.db.execute(
            "SELECT fingerprint, response FROM idempotency_keys WHERE key = ? AND expires_ms > ?",
            (key, int(time.time() * 1000)),
        ) as cursor:
            row = await cursor.fetchone()
        return (row[0], json.loads(row[1])) if row else None

    async def remember_request(self, key: str, fingerprint: str, response: dict[str, Any],
                               ttl_s: float) -> None:
        now_ms = int(time.time() * 1000)
        async with self._transaction() as db:
            await db.execute("DELETE FROM idempotency_keys WHERE expires_ms <= ?", (now_ms,))
            await db.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, response, expires_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, fingerprint, _dumps(response), now_ms + int(ttl_s * 1000)))

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db, self._write_lock)


class _Transaction:
    """`BEGIN IMMEDIATE` ... COMMIT/ROLLBACK: the write lock is taken up front, so two
    processes never deadlock upgrading a read lock."""

    def __init__(self, db: aiosqlite.Connection, lock: asyncio.Lock):
        self._db = db
        self._lock = lock

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._lock.acquire()
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()


def wall_time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def _token(seq: int) -> dict[str, str]:
    return {"_data": f"{seq:016x}"}


def _token_sequence(token: ResumeToken) -> int:
    data = token.get("_data") if isinstance(token, dict) else None
    try:
        if not isinstance(data, str) or len(data) != 16:
            raise ValueError(data)
        return int(data, 16)
    except ValueError:
        raise ChangeHistoryLost(f"not a resume token of this store: {str(token)[:80]}") from None


class SqliteChangeStream(ChangeStream):
    """Reads the change log after a sequence number, polling while it is idle."""

    BATCH = 500

    def __init__(self, store: SqliteStore, collections: tuple[str, ...], after: int,
                 poll_s: float):
        self._store = store
        self._collections = collections
        self._after = after
        self._poll_s = poll_s
        self._buffer: list[dict[str, Any]] = []
        self._token = _token(after)

    @property
    def resume_token(self) -> ResumeToken:
        return self._token

    async def try_next(self) -> dict[str, Any] | None:
        if not self._buffer:
            newest = await self._read()
            if not self._buffer:
                await asyncio.sleep(self._poll_s)  # the idle wait, as max_await_time_ms
                newest = await self._read()
            if not self._buffer and newest > _token_sequence(self._token):
                # like PyMongo's postBatchResumeToken: the token moves on past the changes of
                # other collections, so it stays fresh while ours are quiet
                self._token = _token(newest)
        if self._buffer:
            event = self._buffer.pop(0)
            self._token = event["_id"]
            return event
        return None

    async def _read(self) -> int:
        """Fill the buffer; return the newest sequence committed before the read (every
        change up to it is visible, as SQLite commits writers one at a time)."""
        try:
            newest = await self._store._newest_change()
            self._buffer = await self._store.read_changes(
                self._collections, _token_sequence(self._token), self.BATCH)
            return newest
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot read the change log: {exc}") from exc
