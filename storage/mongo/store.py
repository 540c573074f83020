"""MongoStore: the connection, the watched and the state database, what `open` sets up (the
state collections, their indexes and TTLs) and the transactions the mixins' writes run in. What
it does per concern is in the mixin of that name, listed in its bases."""

from __future__ import annotations

import logging
import math
from typing import Any

import pymongo
from bson.codec_options import DatetimeConversion
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReadPreference
from pymongo.errors import CollectionInvalid, OperationFailure

from storage.base import Store, StoreError
from storage.mongo.documents import DocumentsMixin
from storage.mongo.errors import (
    INDEX_OPTIONS_CONFLICT,
    NAMESPACE_EXISTS,
    ROLES,
    UNAUTHORIZED,
    store_errors,
)
from storage.mongo.eventlog import EventLogMixin
from storage.mongo.idempotency import IdempotencyMixin
from storage.mongo.leases import LeasesMixin
from storage.mongo.revocations import RevocationsMixin
from storage.mongo.state import (
    COUNTERS,
    EVENT_SEQUENCE,
    EVENTS,
    IDEMPOTENCY_KEYS,
    LOG_WRITE_CONCERN,
    REVOCATIONS,
    STATE_COLLECTIONS,
)
from storage.mongo.stream import SPLIT_LARGE_EVENTS_FROM, ChangeStreamMixin

# named for the package, not the module: its log lines say `storage.mongo` whichever logs
logger = logging.getLogger("storage.mongo")

SERVER_SELECTION_TIMEOUT_MS = 5_000
# `with_transaction` retries a transient failure for up to 120 s (driver); an append is given
# up sooner, so that a broadcast answers 503 and the watcher backs off while MongoDB is away
TRANSACTION_TIMEOUT_S = 15.0


class MongoStore(
    DocumentsMixin,
    ChangeStreamMixin,
    LeasesMixin,
    EventLogMixin,
    IdempotencyMixin,
    RevocationsMixin,
    Store,
):
    """Documents in `database`; the gateway's own state (event log, id counter, resume tokens,
    idempotency keys) in `state_database`, so that saving it is never a change of the database
    being watched, and dropping that database cannot reset the event ids clients hold."""

    name = "mongodb"

    def __init__(
        self,
        url: str,
        database: str,
        event_retention_s: float = 7 * 86400,
        state_database: str | None = None,
        transaction_timeout_s: float = TRANSACTION_TIMEOUT_S,
    ):
        self._url = url
        self._database_name = database
        self._state_database_name = state_database or f"{database}_realtime"
        if self._state_database_name == database:
            raise ValueError("the state database must not be the watched database")
        if not event_retention_s >= 1:  # a TTL index counts whole seconds: 0 deletes the log
            raise ValueError(f"event retention must be at least 1 s, not {event_retention_s!r}")
        self._event_retention_s = event_retention_s
        self._transaction_timeout_s = transaction_timeout_s
        self._client: AsyncMongoClient | None = None
        self._clock_offset_ms = 0
        self.server_version: tuple[int, ...] = ()
        self.images: bool | None = None  # pre- and post-images on every watched collection
        self.split_events = False  # events over 16 MB split by the server, joined by the stream

    def describe(self) -> str:
        host = self._url.split("@")[-1].split("/")[0]  # never the credentials
        return f"mongodb://{host}/{self._database_name} (state: {self._state_database_name})"

    @property
    def images_supported(self) -> bool:
        """Change streams give pre- and post-images from MongoDB 6.0 on (manual,
        "Change Streams with Document Pre- and Post-Images")."""
        return self.server_version >= (6,)

    @store_errors
    async def open(self) -> None:
        self._client = self._new_client()
        await self.ping()
        info = await self.db.command("buildInfo")
        self.server_version = tuple(info.get("versionArray", [0])[:3])
        self.split_events = self.server_version >= SPLIT_LARGE_EVENTS_FROM
        try:
            await self._set_up_state()
        except OperationFailure as exc:
            if exc.code != UNAUTHORIZED:
                raise
            raise StoreError(
                f"mongodb refused to set up {self._state_database_name}: {exc}. {ROLES}"
            ) from exc

    def _new_client(self) -> AsyncMongoClient:
        """Dates beyond Python's years 1 to 9999 read as `DatetimeMS` (driver, "Handling
        Out-of-Range Datetimes"): a watched document holding one must not make its change, or
        the document, unreadable."""
        options: dict[str, Any] = {
            "tz_aware": True,
            "uuidRepresentation": "standard",
            "datetime_conversion": DatetimeConversion.DATETIME_AUTO,
        }
        if "serverselectiontimeoutms" not in self._url.lower():  # the URL's own value wins
            options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        return AsyncMongoClient(self._url, **options)

    async def _set_up_state(self) -> None:
        # transactions cannot create collections before 4.4, nor ever in parallel: make them now
        for name in STATE_COLLECTIONS:
            try:
                await self.state.create_collection(name)
            except CollectionInvalid:  # it exists (the driver's own check)
                pass
            except OperationFailure as exc:
                if exc.code != NAMESPACE_EXISTS:  # another instance made it just now
                    raise
        events = self.state[EVENTS]
        await events.create_index("source", unique=True)
        await events.create_index([("rooms", ASCENDING), ("_id", ASCENDING)])
        # whole seconds, rounded up: a log kept a little longer, never shorter
        await self._ensure_ttl(EVENTS, "created", math.ceil(self._event_retention_s))
        await self._ensure_ttl(IDEMPOTENCY_KEYS, "expires", 0)
        await self._ensure_ttl(REVOCATIONS, "until", 0)
        await self._counter_past_the_log()

    async def _ensure_ttl(self, collection: str, field: str, seconds: int) -> None:
        """A TTL index on `field`. createIndexes cannot change an existing index's
        `expireAfterSeconds` (IndexOptionsConflict, 85); collMod can (manual, "TTL Indexes:
        Change the expireAfterSeconds value")."""
        try:
            await self.state[collection].create_index(field, expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code != INDEX_OPTIONS_CONFLICT:
                raise
            change = {"keyPattern": {field: 1}, "expireAfterSeconds": seconds}
            try:
                await self.state.command("collMod", collection, index=change)
            except OperationFailure as refused:
                if refused.code != UNAUTHORIZED:
                    raise
                # readWrite cannot collMod (manual, "Built-In Roles"): say what can
                raise StoreError(
                    f"{collection}'s TTL is to change to {seconds} s, which needs collMod:"
                    f" grant the gateway's user dbAdmin on {self._state_database_name}, or have"
                    f" an administrator run there once: db.runCommand({{collMod:"
                    f' "{collection}", index: {{keyPattern: {{{field}: 1}},'
                    f" expireAfterSeconds: {seconds}}}}}). {ROLES}"
                ) from refused
            logger.info(
                "TTL index changed", extra={"collection": collection, "expire_after_s": seconds}
            )

    async def _counter_past_the_log(self) -> None:
        """The id counter never behind the newest logged event (a restore of the log without
        its counter would otherwise hand out ids already taken)."""
        newest = await self.state[EVENTS].find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
        await self.state[COUNTERS].update_one(
            {"_id": EVENT_SEQUENCE},
            {"$max": {"seq": newest["_id"] if newest else 0}},
            upsert=True,
        )

    @store_errors
    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> AsyncMongoClient:
        if self._client is None:
            raise StoreError("the store is not open")
        return self._client

    @property
    def db(self):
        """The watched database: bookings, payments and the platform's other collections."""
        return self.client[self._database_name]

    @property
    def state(self):
        """The gateway's own database, read from the primary whatever the URL's
        `readPreference`: a transaction must read there (driver: "read preference in a
        transaction must be primary"), and the log, tokens and leases read from a secondary
        could lag behind what this instance delivered."""
        return self.client.get_database(
            self._state_database_name, read_preference=ReadPreference.PRIMARY
        )

    @store_errors
    async def ping(self) -> None:
        await self.db.command("ping")

    async def _in_transaction(self, callback):
        """`callback(session)` in one transaction, retried by the driver on transient errors
        (driver, `with_transaction`) within the transaction timeout. `pymongo.timeout` bounds
        every operation and the retries, commit included (driver, client_session_shared.py),
        unlike a cancellation, which could leave a commit's outcome unknown and unretried.
        A commit whose outcome stays unknown is an error here, but its events are in the log
        and every instance delivers them from there (realtime/delivery/emitter.py)."""
        with pymongo.timeout(self._transaction_timeout_s):
            async with self.client.start_session() as session:  # a plain call (driver)
                # primary, or the transaction inherits the URL's readPreference and its reads
                # are refused
                return await session.with_transaction(
                    callback,
                    write_concern=LOG_WRITE_CONCERN,
                    read_preference=ReadPreference.PRIMARY,
                )
