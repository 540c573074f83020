"""Leases and fences: who holds a named lease (the watcher's), measured by the server's clock,
and the fence check that keeps a holder whose lease moved on from writing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from storage.base import Fence, Lease, LeaseLost
from storage.mongo.errors import store_errors
from storage.mongo.state import LEASES, _ms


class LeasesMixin:
    """MongoStore's lease methods (it provides `state` and `_clock_offset_ms`)."""

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


def _lease(doc: Mapping[str, Any]) -> Lease:
    return Lease(doc["_id"], doc["holder"], doc["fence"], _ms(doc["since"]), _ms(doc["expires"]))
