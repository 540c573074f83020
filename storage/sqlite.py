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
from bson import ObjectId

from storage.base import Store, StoreError

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
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

    def __init__(self, path: str, database_name: str = "embedded"):
        self._path = path
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
        except Exception as exc:  # sqlite3.Error, OSError
            raise StoreError(f"cannot open {self._path}: {exc}") from exc

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
            if before is None:
                return False
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
