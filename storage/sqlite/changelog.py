"""The embedded store's change log: every document write appends, in the same transaction, a
row that reads back as a MongoDB change event (`_id` resume token, `operationType`, `ns`,
`documentKey`, `fullDocument`, `fullDocumentBeforeChange`, `updateDescription`, `clusterTime`,
`wallTime`), so the pipeline above runs unchanged on either store."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bson import Timestamp

from storage.base import ChangeHistoryLost, ChangeStream, ResumeToken
from storage.sqlite.connection import dumps

SCHEMA = """
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
READ_BATCH = 500  # changes read from the log at once

# (newest sequence committed, up to `limit` change events after `after`)
ReadChanges = Callable[[int, int], Awaitable[tuple[int, list[dict[str, Any]]]]]


def record(
    db: sqlite3.Connection,
    collection: str,
    operation: str,
    doc_id: str,
    after: dict | None = None,
    before: dict | None = None,
    update: dict | None = None,
) -> None:
    """Append one change, inside the caller's transaction (the document's write)."""
    db.execute(
        "INSERT INTO changes (collection, operation, doc_id, full_document, before_document,"
        " update_description, wall_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            collection,
            operation,
            doc_id,
            dumps(after) if after is not None else None,
            dumps(before) if before is not None else None,
            dumps(update) if update is not None else None,
            int(time.time() * 1000),
        ),
    )


def newest(db: sqlite3.Connection) -> int:
    """The newest sequence ever given, pruned or not: where a stream from now starts."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else 0


def bounds(db: sqlite3.Connection) -> tuple[int, int | None]:
    """(the newest sequence, the oldest still kept)."""
    oldest = db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
    return newest(db), oldest


def start_after(db: sqlite3.Connection, token: ResumeToken | None) -> int:
    """The sequence a stream resumes after; `ChangeHistoryLost` when the token cannot be used
    (not one of ours, ahead of the log, or its successors pruned)."""
    last, oldest = bounds(db)
    if token is None:
        return last
    after = token_sequence(token)
    if after > last:
        raise ChangeHistoryLost(
            f"resume token {after} is ahead of the change log ({last}): the store was replaced"
        )
    if oldest is not None and after < oldest - 1:
        raise ChangeHistoryLost(f"changes after {after} were pruned (oldest {oldest})")
    return after


def read(
    db: sqlite3.Connection, database: str, collections: Sequence[str], after: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """The newest sequence committed so far, and up to `limit` change events after `after`."""
    marks = ",".join("?" * len(collections))
    # one read transaction, so that `newest` and the rows are one snapshot: every change up to
    # `newest` is visible (SQLite commits writers one at a time)
    db.execute("BEGIN")
    try:
        last = newest(db)
        rows = db.execute(
            "SELECT seq, collection, operation, doc_id, full_document, before_document,"
            f" update_description, wall_time_ms FROM changes WHERE seq > ? AND collection IN"
            f" ({marks}) ORDER BY seq LIMIT ?",
            (after, *collections, limit),
        ).fetchall()
    finally:
        db.execute("COMMIT")
    return last, [_change_event(database, *row) for row in rows]


def prune(db: sqlite3.Connection, horizon_ms: int) -> None:
    """Forget changes older than the horizon, inside the caller's transaction; the newest is
    kept, as it carries the sequence a fresh stream starts from."""
    db.execute(
        "DELETE FROM changes WHERE wall_time_ms < ? AND seq < (SELECT MAX(seq) FROM changes)",
        (horizon_ms,),
    )


def _change_event(
    database,
    seq,
    collection,
    operation,
    doc_id,
    full_document,
    before_document,
    update_description,
    wall_time_ms,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": token(seq),
        "operationType": operation,
        "ns": {"db": database, "coll": collection},
        "clusterTime": Timestamp(wall_time_ms // 1000, seq % 2**32),
        "wallTime": dt.datetime.fromtimestamp(wall_time_ms / 1000, tz=dt.UTC),
    }
    if doc_id != "":  # a collection's own change (drop) concerns no document
        event["documentKey"] = {"_id": doc_id}
    if full_document is not None:
        event["fullDocument"] = json.loads(full_document)
    if before_document is not None:
        event["fullDocumentBeforeChange"] = json.loads(before_document)
    if update_description is not None:
        event["updateDescription"] = json.loads(update_description)
    return event


def token(seq: int) -> dict[str, str]:
    return {"_data": f"{seq:016x}"}


def token_sequence(resume_token: ResumeToken) -> int:
    data = resume_token.get("_data") if isinstance(resume_token, dict) else None
    try:
        if not isinstance(data, str) or len(data) != 16:
            raise ValueError(data)
        return int(data, 16)
    except ValueError:
        raise ChangeHistoryLost(
            f"not a resume token of this store: {str(resume_token)[:80]}"
        ) from None


class SqliteChangeStream(ChangeStream):
    """Reads the change log after a sequence, polling while it is idle. A poll reads only when
    something was committed to the file since the last read began (`commits`, a counter read
    on the event loop in microseconds; None: unknown, so read): an idle gateway made a hundred
    reads a second off the loop, 4% of a core."""

    def __init__(
        self,
        read_changes: ReadChanges,
        after: int,
        poll_s: float,
        commits: Callable[[], int | None] = lambda: None,
    ):
        self._read_changes = read_changes
        self._poll_s = poll_s
        self._commits = commits
        self._read_at: int | None = None  # `commits()` when the last read began
        self._newest = 0  # the newest sequence the last read saw
        self._buffer: deque[dict[str, Any]] = deque()
        self._token = token(after)

    @property
    def resume_token(self) -> ResumeToken:
        return self._token

    def buffered(self) -> int:
        return len(self._buffer)

    async def try_next(self) -> dict[str, Any] | None:
        if not self._buffer:
            last = await self._read()
            if not self._buffer:
                await asyncio.sleep(self._poll_s)  # the idle wait, as max_await_time_ms
                last = await self._read()
            if not self._buffer and last > token_sequence(self._token):
                # like PyMongo's postBatchResumeToken: the token moves on past the changes of
                # other collections, so it stays fresh while ours are quiet
                self._token = token(last)
        if self._buffer:
            event = self._buffer.popleft()
            self._token = event["_id"]
            return event
        return None

    async def _read(self) -> int:
        commits = self._commits()
        if commits is not None and commits == self._read_at:
            return self._newest  # nothing committed anywhere since the last read began
        last, changes = await self._read_changes(token_sequence(self._token), READ_BATCH)
        # all that was committed before `commits` is read now, unless the batch was full
        self._read_at = commits if len(changes) < READ_BATCH else None
        self._newest = last
        self._buffer.extend(changes)
        return last
