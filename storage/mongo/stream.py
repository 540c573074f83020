"""Change streams: `watch` opens one on the watched database (with pre- and post-images when
every watched collection records them), `MongoChangeStream` reads it, and the resume tokens
saved under the state database are where a consumer starts again.

No event can stall the stream. Events arrive undecoded (`RawBSONDocument`, as the driver reads
them itself when a type registry decodes: driver, change_stream_shared.py): the driver reads
only each event's top level, for its `_id`, and `MongoChangeStream` decodes the rest. Dates
beyond Python's range read as `DatetimeMS` (the client's `datetime_conversion`); an event that
still cannot be decoded (text that is not UTF-8) has already moved the driver's token past it,
and is handed on as an `UNREADABLE` change of its collection, which the feed skips with a
resync. An event over 16 MB is split by the server from 6.0.9 and 7.0
(`$changeStreamSplitLargeEvent`) and joined again here; an older server refuses it with
BSONObjectTooLarge, whose message names the event's token (its first element): the stream
starts again after that token, and the event is handed on as `UNREADABLE`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from storage.base import ChangeHistoryLost, ChangeStream, Fence, ResumeToken
from storage.mongo.errors import BSON_OBJECT_TOO_LARGE, store_errors, unreadable_token
from storage.mongo.state import RESUME_TOKENS

# named for the package, not the module: its log lines say `storage.mongo` whichever logs
logger = logging.getLogger("storage.mongo")

AWAIT_TIME_MS = 500
# the operation of a change that can never be read: realtime/changes/feed.py (UNREADABLE) skips
# it and resyncs its collection's rooms
UNREADABLE = "unreadable"
SPLIT_LARGE_EVENTS_FROM = (6, 0, 9)  # manual, $changeStreamSplitLargeEvent: 7.0 and 6.0.9
SPLIT_STAGE = {"$changeStreamSplitLargeEvent": {}}  # the pipeline's last stage (manual)
# an unknown stage (40324), or one the feature compatibility version holds back (224)
STAGE_UNAVAILABLE = frozenset({40324, 224})
# "BSONObj size: ... is invalid. ... First element: _id: { _data: "82..." }": an event's first
# element is its token (a token with type bits is not read from a message)
_TOO_LARGE_TOKEN = re.compile(r'First element: _id: \{ _data: "([0-9A-Fa-f]+)" \}')
# events as the watch hands them on: the client's options (dates, UUIDs) in plain dicts
DECODED = CodecOptions(
    tz_aware=True,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)

OpenAfter = Callable[[ResumeToken | None], Awaitable[Any]]


class ChangeStreamMixin:
    """MongoStore's change stream and resume token methods (it provides `db`, `state`,
    `images_supported`, `split_events`, `_in_transaction`, and `_check_fence` from the
    leases)."""

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

        async def open_after(token: ResumeToken | None):
            return await self._open_stream(pipeline, options, token)

        try:
            stream = await open_after(resume_after)
        except OperationFailure as exc:
            if resume_after is not None and unreadable_token(exc):
                raise ChangeHistoryLost(
                    f"change stream cannot start after its token (code {exc.code}): {exc}"
                ) from exc
            skipped = _too_large_token(exc)
            if skipped is None:
                raise
            # the first batch held an event too large to return: start after it
            return MongoChangeStream(None, self.db.codec_options, open_after, skipped, resume_after)
        return MongoChangeStream(stream, self.db.codec_options, open_after)

    async def _open_stream(
        self, pipeline: list, options: dict[str, Any], start_after: ResumeToken | None
    ):
        """The driver's stream (`watch` runs the aggregate), of undecoded events, ending with
        the split stage where the server has it."""
        watched = self.db
        raw = watched.with_options(
            codec_options=watched.codec_options.with_options(document_class=RawBSONDocument)
        )
        if start_after is not None:
            options = {**options, "start_after": start_after}
        if self.split_events:
            try:
                return await raw.watch([*pipeline, SPLIT_STAGE], **options)
            except OperationFailure as exc:
                if exc.code not in STAGE_UNAVAILABLE:
                    raise
                # the version has it, the feature compatibility version may not
                logger.warning(
                    "change events over 16 MB cannot be split: each is skipped with a resync",
                    extra={"error": str(exc)[:300]},
                )
                self.split_events = False
        return await raw.watch(pipeline, **options)

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
    """Reads the driver's stream of undecoded events: decodes each, joins a split event's
    fragments, and hands on an event that cannot be read as an `UNREADABLE` change.
    `open_after(token)` opens the driver's stream again after an event too large to read;
    `skipped` is such an event's token when the first batch already held it (`resumed_from`:
    the token the stream was opened after)."""

    def __init__(
        self,
        stream,
        codec_options: CodecOptions = DECODED,
        open_after: OpenAfter | None = None,
        skipped: ResumeToken | None = None,
        resumed_from: ResumeToken | None = None,
    ):
        self._stream = stream
        self._codec_options = codec_options.with_options(document_class=dict)
        self._open_after = open_after
        self._fragments: list[RawBSONDocument] = []
        self._before_fragments: ResumeToken | None = None
        self._held: RawBSONDocument | None = None  # read while fragments were left incomplete
        # an event too large to read: handed on as UNREADABLE, then the stream starts after it
        self._skipped = skipped
        self._skip_told = False
        self._resumed_from = resumed_from

    @property
    def resume_token(self) -> ResumeToken | None:
        if self._skipped is not None:  # past the event only once it was handed on
            return self._skipped if self._skip_told else self._resumed_from
        if self._fragments:  # never in the middle of a split event
            return self._before_fragments
        return _plain(self._stream.resume_token)

    @store_errors
    async def try_next(self) -> Mapping[str, Any] | None:
        if self._skipped is not None:
            if not self._skip_told:
                self._skip_told = True
                return {"_id": self._skipped, "operationType": UNREADABLE}
            await self._start_after_skipped()
        while True:
            before = self._stream.resume_token
            if self._held is not None:
                raw, self._held = self._held, None
            else:
                try:
                    raw = await self._stream.try_next()
                except OperationFailure as exc:
                    return self._too_large(exc)
                if raw is None:
                    return None
            split = raw.get("splitEvent")
            if split is None and self._fragments:  # (a split event's fragments are consecutive)
                self._held = raw
                return self._decoded(self._take_fragments())
            if split is None:
                return self._decoded([raw])
            if not self._fragments:
                self._before_fragments = _plain(before)
            self._fragments.append(raw)
            if split["fragment"] >= split["of"]:
                return self._decoded(self._take_fragments())

    def _take_fragments(self) -> list[RawBSONDocument]:
        fragments, self._fragments = self._fragments, []
        return fragments

    def _too_large(self, exc: OperationFailure) -> dict[str, Any]:
        """An event over 16 MB that the server would not split: handed on as UNREADABLE with
        the token its error names; the stream starts again after it."""
        skipped = _too_large_token(exc) if self._open_after is not None else None
        if skipped is None:
            raise exc
        self._skipped, self._skip_told, self._fragments = skipped, True, []
        logger.warning(
            "change event too large to read: skipped",
            extra={"token": skipped["_data"], "error": str(exc)[:300]},
        )
        return {"_id": skipped, "operationType": UNREADABLE}

    async def _start_after_skipped(self) -> None:
        assert self._open_after is not None and self._skipped is not None
        old, self._stream = self._stream, await self._open_after(self._skipped)
        self._skipped = None
        if old is not None:
            with contextlib.suppress(Exception):  # the driver closed it on the error
                await old.close()

    def _decoded(self, parts: list[RawBSONDocument]) -> dict[str, Any]:
        """One event from its parts (one, or a split event's fragments in order), or an
        `UNREADABLE` change with the last part's token when it cannot be read."""
        last = parts[-1]
        try:
            split = last.get("splitEvent")
            numbers = [part["splitEvent"]["fragment"] for part in parts] if split else []
            if split and numbers != list(range(1, split["of"] + 1)):
                raise ValueError(f"fragments {numbers} of {split['of']}: not the whole event")
            event: dict[str, Any] = {}
            for part in parts:  # the fragments split the event's top-level fields (manual)
                event.update(bson.decode(part.raw, self._codec_options))
        except (BSONError, ValueError, OverflowError, KeyError) as exc:
            unreadable: dict[str, Any] = {"_id": _plain(last["_id"]), "operationType": UNREADABLE}
            namespace = next((part["ns"] for part in parts if "ns" in part), None)
            with contextlib.suppress(BSONError, ValueError):
                if namespace is not None:  # (the first fragment holds it)
                    unreadable["ns"] = _plain(namespace)
            logger.warning(
                "change event unreadable: skipped",
                extra={
                    "collection": (unreadable.get("ns") or {}).get("coll"),
                    "token": unreadable["_id"].get("_data"),
                    "error": str(exc)[:300],
                },
            )
            return unreadable
        event.pop("splitEvent", None)
        return event

    @store_errors
    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()


def _plain(document: Any) -> dict[str, Any] | None:
    """A token (or namespace) as a plain dict, whether the driver holds it raw or not."""
    if document is None:
        return None
    if isinstance(document, RawBSONDocument):
        return bson.decode(document.raw)
    return dict(document)


def _too_large_token(exc: OperationFailure) -> ResumeToken | None:
    """The token of the event BSONObjectTooLarge refused, where its message names it."""
    if exc.code != BSON_OBJECT_TOO_LARGE:
        return None
    message = str((exc.details or {}).get("errmsg") or exc)
    found = _TOO_LARGE_TOKEN.search(message)
    return {"_data": found.group(1)} if found else None
