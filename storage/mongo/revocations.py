"""Revocations: tokens and users cut off until a time, kept (with write concern "majority") so
that every instance, and a restarted one, refuses them."""

from __future__ import annotations

import datetime as dt

from storage.base import Revocation
from storage.mongo.errors import store_errors
from storage.mongo.state import LOG_WRITE_CONCERN, REVOCATIONS, _ms


class RevocationsMixin:
    """MongoStore's revocation methods (it provides `state`)."""

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
