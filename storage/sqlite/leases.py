"""Leases and fences: who holds a named lease (the watcher's), and the fence check that keeps
a holder whose lease moved on from writing. Functions of the connection, run on the store's
connection thread."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

from storage.base import Fence, Lease, LeaseLost
from storage.sqlite.connection import write_transaction


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
