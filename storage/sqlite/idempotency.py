"""Idempotency keys: a request's claim (its fingerprint, and the answer once given), so that
a retried broadcast is answered again instead of emitted twice. Run on the store's connection
thread."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

from storage.base import RequestClaim
from storage.sqlite.connection import write_transaction


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
