"""The storage interfaces the gateway is written against.

Two stores implement them: the embedded SQLite store (`storage.sqlite`) and the thin MongoDB
adapter (`storage.mongo`). Everything above (mapping, consumer, replay, leadership) is shared,
and `tests/test_store_contract.py` holds both to the same behaviour.
"""

from __future__ import annotations

import abc
from typing import Any


class StoreError(Exception):
    """The store could not do what was asked (unreachable, bad document)."""


class Store(abc.ABC):
    """Documents (bookings, payments) and, later, the gateway's own state."""

    name: str = "store"

    async def open(self) -> None:
        """Connect and create what is missing (tables, indexes)."""

    async def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the store answers; raise `StoreError` otherwise."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs (never with credentials)."""

    # -- documents ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document with this id (its string form; ObjectId hex works), or None."""

    @abc.abstractmethod
    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        """Insert; a given `_id` is kept, else one is made. Returns the id as a string."""

    @abc.abstractmethod
    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        """`$set` these top-level fields; False when there is no such document."""

    @abc.abstractmethod
    async def delete_document(self, collection: str, doc_id: str) -> bool:
        """Delete; False when there is no such document."""
