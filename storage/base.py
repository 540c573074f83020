"""The storage interfaces the gateway is written against.

Two stores implement them: the embedded SQLite store (`storage.sqlite`) and the thin MongoDB
adapter (`storage.mongo`). Everything above (the change feed, mapping, replay) is shared,
and `tests/test_store_contract.py` holds both to the same behaviour.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import Any


class StoreError(Exception):
    """The store could not do what was asked (unreachable, bad document); worth retrying."""


class DocumentRejected(StoreError):
    """The store cannot hold this value as given (MongoDB: an integer beyond 64 bits, a NUL in
    a key, text that is not valid Unicode); retrying it cannot help."""


class LeaseLost(StoreError):
    """The fence given is no longer the lease's: another holder took over. Nothing was written;
    the one who lost the lease must stop."""


class ChangeHistoryLost(StoreError):
    """The change stream cannot resume from the token it was given (aged out of the oplog,
    unknown, or corrupt). Retrying cannot help: reopen from now and tell clients to resync."""


ResumeToken = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Change:
    """One change event, read out of MongoDB's change-event shape (both stores produce it)."""

    token: ResumeToken
    operation: str  # insert, update, replace, delete, invalidate, drop, ...
    collection: str | None
    document_id: Any
    document: dict[str, Any] | None  # the post-image (or the current document, on MongoDB
    before: dict[str, Any] | None  # without images); the pre-image, where the store keeps them
    updated_fields: dict[str, Any] | None
    wall_time: dt.datetime | None
    renamed_to: str | None = None  # a rename's new collection name

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Change:
        description = event.get("updateDescription") or {}
        wall_time = event.get("wallTime")
        cluster_time = event.get("clusterTime")
        if wall_time is None and cluster_time is not None and hasattr(cluster_time, "time"):
            wall_time = dt.datetime.fromtimestamp(cluster_time.time, tz=dt.UTC)
        if isinstance(wall_time, dt.datetime) and wall_time.tzinfo is None:
            wall_time = wall_time.replace(tzinfo=dt.UTC)
        return cls(
            token=event["_id"],
            operation=event.get("operationType", ""),
            collection=(event.get("ns") or {}).get("coll"),
            document_id=(event.get("documentKey") or {}).get("_id"),
            document=event.get("fullDocument"),
            before=event.get("fullDocumentBeforeChange"),
            updated_fields=description.get("updatedFields"),
            wall_time=wall_time if isinstance(wall_time, dt.datetime) else None,
            renamed_to=(event.get("to") or {}).get("coll"),
        )


class ChangeStream(abc.ABC):
    """An open change stream, read like PyMongo's: `try_next()` and `resume_token`."""

    @abc.abstractmethod
    async def try_next(self) -> Mapping[str, Any] | None:
        """The next change event, or None after waiting a short while for one."""

    @property
    @abc.abstractmethod
    def resume_token(self) -> ResumeToken | None:
        """Where to resume after everything returned so far; it also advances while the
        stream is idle, so a quiet collection's token does not age out of the history."""

    def buffered(self) -> int:
        """How many changes `try_next()` would return at once, without waiting (0 when the
        driver does not tell)."""
        return 0

    async def close(self) -> None:  # noqa: B027 (optional: nothing to release by default)
        """Release what the stream holds."""


@dataclasses.dataclass(frozen=True)
class Fence:
    """A lease holder's proof: writes made with it are refused once the lease `lease` has a
    newer holder (its fencing number grew past `number`)."""

    lease: str
    number: int


@dataclasses.dataclass(frozen=True)
class Lease:
    """Who holds the lease `name`, since when, until when, and its fencing number (it grows by
    one with each new holder, never with a renewal)."""

    name: str
    holder: str
    fence: int
    since_ms: int
    expires_ms: int

    def held_by(self, holder: str, now_ms: int) -> bool:
        return self.holder == holder and self.expires_ms > now_ms


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where the change consumer `name` resumes, saved with the events of that change; with a
    fence, saved (and the events logged) only while the fence holds."""

    name: str
    token: ResumeToken
    fence: Fence | None = None


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """A data event about to be logged and emitted."""

    name: str
    payload: dict[str, Any]
    rooms: Sequence[str]
    source: str  # unique: the change's resume token and position, or a broadcast's key


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    """A logged data event: its place in the one ordered sequence (the client's `eventId`)."""

    sequence: int
    timestamp_ms: int
    name: str
    payload: dict[str, Any]
    rooms: Sequence[str]


@dataclasses.dataclass(frozen=True)
class EventBounds:
    oldest: int | None  # the oldest sequence still in the log (None: the log is empty)
    newest: int  # the newest sequence ever given, kept or pruned (0: none yet)
    room_newest: int | None  # the newest sequence addressed to the room asked about


@dataclasses.dataclass(frozen=True)
class RequestClaim:
    """An Idempotency-Key's record: the first request's fingerprint, the nonce that sources its
    event, and its answer once given."""

    fingerprint: str
    nonce: str
    response: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Revocation:
    """Tokens refused until `until_ms`: the one with this `jti`, or every token of this `sub`
    (kind "jti" or "sub"). Past `until_ms` it is forgotten."""

    kind: str
    value: str
    until_ms: int


class Store(abc.ABC):
    """Documents (bookings, payments) and the gateway's own state: resume tokens, the event
    log, idempotency keys. Every failure is raised as `StoreError`."""

    name: str = "store"

    async def open(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Connect and create what is missing (tables, indexes)."""

    async def close(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Release connections; the store may not be used afterwards."""

    async def start_maintenance(self) -> None:  # noqa: B027 (optional, as its doc says)
        """For a long-running process (the gateway): start the store's own background
        upkeep, stopped by `close()`. Nothing to do by default."""

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

    # -- changes -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def watch(
        self, collections: Sequence[str], resume_after: ResumeToken | None
    ) -> ChangeStream:
        """One ordered stream of the changes to these collections, after `resume_after`
        (from now when None). Raises `ChangeHistoryLost` when the token cannot be used."""

    @abc.abstractmethod
    async def load_resume_token(self, name: str) -> ResumeToken | None:
        """The token saved under `name`, or None."""

    @abc.abstractmethod
    async def save_resume_token(
        self, name: str, token: ResumeToken | None, fence: Fence | None = None
    ) -> None:
        """Persist where the consumer `name` resumes; None forgets it (resume from now). With
        a fence that no longer holds: `LeaseLost`, nothing saved."""

    # -- leases ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lease(
        self, name: str, holder: str, ttl_s: float, replacing: str | None = None
    ) -> Lease:
        """Take the lease `name` for `ttl_s` when it is free, expired, already `holder`'s (a
        renewal), or held by `replacing` (a holder known to be dead); atomic. Returns the
        lease as it stands afterwards, whoever holds it."""

    @abc.abstractmethod
    async def release_lease(self, name: str, holder: str) -> None:
        """Let the lease go now if `holder` has it, so that another takes over at once."""

    @abc.abstractmethod
    async def read_lease(self, name: str) -> Lease | None:
        """The lease as it stands, or None if never taken."""

    def now_ms(self) -> int:
        """The clock leases are measured by (the store's, where it has one)."""
        return int(time.time() * 1000)

    # -- event log ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def log_identity(self) -> str:
        """A name for this event log, made once when the log is first opened and the same for
        every instance on it (another store, another name): the instances' bus channel."""

    @abc.abstractmethod
    async def append_events(
        self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        """Log these events, each taking the next id of the one sequence, and save the
        checkpoint's resume token with them (in the same transaction where the store has
        them). An event whose source is already logged is not logged again: None in its place.
        With a checkpoint's fence that no longer holds: `LeaseLost`, nothing logged."""

    @abc.abstractmethod
    async def find_event(self, source: str) -> StoredEvent | None:
        """The logged event with this source, or None."""

    @abc.abstractmethod
    async def room_events(
        self,
        room: str,
        after_sequence: int,
        limit: int,
        max_bytes: int | None = None,
        until: int | None = None,
    ) -> list[StoredEvent]:
        """The logged events addressed to `room` after this sequence (and up to `until`),
        oldest first: at most `limit`, and with `max_bytes`, no more once their payloads weigh
        that much (the first is always returned)."""

    @abc.abstractmethod
    async def newest_room_event(
        self, room: str, name: str, until: int | None = None
    ) -> StoredEvent | None:
        """The newest logged event called `name` addressed to `room` (up to `until`), or
        None."""

    @abc.abstractmethod
    async def events_after(self, sequence: int, limit: int) -> list[StoredEvent]:
        """Every logged event after this sequence, whatever its rooms, oldest first."""

    @abc.abstractmethod
    async def event_bounds(self, room: str, until: int | None = None) -> EventBounds:
        """Where the log starts and ends, and the newest sequence of `room` (up to `until`)."""

    # -- idempotency keys --------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_request(self, key: str, fingerprint: str, ttl_s: float) -> RequestClaim:
        """The live record of this Idempotency-Key; when there is none (never used, or its
        `ttl_s` has passed), one is made for this request, with a fresh nonce and no answer.
        Atomic: concurrent claims of one key get the same record."""

    @abc.abstractmethod
    async def complete_request(self, key: str, nonce: str, response: dict[str, Any]) -> None:
        """Keep the answer of the request that claimed `key` with `nonce`."""

    # -- revocations -------------------------------------------------------------------------
    @abc.abstractmethod
    async def revoke(self, revocation: Revocation) -> None:
        """Keep this revocation, replacing the one of the same kind and value (so an earlier
        `until_ms` shortens it, and one already past lifts it)."""

    @abc.abstractmethod
    async def revocations(self) -> list[Revocation]:
        """Every revocation whose `until_ms` is still ahead."""
