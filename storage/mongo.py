"""The MongoDB adapter: thin on purpose. It only translates the `Store` interface into
PyMongo's native async API (`AsyncMongoClient`, Motor's successor); resume, retry, mapping and
replay logic live above it and are shared with the embedded store.

No MongoDB server can run on this project's build machines, so what this module relies on is
cited where it is used: "manual" is the MongoDB manual (server 6.0+), "driver" is PyMongo 4.20's
async API. `tests/test_store_contract.py` runs it against a real replica set when
`MONGODB_URL` is set; `docs/mongodb.md` says what it needs and what it guarantees.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import bson
import pymongo
from bson import ObjectId
from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, WriteConcern
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern

from storage.base import (
    ChangeHistoryLost,
    ChangeStream,
    Checkpoint,
    DocumentRejected,
    EventBounds,
    Fence,
    Lease,
    LeaseLost,
    NewEvent,
    RequestClaim,
    ResumeToken,
    Revocation,
    Store,
    StoredEvent,
    StoreError,
)

logger = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 5_000
# `with_transaction` retries a transient failure for up to 120 s (driver); an append is given
# up sooner, so that a broadcast answers 503 and the watcher backs off while MongoDB is away
TRANSACTION_TIMEOUT_S = 15.0
AWAIT_TIME_MS = 500
# manual, "Change Events" / error codes: a stream that can never resume from its token
CHANGE_STREAM_HISTORY_LOST = 286
INVALID_RESUME_TOKEN = 260
CHANGE_STREAM_FATAL_ERROR = 280
UNUSABLE_TOKEN_CODES = frozenset(
    {CHANGE_STREAM_HISTORY_LOST, INVALID_RESUME_TOKEN, CHANGE_STREAM_FATAL_ERROR}
)
# What the server answers when asked to start a stream from a token it cannot read: a corrupt
# or foreign token is FailedToParse (9: "resume token string was not a valid hex string"),
# a KeyString format error (50811), a bad or empty token (40647, 40649), or BadValue (2); not
# 286. Only these make a token unusable: every other failure (timeouts, interruptions,
# elections, stale config) is retried from the same token, since wrongly calling history lost
# drops the token and skips the changes after it for good.
UNREADABLE_TOKEN_CODES = frozenset({9, 2, 50811, 40647, 40649})
INDEX_OPTIONS_CONFLICT = 85  # manual, createIndexes: same keys, other options
NAMESPACE_EXISTS = 48
DUPLICATE_KEY = 11000

EVENTS = "realtime_events"
COUNTERS = "realtime_counters"
RESUME_TOKENS = "realtime_resume_tokens"
IDEMPOTENCY_KEYS = "realtime_idempotency_keys"
LEASES = "realtime_leases"
REVOCATIONS = "realtime_revocations"
STATE_COLLECTIONS = (EVENTS, COUNTERS, RESUME_TOKENS, IDEMPOTENCY_KEYS, LEASES, REVOCATIONS)
EVENT_SEQUENCE = "events"  # the counter document that hands out event ids
LOG_IDENTITY = "log_identity"  # beside it: the log's name, made once
# an append is acknowledged (and its events delivered) only once a majority holds it, so a
# failover cannot take back an event clients were sent
LOG_WRITE_CONCERN = WriteConcern("majority")


def translate_error(exc: Exception) -> StoreError:
    """What the driver raises in the store's terms: history lost (never retried), a document
    MongoDB cannot hold, or transient."""
    if isinstance(exc, OperationFailure) and exc.code in UNUSABLE_TOKEN_CODES:
        return ChangeHistoryLost(f"change stream cannot resume (code {exc.code}): {exc}")
    if isinstance(exc, (BSONError, OverflowError, UnicodeEncodeError)):
        return DocumentRejected(f"mongodb cannot store this value: {exc}")
    return StoreError(f"mongodb: {exc}")


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def store_errors(method: Method) -> Method:
    """The one translation point: whatever the driver or BSON raises leaves as `StoreError`,
    the contract of `storage.base`."""

    @functools.wraps(method)
    async def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except StoreError:
            raise
        except (PyMongoError, BSONError, OverflowError, UnicodeEncodeError) as exc:
            raise translate_error(exc) from exc

    return translated  # type: ignore[return-value]


_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
INT64 = range(-(2**63), 2**63)


def id_filter(doc_id: str) -> dict[str, Any]:
    """Ids travel as strings; a document's `_id` may be an ObjectId (its hex in either case),
    a number, a UUID (subtype 4, the client's `uuidRepresentation="standard"`) or a string."""
    forms: list[Any] = [doc_id]
    if _OBJECT_ID.fullmatch(doc_id):
        forms.append(ObjectId(doc_id))
    elif _INTEGER.fullmatch(doc_id) and int(doc_id) in INT64:
        forms.append(int(doc_id))  # also matches a double of that value: numbers compare by value
    elif _UUID.fullmatch(doc_id):
        forms.append(uuid.UUID(doc_id))
    return {"_id": forms[0]} if len(forms) == 1 else {"_id": {"$in": forms}}


class MongoStore(Store):
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
        self._event_retention_s = event_retention_s
        self._transaction_timeout_s = transaction_timeout_s
        self._client: AsyncMongoClient | None = None
        self._clock_offset_ms = 0
        self.server_version: tuple[int, ...] = ()
        self.images: bool | None = None  # pre- and post-images on every watched collection

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
        options: dict[str, Any] = {"tz_aware": True, "uuidRepresentation": "standard"}
        if "serverselectiontimeoutms" not in self._url.lower():  # the URL's own value wins
            options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        self._client = AsyncMongoClient(self._url, **options)
        await self.ping()
        info = await self.db.command("buildInfo")
        self.server_version = tuple(info.get("versionArray", [0])[:2])
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
        await self._ensure_ttl(EVENTS, "created", int(self._event_retention_s))
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
            await self.state.command(
                "collMod",
                collection,
                index={"keyPattern": {field: 1}, "expireAfterSeconds": seconds},
            )
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
        """The gateway's own database."""
        return self.client[self._state_database_name]

    @store_errors
    async def ping(self) -> None:
        await self.db.command("ping")

    # -- documents ---------------------------------------------------------------------------
    @store_errors
    async def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self.db[collection].find_one(id_filter(str(doc_id)))

    @store_errors
    async def insert_document(self, collection: str, document: dict[str, Any]) -> str:
        document = dict(document)
        if document.get("_id") is None:
            document["_id"] = ObjectId()
        try:
            await self.db[collection].insert_one(document)
        except DuplicateKeyError:
            raise StoreError(f"{collection} already holds a document {document['_id']!r}") from None
        return str(document["_id"])

    @store_errors
    async def update_document(self, collection: str, doc_id: str, fields: dict[str, Any]) -> bool:
        fields = {k: v for k, v in fields.items() if k != "_id"}
        if not fields:
            return await self.get_document(collection, doc_id) is not None
        result = await self.db[collection].update_one(id_filter(str(doc_id)), {"$set": fields})
        return result.matched_count > 0

    @store_errors
    async def delete_document(self, collection: str, doc_id: str) -> bool:
        result = await self.db[collection].delete_one(id_filter(str(doc_id)))
        return result.deleted_count > 0

    # -- changes -----------------------------------------------------------------------------
    @store_errors
    async def watch(
        self, collections: Sequence[str], resume_after: ResumeToken | None
    ) -> ChangeStream:
        watched = list(collections)
        # a database-level stream, so that a drop or rename of a watched collection arrives as
        # its own `drop`/`rename` event (manual, "Change Events"); `to.coll`: renamed onto one
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"ns.coll": {"$in": watched}},
                        {"to.coll": {"$in": watched}},
                        {"operationType": {"$in": ["invalidate", "dropDatabase"]}},
                    ]
                }
            }
        ]
        options: dict[str, Any] = {"max_await_time_ms": AWAIT_TIME_MS}
        if await self._images_enabled(watched):
            # the document as it was right after the change, and right before it
            options["full_document"] = "whenAvailable"
            options["full_document_before_change"] = "whenAvailable"
        else:
            # the document as it is when the event is read: a later write or delete shows
            options["full_document"] = "updateLookup"
        if resume_after is not None:
            options["start_after"] = resume_after
        try:
            stream = await self.db.watch(pipeline, **options)  # runs the aggregate (driver)
        except OperationFailure as exc:
            if resume_after is not None and exc.code in UNREADABLE_TOKEN_CODES:
                raise ChangeHistoryLost(
                    f"change stream cannot start after its token (code {exc.code}): {exc}"
                ) from exc
            raise
        return MongoChangeStream(stream)

    async def _images_enabled(self, collections: list[str]) -> bool:
        """Whether every watched collection records pre- and post-images; said once, loudly,
        when not (and what is lost without them)."""
        if not self.server_version:  # never reached the server: nothing to say yet
            return False
        if not self.images_supported:
            enabled = False
            missing = collections
        else:
            found = {
                info["name"]: info.get("options", {})
                async for info in await self.db.list_collections(
                    filter={"name": {"$in": collections}}
                )
            }
            missing = [
                name
                for name in collections
                if not found.get(name, {}).get("changeStreamPreAndPostImages", {}).get("enabled")
            ]
            enabled = not missing
        if self.images is None or self.images != enabled:
            if not enabled:
                logger.warning(
                    "change stream without pre- and post-images: previousStatus may be null or"
                    " wrong, an update followed by a delete is published without its document,"
                    " and a deleted booking reaches only its reservation and admin rooms",
                    extra={
                        "collections": missing,
                        "server_version": ".".join(map(str, self.server_version)),
                        "fix": "MongoDB 6.0+ and collMod <collection>"
                        " changeStreamPreAndPostImages: {enabled: true}",
                    },
                )
            self.images = enabled
        return enabled

    @store_errors
    async def load_resume_token(self, name: str) -> ResumeToken | None:
        found = await self.state[RESUME_TOKENS].find_one({"_id": name})
        return found["token"] if found else None

    @store_errors
    async def save_resume_token(
        self, name: str, token: ResumeToken | None, fence: Fence | None = None
    ) -> None:
        if fence is None:
            await self._save_token(name, token)
            return

        async def save(session) -> None:
            await self._check_fence(fence, session)
            await self._save_token(name, token, session=session)

        await self._in_transaction(save)

    async def _save_token(self, name: str, token: ResumeToken | None, session=None) -> None:
        if token is None:
            await self.state[RESUME_TOKENS].delete_one({"_id": name}, session=session)
        else:
            await self.state[RESUME_TOKENS].replace_one(
                {"_id": name}, {"_id": name, "token": dict(token)}, upsert=True, session=session
            )

    # -- leases ------------------------------------------------------------------------------
    @store_errors
    async def acquire_lease(
        self, name: str, holder: str, ttl_s: float, replacing: str | None = None
    ) -> Lease:
        """One atomic update measured by the server's clock (`$$NOW`), so that the hosts'
        clocks do not matter. Within one `$set` stage every expression reads the document as
        it was (manual, "Updates with Aggregation Pipeline"): the fence and `since` are decided
        from the old holder."""
        taken = {
            "$or": [
                {"$eq": [{"$type": "$holder"}, "missing"]},
                {"$eq": ["$holder", holder]},
                {"$lte": ["$expires", "$$NOW"]},
                {"$eq": ["$holder", replacing or holder]},  # a holder known to be dead
            ]
        }
        changed = {"$ne": ["$holder", holder]}
        pipeline = [
            {"$set": {"_taken": taken}},
            {
                "$set": {
                    "fence": {
                        "$cond": [
                            {"$and": ["$_taken", changed]},
                            {"$add": [{"$ifNull": ["$fence", 0]}, 1]},
                            "$fence",
                        ]
                    },
                    "since": {"$cond": [{"$and": ["$_taken", changed]}, "$$NOW", "$since"]},
                    "holder": {"$cond": ["$_taken", holder, "$holder"]},
                    "expires": {
                        "$cond": ["$_taken", {"$add": ["$$NOW", int(ttl_s * 1000)]}, "$expires"]
                    },
                    "now": "$$NOW",
                }
            },
            {"$unset": "_taken"},
        ]
        for attempt in (1, 2):
            try:
                doc = await self.state[LEASES].find_one_and_update(
                    {"_id": name}, pipeline, upsert=True, return_document=ReturnDocument.AFTER
                )
                break
            except DuplicateKeyError:  # two first takers upserted at once: read it again
                if attempt == 2:
                    raise
        self._clock_offset_ms = _ms(doc["now"]) - int(time.time() * 1000)
        return _lease(doc)

    @store_errors
    async def release_lease(self, name: str, holder: str) -> None:
        await self.state[LEASES].update_one(
            {"_id": name, "holder": holder}, [{"$set": {"expires": "$$NOW"}}]
        )

    @store_errors
    async def read_lease(self, name: str) -> Lease | None:
        doc = await self.state[LEASES].find_one({"_id": name})
        return _lease(doc) if doc is not None else None

    def now_ms(self) -> int:
        """This host's clock, corrected by how far it was from the server's at the last lease
        taken or renewed."""
        return int(time.time() * 1000) + self._clock_offset_ms

    async def _check_fence(self, fence: Fence | None, session) -> None:
        """Inside the caller's transaction, a write to the lease document: a takeover (which
        writes it too) and this transaction cannot both commit; a read alone would not
        conflict under snapshot isolation."""
        if fence is None:
            return
        result = await self.state[LEASES].update_one(
            {"_id": fence.lease, "fence": fence.number},
            {"$inc": {"fenced_writes": 1}},
            session=session,
        )
        if result.matched_count == 0:
            raise LeaseLost(f"lease {fence.lease!r} moved on from fence {fence.number}")

    async def _in_transaction(self, callback):
        """`callback(session)` in one transaction, retried by the driver on transient errors
        (driver, `with_transaction`) within the transaction timeout. `pymongo.timeout` bounds
        every operation and the retries, commit included (driver, client_session_shared.py),
        unlike a cancellation, which could leave a commit's outcome unknown and unretried.
        A commit whose outcome stays unknown is an error here, but its events are in the log
        and every instance delivers them from there (realtime/emitter.py)."""
        with pymongo.timeout(self._transaction_timeout_s):
            async with self.client.start_session() as session:  # a plain call (driver)
                return await session.with_transaction(callback, write_concern=LOG_WRITE_CONCERN)

    # -- event log ---------------------------------------------------------------------------
    @store_errors
    async def log_identity(self) -> str:
        try:
            await self.state[COUNTERS].update_one(
                {"_id": LOG_IDENTITY}, {"$setOnInsert": {"value": uuid.uuid4().hex}}, upsert=True
            )
        except DuplicateKeyError:  # two first instances at once: the other one made it
            pass
        found = await self.state[COUNTERS].find_one({"_id": LOG_IDENTITY})
        return found["value"]

    @store_errors
    async def append_events(
        self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        """One transaction: the known-source check, the ids, the inserts and the token.

        Every append increments the one counter document, so two appends at once write-conflict
        and the driver runs the later one again once the earlier committed (driver,
        `AsyncClientSession.with_transaction`: retried on "TransientTransactionError"). Ids
        therefore become visible in order: a replay that has read id 13 never finds 11 later.
        """
        events = list(events)
        for attempt in (1, 2):
            try:
                return await self._in_transaction(
                    lambda session: self._append(session, events, checkpoint)
                )
            except (DuplicateKeyError, BulkWriteError) as exc:
                # insert_many reports a duplicate as a BulkWriteError (driver, bulk_shared.py).
                # Only a duplicate source means "already logged" (by a writer outside these
                # transactions): read again. An id taken twice means the counter went back.
                if _index_of(exc) != {"source": 1} or attempt == 2:
                    raise StoreError(
                        f"the event log refused an append ({_index_of(exc)} taken): {exc}"
                    ) from exc
        raise AssertionError("unreachable")

    async def _append(
        self, session, events: list[NewEvent], checkpoint: Checkpoint | None
    ) -> list[StoredEvent | None]:
        # command errors leave this callback: the driver aborts, and retries what it may
        if checkpoint is not None:
            await self._check_fence(checkpoint.fence, session)
        log = self.state[EVENTS]
        known = {
            doc["source"]
            async for doc in log.find(
                {"source": {"$in": [e.source for e in events]}}, {"source": 1}, session=session
            )
        }
        fresh = list({e.source: e for e in events if e.source not in known}.values())
        stored: dict[str, StoredEvent] = {}
        if fresh:
            counter = await self.state[COUNTERS].find_one_and_update(
                {"_id": EVENT_SEQUENCE},
                {"$inc": {"seq": len(fresh)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            first = counter["seq"] - len(fresh) + 1
            now_ms = int(time.time() * 1000)
            created = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
            await log.insert_many(
                [
                    {
                        "_id": seq,
                        "source": event.source,
                        "name": event.name,
                        "payload": event.payload,
                        "rooms": list(event.rooms),
                        "created": created,
                    }
                    for seq, event in enumerate(fresh, start=first)
                ],
                session=session,
            )
            for seq, event in enumerate(fresh, start=first):
                stored[event.source] = StoredEvent(
                    seq, now_ms, event.name, event.payload, tuple(event.rooms)
                )
        if checkpoint is not None:
            await self._save_token(checkpoint.name, checkpoint.token, session=session)
        return [stored.get(e.source) for e in events]

    @store_errors
    async def find_event(self, source: str) -> StoredEvent | None:
        doc = await self.state[EVENTS].find_one({"source": source})
        return self._stored(doc) if doc is not None else None

    @store_errors
    async def room_events(
        self,
        room: str,
        after_sequence: int,
        limit: int,
        max_bytes: int | None = None,
        until: int | None = None,
    ) -> list[StoredEvent]:
        ids: dict[str, int] = {"$gt": after_sequence}
        if until is not None:
            ids["$lte"] = until
        cursor = (
            self.state[EVENTS].find({"rooms": room, "_id": ids}).sort("_id", ASCENDING).limit(limit)
        )
        found, weight = [], 0
        async for doc in cursor:
            found.append(self._stored(doc))
            weight += len(bson.encode(doc["payload"]))
            if max_bytes is not None and weight >= max_bytes:
                break
        await cursor.close()
        return found

    @store_errors
    async def newest_room_event(
        self, room: str, name: str, until: int | None = None
    ) -> StoredEvent | None:
        query: dict[str, Any] = {"rooms": room, "name": name}
        if until is not None:
            query["_id"] = {"$lte": until}
        doc = await self.state[EVENTS].find_one(query, sort=[("_id", DESCENDING)])
        return self._stored(doc) if doc is not None else None

    @store_errors
    async def events_after(self, sequence: int, limit: int) -> list[StoredEvent]:
        """Read with read concern "majority": an event found here (not heard of from its
        writer, who waited for a majority) is delivered only once a failover cannot take it
        back. A lagging majority snapshot only delays it: the caller reads again."""
        log = self.state.get_collection(EVENTS, read_concern=ReadConcern("majority"))
        cursor = log.find({"_id": {"$gt": sequence}}).sort("_id", ASCENDING)
        return [self._stored(doc) async for doc in cursor.limit(limit)]

    @store_errors
    async def event_bounds(self, room: str, until: int | None = None) -> EventBounds:
        oldest = await self.state[EVENTS].find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
        counter = await self.state[COUNTERS].find_one({"_id": EVENT_SEQUENCE})
        in_room: dict[str, Any] = {"rooms": room}
        if until is not None:
            in_room["_id"] = {"$lte": until}
        room_newest = await self.state[EVENTS].find_one(
            in_room, {"_id": 1}, sort=[("_id", DESCENDING)]
        )
        return EventBounds(
            oldest["_id"] if oldest else None,
            counter["seq"] if counter else 0,
            room_newest["_id"] if room_newest else None,
        )

    @staticmethod
    def _stored(doc: Mapping[str, Any]) -> StoredEvent:
        created_ms = int(doc["created"].timestamp() * 1000)
        return StoredEvent(doc["_id"], created_ms, doc["name"], doc["payload"], tuple(doc["rooms"]))

    # -- idempotency keys --------------------------------------------------------------------
    @store_errors
    async def claim_request(self, key: str, fingerprint: str, ttl_s: float) -> RequestClaim:
        now = dt.datetime.now(dt.UTC)
        fresh = {
            "fingerprint": fingerprint,
            "nonce": uuid.uuid4().hex,
            "response": None,
            "expires": now + dt.timedelta(seconds=ttl_s),
        }
        for _ in range(3):
            try:
                # replaces a record whose time has passed (the TTL monitor deletes expired
                # documents only once a minute: manual, "TTL Indexes"), inserts one where there
                # is none; a live one makes the upsert collide on `_id`
                doc = await self.state[IDEMPOTENCY_KEYS].find_one_and_update(
                    {"_id": key, "expires": {"$lte": now}},
                    {"$set": fresh},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = await self.state[IDEMPOTENCY_KEYS].find_one(
                    {"_id": key, "expires": {"$gt": now}}
                )
            if doc is not None:  # else it expired between the two calls: claim again
                return RequestClaim(doc["fingerprint"], doc.get("nonce", ""), doc.get("response"))
        raise StoreError(f"idempotency key {key!r} could not be claimed")

    @store_errors
    async def complete_request(self, key: str, nonce: str, response: dict[str, Any]) -> None:
        await self.state[IDEMPOTENCY_KEYS].update_one(
            {"_id": key, "nonce": nonce}, {"$set": {"response": response}}
        )

    # -- revocations -------------------------------------------------------------------------
    @store_errors
    async def revoke(self, revocation: Revocation) -> None:
        # majority, as the log: a failover must not bring a revoked token back
        revocations = self.state.get_collection(REVOCATIONS, write_concern=LOG_WRITE_CONCERN)
        key = f"{revocation.kind}:{revocation.value}"
        until = dt.datetime.fromtimestamp(revocation.until_ms / 1000, tz=dt.UTC)
        if until <= dt.datetime.now(dt.UTC):  # a lift: nothing to keep
            await revocations.delete_one({"_id": key})
            return
        await revocations.update_one(
            {"_id": key},
            {"$set": {"kind": revocation.kind, "value": revocation.value, "until": until}},
            upsert=True,
        )

    @store_errors
    async def revocations(self) -> list[Revocation]:
        # the TTL monitor deletes passed ones only once a minute (manual, "TTL Indexes")
        found = self.state[REVOCATIONS].find({"until": {"$gt": dt.datetime.now(dt.UTC)}})
        return [Revocation(doc["kind"], doc["value"], _ms(doc["until"])) async for doc in found]


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _lease(doc: Mapping[str, Any]) -> Lease:
    return Lease(doc["_id"], doc["holder"], doc["fence"], _ms(doc["since"]), _ms(doc["expires"]))


def _index_of(exc: DuplicateKeyError | BulkWriteError) -> dict[str, Any] | None:
    """The key pattern a duplicate-key error names (server 4.2+ reports `keyPattern`); for a
    bulk write, its first write error's, if that is a duplicate key."""
    details = exc.details or {}
    if isinstance(exc, BulkWriteError):
        errors = details.get("writeErrors") or [{}]
        details = errors[0]
        if details.get("code") != DUPLICATE_KEY:
            return None
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping):
        return dict(pattern)
    match = re.search(r"index: (\w+)", str(details.get("errmsg", exc)))
    return {"source": 1} if match and match.group(1) == "source_1" else None


class MongoChangeStream(ChangeStream):
    def __init__(self, stream):
        self._stream = stream

    @property
    def resume_token(self) -> ResumeToken | None:
        return self._stream.resume_token

    @store_errors
    async def try_next(self) -> Mapping[str, Any] | None:
        return await self._stream.try_next()

    @store_errors
    async def close(self) -> None:
        await self._stream.close()
