"""The event log: appends (ids from one counter, in one transaction with the checkpoint's
token), and the reads replay and delivery make (by source, by room, after an id, bounds)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import bson
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.read_concern import ReadConcern

from storage.base import Checkpoint, EventBounds, NewEvent, StoredEvent, StoreError
from storage.mongo.errors import _index_of, store_errors
from storage.mongo.state import COUNTERS, EVENT_SEQUENCE, EVENTS, LOG_IDENTITY


class EventLogMixin:
    """MongoStore's event log methods (it provides `state`, `_in_transaction`, `_check_fence`
    and `_save_token`)."""

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
