"""The embedded store: one SQLite file, shared safely by several processes on one machine.

Every document write also appends, in the same transaction, a change to an ordered change log
shaped like a MongoDB change event, so the pipeline above runs unchanged on either store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque as collections_deque
from typing import Any

from bson import ObjectId, Timestamp

from storage.paths import set_at
from storage.base import (
    ChangeHistoryLost,
    ChangeStream,
    Checkpoint,
    NewEvent,
    ResumeToken,
    Store,
    StoredEvent,
    StoreError,
)

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
# SQLite's own busy handler sleeps in steps of 1 to 100 ms while another process holds the
# write lock; retrying ourselves in much shorter steps keeps the change -> client latency low
BUSY_RETRY_FIRST_S = 0.0002
BUSY_RETRY_MAX_S = 0.005
CHECKPOINT_INTERVAL_S = 1.0

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


class SqliteStore(Store):
    name = "sqlite"
    PRUNE_EVERY = 500  # appends between two prunings of the logs

    def __init__(self, path: str, database_name: str = "embedded", poll_ms: int = 10,
                 retention_s: float = 7 * 86400):
        self._path = path
        self._database_name = database_name
        self._poll_s = poll_ms / 1000
        self._retention_ms = int(retention_s * 1000)
        self._appends = 0
        self._db: sqlite3.Connection | None = None
        # One connection used from one thread: each call runs a whole transaction in a single
        # hop off the event loop, and calls never interleave.
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpointer: _Checkpointer | None = None

    def describe(self) -> str:
        return f"sqlite:{os.path.abspath(self._path)}"

    async def _run(self, function, *args):
        if self._thread is None:
            raise StoreError("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, _retry_while_busy, function, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        try:
            await self._run(self._open)
        except StoreError as exc:
            raise StoreError(f"cannot open {self._path}: {exc}") from exc

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                             timeout=0)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        self._prune()

    async def start_maintenance(self) -> None:
        """Write the WAL back to the database file from a thread of its own, instead of inside
        a commit every ~1,000 pages, so that the fsync it costs never stalls the pipeline."""
        await self._run(lambda: self.db.execute("PRAGMA wal_autocheckpoint = 0"))
        self._checkpointer = _Checkpointer(self._path)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
            self._checkpointer = None
        if self._thread is None:
            return
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)
        self._thread = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def ping(self) -> None:
        await self._run(lambda: self.db.execute("SELECT 1").fetchone())

    @contextlib.contextmanager
    def _transaction(self):
        """`BEGIN IMMEDIATE` ... COMMIT/ROLLBACK: the write lock is taken up front, so two
        processes never deadlock upgrading a read lock."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def prune(self, before_ms: int | None = None) -> None:
        """Forget events and changes older than the retention window (or `before_ms`). A
        consumer whose token is older than what is left then gets `ChangeHistoryLost`, and a
        replay from an older event id reports a gap, as with MongoDB's oplog and TTL index."""
        await self._run(self._prune, before_ms)

    def _prune(self, before_ms: int | None = None) -> None:
        horizon_ms = before_ms if before_ms is not None else \
            int(time.time() * 1000) - self._retention_ms
        with self._transaction() as db:
            db.execute("DELETE FROM event_rooms WHERE seq IN"
                       " (SELECT seq FROM events WHERE created_ms < ?)", (horizon_ms,))
            db.execute("DELETE FROM events WHERE created_ms < ?", (horizon_ms,))
            # keep the newest change: it carries the sequence a fresh stream starts from
            db.execute("DELETE FROM changes WHERE wall_time_ms < ? AND seq <"
                       " (SELECT MAX(seq) FROM changes)", (horizon_ms,))

    # -- documents ---------------------------------------------------------------------------
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self._run(self._get, collection, str(doc_id))

    def _get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM documents WHERE collection = ? AND id = ?",
                              (collection, doc_id)).fetchone()
        return json.loads(row[0]) if row else None

    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = str(ObjectId())
        return await self._run(self._insert, collection, document)

    def _insert(self, collection: str, document: dict[str, Any]) -> str:
        doc_id = str(document["_id"])
        with self._transaction() as db:
            try:
                db.execute("INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                           (collection, doc_id, _dumps(document)))
            except sqlite3.IntegrityError:
                raise StoreError(f"{collection} already holds a document {doc_id!r}") from None
            self._record(db, collection, "insert", doc_id, after=document)
        return doc_id

    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        return await self._run(self._update, collection, str(doc_id), fields)

    def _update(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        with self._transaction() as db:
            before = self._get(collection, doc_id)
            if before is None or not fields:
                return before is not None
            after = json.loads(_dumps(before))
            for path, value in fields.items():
                set_at(after, path, value)
            db.execute("UPDATE documents SET body = ? WHERE collection = ? AND id = ?",
                       (_dumps(after), collection, doc_id))
            self._record(db, collection, "update", doc_id, after=after, before=before,
                         update={"updatedFields": fields, "removedFields": []})
        return True

    async def delete_document(self, collection: str, doc_id: str) -> bool:
        return await self._run(self._delete, collection, str(doc_id))

    def _delete(self, collection: str, doc_id: str) -> bool:
        with self._transaction() as db:
            before = self._get(collection, doc_id)
            if before is None:
                return False
            db.execute("DELETE FROM documents WHERE collection = ? AND id = ?",
                       (collection, doc_id))
            self._record(db, collection, "delete", doc_id, before=before)
        return True

    @staticmethod
    def _record(db: sqlite3.Connection, collection: str, operation: str, doc_id: str,
                after: dict | None = None, before: dict | None = None,
                update: dict | None = None) -> None:
        db.execute(
            "INSERT INTO changes (collection, operation, doc_id, full_document, before_document,"
            " update_description, wall_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (collection, operation, doc_id,
             _dumps(after) if after is not None else None,
             _dumps(before) if before is not None else None,
             _dumps(update) if update is not None else None,
             int(time.time() * 1000)))

    # -- changes -----------------------------------------------------------------------------
    async def watch(self, collections, resume_after: ResumeToken | None) -> ChangeStream:
        newest, oldest = await self._run(self._change_bounds)
        if resume_after is None:
            after = newest
        else:
            after = _token_sequence(resume_after)
            if after > newest:
                raise ChangeHistoryLost(f"resume token {after} is ahead of the change log "
                                        f"({newest}): the store was replaced")
            if oldest is not None and after < oldest - 1:
                raise ChangeHistoryLost(f"changes after {after} were pruned (oldest {oldest})")
        return SqliteChangeStream(self, tuple(collections), after, self._poll_s)

    def _newest_change(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def _change_bounds(self) -> tuple[int, int | None]:
        oldest = self.db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
        return self._newest_change(), oldest

    async def read_changes(self, collections: tuple[str, ...], after: int,
                           limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The newest sequence committed so far, and up to `limit` changes after `after`."""
        return await self._run(self._read_changes, collections, after, limit)

    def _read_changes(self, collections, after, limit):
        marks = ",".join("?" * len(collections))
        # read in one transaction, so that `newest` and the rows are one snapshot: every
        # change up to `newest` is visible (SQLite commits writers one at a time)
        self.db.execute("BEGIN")
        try:
            newest = self._newest_change()
            rows = self.db.execute(
                "SELECT seq, collection, operation, doc_id, full_document, before_document,"
                f" update_description, wall_time_ms FROM changes WHERE seq > ? AND collection IN"
                f" ({marks}) ORDER BY seq LIMIT ?", (after, *collections, limit)).fetchall()
        finally:
            self.db.execute("COMMIT")
        return newest, [self._change_event(*row) for row in rows]

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
        row = await self._run(lambda: self.db.execute(
            "SELECT token FROM resume_tokens WHERE name = ?", (name,)).fetchone())
        return json.loads(row[0]) if row else None

    async def save_resume_token(self, name: str, token: ResumeToken | None) -> None:
        def save():
            with self._transaction() as db:
                self._save_token(db, name, token)

        await self._run(save)

    @staticmethod
    def _save_token(db: sqlite3.Connection, name: str, token: ResumeToken | None) -> None:
        if token is None:
            db.execute("DELETE FROM resume_tokens WHERE name = ?", (name,))
        else:
            db.execute("INSERT INTO resume_tokens (name, token) VALUES (?, ?)"
                       " ON CONFLICT(name) DO UPDATE SET token = excluded.token",
                       (name, _dumps(dict(token))))

    # -- event log ---------------------------------------------------------------------------
    async def append_events(self, events, checkpoint: Checkpoint | None = None
                            ) -> list[StoredEvent | None]:
        stored = await self._run(self._append, list(events), checkpoint)
        self._appends += len(events)
        if self._appends >= self.PRUNE_EVERY:
            self._appends = 0
            await self.prune()
        return stored

    def _append(self, events: list[NewEvent], checkpoint: Checkpoint | None):
        stored: list[StoredEvent | None] = []
        now_ms = int(time.time() * 1000)
        with self._transaction() as db:
            for event in events:
                row = db.execute(
                    "INSERT INTO events (source, name, payload, rooms, created_ms)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(source) DO NOTHING RETURNING seq",
                    (event.source, event.name, _dumps(event.payload), _dumps(list(event.rooms)),
                     now_ms)).fetchone()
                if row is None:
                    stored.append(None)
                    continue
                db.executemany("INSERT OR IGNORE INTO event_rooms (room, seq) VALUES (?, ?)",
                               [(room, row[0]) for room in event.rooms])
                stored.append(StoredEvent(row[0], now_ms, event.name, event.payload,
                                          tuple(event.rooms)))
            if checkpoint is not None:
                self._save_token(db, checkpoint.name, checkpoint.token)
        return stored

    async def find_event(self, source: str) -> StoredEvent | None:
        row = await self._run(lambda: self.db.execute(
            "SELECT seq, created_ms, name, payload, rooms FROM events WHERE source = ?",
            (source,)).fetchone())
        if row is None:
            return None
        seq, created_ms, name, payload, rooms = row
        return StoredEvent(seq, created_ms, name, json.loads(payload),
                           tuple(json.loads(rooms)))

    async def room_events(self, room: str, after_sequence: int, limit: int) -> list[StoredEvent]:
        rows = await self._run(lambda: self.db.execute(
            "SELECT e.seq, e.created_ms, e.name, e.payload, e.rooms FROM event_rooms r"
            " JOIN events e ON e.seq = r.seq WHERE r.room = ? AND r.seq > ?"
            " ORDER BY r.seq LIMIT ?", (room, after_sequence, limit)).fetchall())
        return [StoredEvent(seq, created_ms, name, json.loads(payload),
                            tuple(json.loads(rooms)))
                for seq, created_ms, name, payload, rooms in rows]

    async def event_bounds(self, room: str) -> tuple[int | None, int | None]:
        def bounds():
            oldest = self.db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            newest = self.db.execute("SELECT MAX(seq) FROM event_rooms WHERE room = ?",
                                     (room,)).fetchone()[0]
            return oldest, newest

        return await self._run(bounds)

    # -- idempotency keys --------------------------------------------------------------------
    async def recall_request(self, key: str) -> tuple[str, dict[str, Any]] | None:
        row = await self._run(lambda: self.db.execute(
            "SELECT fingerprint, response FROM idempotency_keys WHERE key = ? AND expires_ms > ?",
            (key, int(time.time() * 1000))).fetchone())
        return (row[0], json.loads(row[1])) if row else None

    async def remember_request(self, key: str, fingerprint: str, response: dict[str, Any],
                               ttl_s: float) -> None:
        def remember():
            now_ms = int(time.time() * 1000)
            with self._transaction() as db:
                db.execute("DELETE FROM idempotency_keys WHERE expires_ms <= ?", (now_ms,))
                db.execute(
                    "INSERT INTO idempotency_keys (key, fingerprint, response, expires_ms)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                    (key, fingerprint, _dumps(response), now_ms + int(ttl_s * 1000)))

        await self._run(remember)


class _Checkpointer(threading.Thread):
    def __init__(self, path: str):
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self._path = path
        self._stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    logger.warning("wal checkpoint failed", exc_info=True)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _retry_while_busy(function, *args):
    """Run a transactional function, again while another process holds the lock."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = BUSY_RETRY_FIRST_S
    while True:
        try:
            return function(*args)
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if ("locked" not in message and "busy" not in message) or \
                    time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(BUSY_RETRY_MAX_S, delay * 2)


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
        self._poll_s = poll_s
        self._buffer: collections_deque[dict[str, Any]] = collections_deque()
        self._token = _token(after)

    @property
    def resume_token(self) -> ResumeToken:
        return self._token

    def buffered(self) -> int:
        return len(self._buffer)

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
            event = self._buffer.popleft()
            self._token = event["_id"]
            return event
        return None

    async def _read(self) -> int:
        newest, changes = await self._store.read_changes(
            self._collections, _token_sequence(self._token), self.BATCH)
        self._buffer.extend(changes)
        return newest
