"""The embedded store's tables (the change log's come from `changelog`), created if missing
on every open, and `_migrate`, which brings a file written by an older version up to them."""

from __future__ import annotations

import sqlite3

from storage.sqlite import changelog

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


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older version up to the schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency_keys)")}
    if "nonce" not in columns:
        db.execute("ALTER TABLE idempotency_keys ADD COLUMN nonce TEXT NOT NULL DEFAULT ''")
