"""Documents: get, insert, update and delete by collection and id, each write recording its
change in the same transaction (`changelog.record`), as MongoDB's oplog would. Functions of
the connection, run on the store's connection thread, one transaction each."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from storage.base import StoreError
from storage.paths import set_at
from storage.sqlite import changelog
from storage.sqlite.connection import dumps, write_transaction

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")


def _stored_id(db: sqlite3.Connection, collection: str, doc_id: str) -> str | None:
    """The id a document is stored under; ObjectId hex is found in either case, as MongoDB
    finds an ObjectId from it."""
    candidates = [doc_id]
    if _OBJECT_ID.fullmatch(doc_id) and doc_id.lower() != doc_id:
        candidates.append(doc_id.lower())
    for candidate in candidates:
        if db.execute(
            "SELECT 1 FROM documents WHERE collection = ? AND id = ?", (collection, candidate)
        ).fetchone():
            return candidate
    return None


def _get(db: sqlite3.Connection, collection: str, doc_id: str) -> dict[str, Any] | None:
    doc_id = _stored_id(db, collection, doc_id) or doc_id
    row = db.execute(
        "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
    ).fetchone()
    return json.loads(row[0]) if row else None


def _insert(db: sqlite3.Connection, collection: str, document: dict[str, Any]) -> str:
    doc_id = str(document["_id"])
    with write_transaction(db):
        try:
            db.execute(
                "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                (collection, doc_id, dumps(document)),
            )
        except sqlite3.IntegrityError:
            raise StoreError(f"{collection} already holds a document {doc_id!r}") from None
        changelog.record(db, collection, "insert", doc_id, after=document)
    return doc_id


def _update(db: sqlite3.Connection, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
    with write_transaction(db):
        doc_id = _stored_id(db, collection, doc_id) or doc_id
        before = _get(db, collection, doc_id)
        if before is None or not fields:
            return before is not None
        after = json.loads(dumps(before))
        for path, value in fields.items():
            set_at(after, path, value)
        db.execute(
            "UPDATE documents SET body = ? WHERE collection = ? AND id = ?",
            (dumps(after), collection, doc_id),
        )
        changelog.record(
            db,
            collection,
            "update",
            doc_id,
            after=after,
            before=before,
            update={"updatedFields": fields, "removedFields": []},
        )
    return True


def _delete(db: sqlite3.Connection, collection: str, doc_id: str) -> bool:
    with write_transaction(db):
        doc_id = _stored_id(db, collection, doc_id) or doc_id
        before = _get(db, collection, doc_id)
        if before is None:
            return False
        db.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        changelog.record(db, collection, "delete", doc_id, before=before)
    return True
