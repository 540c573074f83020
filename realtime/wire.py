"""The wire format: how ids, times, documents and events look to clients. One home, so that
every event, ack and HTTP answer spells them the same way."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from bson.binary import OLD_UUID_SUBTYPE, UUID_SUBTYPE, Binary
from bson.datetime_ms import DatetimeMS

from storage.base import StoredEvent

EVENT_ID_DIGITS = 16  # zero-padded, so that ids sort as strings in emission order
_EVENT_ID = re.compile(rf"[0-9]{{1,{EVENT_ID_DIGITS}}}")  # any sequence the stores can hold
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_GREGORIAN_CYCLE_MS = 146_097 * 86_400_000  # the calendar repeats every 400 years
_JS_DATE_LIMIT_MS = 8_640_000_000_000_000  # a JavaScript Date's range either side of 1970


def iso_timestamp(unix_s: float) -> str:
    """ISO 8601 UTC with milliseconds, the one time format of the protocol."""
    moment = dt.datetime.fromtimestamp(unix_s, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_id(sequence: int) -> str:
    """The `eventId` of the event log's entry `sequence`."""
    return f"{sequence:0{EVENT_ID_DIGITS}d}"


def event_sequence(text: Any) -> int:
    """The sequence behind an `eventId`: ASCII digits, at most `EVENT_ID_DIGITS` of them (so
    within what SQLite and MongoDB integers hold); ValueError otherwise."""
    if not (isinstance(text, str) and _EVENT_ID.fullmatch(text)):
        raise ValueError(f"not an event id: {str(text)[:40]!r}")
    return int(text)


def id_string(value: Any) -> str | None:
    """Ids travel as strings: ObjectIds as hex, numbers as digits, UUIDs in their canonical
    form; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping) and isinstance(value.get("$oid"), str):
        return value["$oid"]
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, uuid.UUID)):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (UUID_SUBTYPE, OLD_UUID_SUBTYPE):
        return str(uuid.UUID(bytes=bytes(value)))  # a UUID read without a representation set
    return None


def time_string(value: Any) -> str | None:
    """Times travel as ISO 8601 UTC strings; dates from MongoDB become `...000Z`, those beyond
    Python's years 1 to 9999 (read as `DatetimeMS`) with an expanded year."""
    if isinstance(value, DatetimeMS):
        return _any_year_timestamp(int(value))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        # counted exactly (a float of seconds can round a millisecond down)
        return _any_year_timestamp((value - _EPOCH) // dt.timedelta(milliseconds=1))
    if isinstance(value, str) and value:
        return value
    return None


def _any_year_timestamp(ms: int) -> str | None:
    """A MongoDB date (any 64-bit count of milliseconds) as ISO 8601, the year expanded to six
    digits and signed outside 0000 to 9999 (`+010000-01-01T00:00:00.000Z`), as JavaScript's
    `Date` reads it; None beyond what a `Date` can hold. Shifted by whole 400-year cycles into
    Python's range, so the calendar is Python's."""
    if abs(ms) > _JS_DATE_LIMIT_MS:
        return None
    cycles, within = divmod(ms, _GREGORIAN_CYCLE_MS)
    moment = _EPOCH + dt.timedelta(milliseconds=within)
    year = moment.year + 400 * cycles
    digits = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+07d}"
    return digits + moment.strftime("-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def json_safe(value: Any) -> Any:
    """Document values as JSON can carry them: ids as strings, dates as ISO strings."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, (dt.datetime, DatetimeMS)):
        return time_string(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def without_non_finite(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """`value` with NaN and infinite numbers replaced by None (JSON has no such numbers, and
    socket.io-client drops a connection that sends one), and the paths of those replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path or "."]
    if isinstance(value, Mapping):
        cleaned, replaced = {}, []
        for key, item in value.items():
            cleaned[key], found = without_non_finite(item, f"{path}.{key}" if path else str(key))
            replaced.extend(found)
        return (cleaned if replaced else value), replaced
    if isinstance(value, (list, tuple)):
        items = [without_non_finite(item, f"{path}[{n}]") for n, item in enumerate(value)]
        replaced = [p for _, found in items for p in found]
        return ([item for item, _ in items] if replaced else value), replaced
    return value, []


def wire_payload(stored: StoredEvent) -> dict[str, Any]:
    """A data event as clients receive it: its fields, its `eventId` and its `timestamp`."""
    return {
        **stored.payload,
        "eventId": event_id(stored.sequence),
        "timestamp": iso_timestamp(stored.timestamp_ms / 1000),
    }
