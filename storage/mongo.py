"""The MongoDB adapter: thin on purpose. It only translates the `Store` interface into
PyMongo's native async API (`AsyncMongoClient`, Motor's successor); resume, retry, mapping and
replay logic live above it and are shared with the embedded store."""

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
from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from storage.base import (
    ChangeHistoryLost,
    ChangeStream,
    Checkpoint,
    EventBounds,
    NewEvent,
    RequestClaim,
    ResumeToken,
    Store,
    StoredEvent,
    StoreError,
)

logger = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 5_000
AWAIT_TIME_MS = 500
# server error codes after which a change stream cannot be resumed from its token
CHANGE_STREAM_HISTORY_LOST = 286
INVALID_RESUME_TOKEN = 260
CHANGE_STREAM_FATAL_ERROR = 280
UNUSABLE_TOKEN_CODES = frozenset(
    {CHANGE_STREAM_HISTORY_LOST, INVALID_RESUME_TOKEN, CHANGE_STREAM_FATAL_ERROR}
)
EVENTS = "realtime_events"
COUNTERS = "realtime_counters"
RESUME_TOKENS = "realtime_resume_tokens"
IDEMPOTENCY_KEYS = "realtime_idempotency_keys"


def translate_error(exc: PyMongoError) -> StoreError:
    """PyMongo's errors in the store's terms: history lost (never retried) or transient."""
    if isinstance(exc, OperationFailure) and exc.code in UNUSABLE_TOKEN_CODES:
        return ChangeHistoryLost(f"change stream cannot resume (code {exc.code}): {exc}")
    return StoreError(f"mongodb: {exc}")


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def store_errors(method: Method) -> Method:
    """The one translation point: what the driver raises leaves as `StoreError`, the
    contract of `storage.base`."""

    @functools.wraps(method)
    async def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except PyMongoError as exc:
            raise translate_error(exc) from exc

    return translated  # type: ignore[return-value]


_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def id_filter(doc_id: str) -> dict[str, Any]:
    """Ids travel as strings; ObjectId hex is looked up as either form."""
    if _OBJECT_ID.fullmatch(doc_id):
        return {"_id": {"$in": [ObjectId(doc_id), doc_id]}}
    return {"_id": doc_id}


class MongoStore(Store):
    name = "mongodb"

    def __init__(self, url: str, database: str, event_retention_s: float = 7 * 86400):
        self._url = url
        self._database_name = database
        self._event_retention_s = event_retention_s
        self._client: AsyncMongoClient | None = None
        self.pre_images = False

    def describe(self) -> str:
        host = self._url.split("@")[-1].split("/")[0]  # never the credentials
        return f"mongodb://{host}/{self._database_name}"

    @store_errors
    async def open(self) -> None:
        options: dict[str, Any] = {"tz_aware": True}
        if "serverselectiontimeoutms" not in self._url.lower():  # the URL's own value wins
            options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        self._client = AsyncMongoClient(self._url, **options)
        await self.ping()
        info = await self.db.command("buildInfo")
        # pre-images (`fullDocumentBeforeChange`) exist from MongoDB 6.0 on
        self.pre_images = info.get("versionArray", [0])[0] >= 6
        events = self.db[EVENTS]
        await events.create_index("source", unique=True)
        await events.create_index([("rooms", ASCENDING), ("_id", ASCENDING)])
        await events.create_index("created", expireAfterSeconds=int(self._event_retention_s))
        await self.db[IDEMPOTENCY_KEYS].create_index("expires", expireAfterSeconds=0)

    @store_errors
    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def db(self):
        if self._client is None:
            raise StoreError("the store is not open")
        return self._client[self._database_name]

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
        pipeline = [
            {
                "$match": {
                    "$or": [
                        {"ns.coll": {"$in": list(collections)}},
                        {"operationType": {"$in": ["invalidate", "dropDatabase"]}},
                    ]
                }
            }
        ]
        options: dict[str, Any] = {
            "full_document": "updateLookup",
            "max_await_time_ms": AWAIT_TIME_MS,
        }
        if self.pre_images:
            options["full_document_before_change"] = "whenAvailable"
        if resume_after is not None:
            options["start_after"] = resume_after
        return MongoChangeStream(await self.db.watch(pipeline, **options))

    @store_errors
    async def load_resume_token(self, name: str) -> ResumeToken | None:
        found = await self.db[RESUME_TOKENS].find_one({"_id": name})
        return found["token"] if found else None

    @store_errors
    async def save_resume_token(self, name: str, token: ResumeToken | None) -> None:
        if token is None:
            await self.db[RESUME_TOKENS].delete_one({"_id": name})
        else:
            await self.db[RESUME_TOKENS].replace_one(
                {"_id": name}, {"_id": name, "token": dict(token)}, upsert=True
            )

    # -- event log ---------------------------------------------------------------------------
    @store_errors
    async def append_events(
        self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        stored = await self._append(events)
        if checkpoint is not None:
            await self.save_resume_token(checkpoint.name, checkpoint.token)
        return stored

    async def _append(self, events: Sequence[NewEvent]) -> list[StoredEvent | None]:
        known = {
            doc["source"]
            async for doc in self.db[EVENTS].find(
                {"source": {"$in": [e.source for e in events]}}, {"source": 1}
            )
        }
        fresh = [e for e in events if e.source not in known]
        if not fresh:
            return [None] * len(events)
        counter = await self.db[COUNTERS].find_one_and_update(
            {"_id": "events"},
            {"$inc": {"seq": len(fresh)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        first = counter["seq"] - len(fresh) + 1
        now_ms = int(time.time() * 1000)
        created = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
        stored: dict[str, StoredEvent | None] = {}
        for seq, event in enumerate(fresh, start=first):
            try:
                await self.db[EVENTS].insert_one(
                    {
                        "_id": seq,
                        "source": event.source,
                        "name": event.name,
                        "payload": event.payload,
                        "rooms": list(event.rooms),
                        "created": created,
                    }
                )
                stored[event.source] = StoredEvent(
                    seq, now_ms, event.name, event.payload, tuple(event.rooms)
                )
            except DuplicateKeyError:  # another instance logged it first
                stored[event.source] = None
        return [stored.get(e.source) for e in events]

    @store_errors
    async def find_event(self, source: str) -> StoredEvent | None:
        doc = await self.db[EVENTS].find_one({"source": source})
        return self._stored(doc) if doc is not None else None

    @store_errors
    async def room_events(
        self, room: str, after_sequence: int, limit: int, max_bytes: int | None = None
    ) -> list[StoredEvent]:
        cursor = (
            self.db[EVENTS]
            .find({"rooms": room, "_id": {"$gt": after_sequence}})
            .sort("_id", ASCENDING)
            .limit(limit)
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
    async def event_bounds(self, room: str) -> EventBounds:
        oldest = await self.db[EVENTS].find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
        counter = await self.db[COUNTERS].find_one({"_id": "events"})
        room_newest = await self.db[EVENTS].find_one(
            {"rooms": room}, {"_id": 1}, sort=[("_id", -1)]
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
        try:
            # replaces a record whose time has passed (the TTL monitor may not have deleted it
            # yet), inserts one where there is none; a live one makes the upsert collide
            doc = await self.db[IDEMPOTENCY_KEYS].find_one_and_update(
                {"_id": key, "expires": {"$lte": now}},
                {"$set": fresh},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            doc = await self.db[IDEMPOTENCY_KEYS].find_one({"_id": key})
            if doc is None:  # expired and deleted between the two calls: claim again
                return await self.claim_request(key, fingerprint, ttl_s)
        return RequestClaim(doc["fingerprint"], doc.get("nonce", ""), doc.get("response"))

    @store_errors
    async def complete_request(self, key: str, nonce: str, response: dict[str, Any]) -> None:
        await self.db[IDEMPOTENCY_KEYS].update_one(
            {"_id": key, "nonce": nonce}, {"$set": {"response": response}}
        )


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
