"""Driver errors in the store's terms: `store_errors` wraps every MongoStore method so that
whatever PyMongo or BSON raises leaves as a `StoreError` (`translate_error` decides which), the
server error codes the adapter reads (`unreadable_token`: a token the server cannot parse), the
roles a refusal names, and `_index_of`, which says what a duplicate key hit."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from bson.errors import BSONError
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from storage.base import ChangeHistoryLost, DocumentRejected, StoreError

# manual, "Change Events" / error codes: a stream that can never resume from its token
CHANGE_STREAM_HISTORY_LOST = 286
INVALID_RESUME_TOKEN = 260
CHANGE_STREAM_FATAL_ERROR = 280
UNUSABLE_TOKEN_CODES = frozenset(
    {CHANGE_STREAM_HISTORY_LOST, INVALID_RESUME_TOKEN, CHANGE_STREAM_FATAL_ERROR}
)
# What the server answers when asked to start a stream from a token it cannot read, not 286.
# Each is raised while the server parses the client's token (server source,
# src/mongo/db/pipeline/resume_token.cpp, `ResumeToken(const Document&)` and `getData()`):
# FailedToParse 9 ("not a valid hex string"), 40647 (_data missing or not a string), 40648
# (_typeBits of the wrong type), 40649 (empty), 50796 / 50854 / 50795 (version missing, not an
# int, unknown), 51055 / 51056 / 51057 (tokenType missing, not an int, unknown), 50793 / 50855 /
# 50794 (txnOpIndex missing, not an int, negative), 50872 / 50870 (fromInvalidate missing, not a
# bool), 6189500 (v2 without a UUID), InvalidUUID 207 (`UUID::parse`), 6189504 (a high water mark
# with an event identifier), 6189501 / 6189503 (event identifier missing, not an object),
# 7182501 (bad fragmentNum), 40646 (oversized); and BadValue 2. The token's KeyString is decoded
# by `KeyString::toBsonSafe`, whose every check is `keyStringAssert` with a message that starts
# "KeyString format error" (key_string.cpp; 50811 unknown type, 50816, 50817, 50818, 50819, ...):
# read by that message, since the codes differ across versions. Not here: 6189502, 6189505,
# 50788 and 7182504, which the server raises when it builds a token, not when it reads one.
# Only these make a token unusable: every other failure (timeouts, interruptions, elections,
# stale config) is retried from the same token, since wrongly calling history lost drops the
# token and skips the changes after it for good.
UNREADABLE_TOKEN_CODES = frozenset(
    {9, 2, 207, 40646, 40647, 40648, 40649, 50793, 50794, 50795, 50796, 50811, 50854, 50855}
    | {50870, 50872, 51055, 51056, 51057, 6189500, 6189501, 6189503, 6189504, 7182501}
)
KEYSTRING_FORMAT_ERROR = "KeyString format error"
BSON_OBJECT_TOO_LARGE = 10334  # a change event over 16 MB (manual, $changeStreamSplitLargeEvent)
UNAUTHORIZED = 13
# what a refusal of authorization names (docs/mongodb.md, "Access"); collMod is dbAdmin's, not
# readWrite's (manual, "Built-In Roles")
ROLES = (
    "The gateway's MongoDB user needs read on the watched database (readWrite for the store"
    " commands and --demo), readWrite on the state database, and dbAdmin there to apply a"
    " changed EVENT_RETENTION (collMod)"
)
INDEX_OPTIONS_CONFLICT = 85  # manual, createIndexes: same keys, other options
NAMESPACE_EXISTS = 48
DUPLICATE_KEY = 11000


def unreadable_token(exc: OperationFailure) -> bool:
    """Whether the server refused to start a stream because it cannot read the token given."""
    return exc.code in UNREADABLE_TOKEN_CODES or KEYSTRING_FORMAT_ERROR in str(exc)


def translate_error(exc: Exception) -> StoreError:
    """What the driver raises in the store's terms: history lost (never retried), a document
    MongoDB cannot hold, or transient."""
    if isinstance(exc, OperationFailure) and exc.code in UNUSABLE_TOKEN_CODES:
        return ChangeHistoryLost(f"change stream cannot resume (code {exc.code}): {exc}")
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        return StoreError(f"mongodb refused an operation: {exc} ({ROLES})")
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
