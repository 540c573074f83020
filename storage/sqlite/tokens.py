"""Resume tokens: where each change-stream consumer left off, saved alone or in the
transaction that logs the events it produced (a `Checkpoint`)."""

from __future__ import annotations

import sqlite3

from storage.base import ResumeToken
from storage.sqlite.connection import dumps


def _save_token(db: sqlite3.Connection, name: str, token: ResumeToken | None) -> None:
    if token is None:
        db.execute("DELETE FROM resume_tokens WHERE name = ?", (name,))
    else:
        db.execute(
            "INSERT INTO resume_tokens (name, token) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET token = excluded.token",
            (name, dumps(dict(token))),
        )
