"""The event log: appends (with the checkpoint's fence check and token, in one transaction)
and the room index replay reads, plus `_stored`, a row read back. Functions of the
connection, run on the store's connection thread."""

from __future__ import annotations

import json
import sqlite3
import time

from storage.base import Checkpoint, NewEvent, StoredEvent
from storage.sqlite.connection import dumps, write_transaction
from storage.sqlite.leases import _check_fence
from storage.sqlite.tokens import _save_token


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
