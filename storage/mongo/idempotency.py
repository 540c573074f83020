"""Idempotency keys: a request's claim (its fingerprint, and the answer once given), so that
a retried broadcast is answered again instead of emitted twice."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from storage.base import RequestClaim, StoreError
from storage.mongo.errors import store_errors
from storage.mongo.state import IDEMPOTENCY_KEYS


class IdempotencyMixin:
    """MongoStore's idempotency key methods (it provides `state`)."""

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
