"""Change streams: `watch` opens one on the watched database (with pre- and post-images when
every watched collection records them), `MongoChangeStream` reads it, and the resume tokens
saved under the state database are where a consumer starts again."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.errors import OperationFailure

from storage.base import ChangeHistoryLost, ChangeStream, Fence, ResumeToken
from storage.mongo.errors import store_errors, unreadable_token
from storage.mongo.state import RESUME_TOKENS

# named for the package, not the module: its log lines say `storage.mongo` whichever logs
logger = logging.getLogger("storage.mongo")

AWAIT_TIME_MS = 500


class ChangeStreamMixin:
    """MongoStore's change stream and resume token methods (it provides `db`, `state`,
    `images_supported`, `_in_transaction`, and `_check_fence` from the leases)."""

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
            if resume_after is not None and unreadable_token(exc):
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
