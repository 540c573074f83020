"""Event names and the schemas of what clients and services send."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from realtime import rooms
from realtime.errors import GatewayError
from realtime.wire import event_sequence

# server -> client, control (no eventId, never replayed)
AUTH_SUCCESS = "auth_success"
AUTH_ERROR = "auth_error"
AUTH_EXPIRING = "auth_expiring"
ROOMS_REVOKED = "rooms_revoked"
ERROR = "error"
RESYNC = "resync"
CONTROL_EVENTS = frozenset({AUTH_SUCCESS, AUTH_ERROR, AUTH_EXPIRING, ROOMS_REVOKED, ERROR, RESYNC})

# server -> client, data events driven by changes
RESERVATION_UPDATE = "reservation_update"
PAYMENT_UPDATE = "payment_update"
AVAILABILITY_UPDATE = "availability_update"
CHANGE_EVENTS = frozenset({RESERVATION_UPDATE, PAYMENT_UPDATE, AVAILABILITY_UPDATE})

# server -> client, data events only services send (POST /broadcast)
BROADCAST_EVENTS = frozenset(
    {"notification", "admin_notification", "payout_update", "settings_update", "user_activity"}
)

# client -> server
AUTHENTICATE = "authenticate"
JOIN_ROOM = "join_room"
LEAVE_ROOM = "leave_room"
CLIENT_EVENTS = frozenset({AUTHENTICATE, JOIN_ROOM, LEAVE_ROOM})

_EVENT_ID = fields.String(allow_none=True, validate=validate.Length(max=64))


class _Lenient(Schema):
    # Frontends send extra fields (the seeds send `userId` with every join): ignore them.
    class Meta:
        unknown = EXCLUDE


class HandshakeAuthSchema(_Lenient):
    token = fields.String(allow_none=True)
    lastEventId = _EVENT_ID


class AuthenticateSchema(_Lenient):
    token = fields.String(allow_none=True)


class JoinRoomSchema(_Lenient):
    roomId = fields.String(required=True, validate=validate.Length(min=1, max=160))
    lastEventId = _EVENT_ID


class LeaveRoomSchema(_Lenient):
    roomId = fields.String(required=True, validate=validate.Length(min=1, max=160))


def last_event_sequence(last_event_id: str) -> int:
    """The sequence behind a client's `lastEventId`, or `invalid_payload`."""
    try:
        return event_sequence(last_event_id)
    except ValueError:
        raise GatewayError(
            "invalid_payload",
            "lastEventId is not an event id of this gateway",
            details={"lastEventId": ["not an event id"]},
        ) from None


def load(schema: Schema, payload: Any, unknown_fields: str = "ignore") -> dict[str, Any]:
    """The validated payload, or `GatewayError("invalid_payload")` with the field errors."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise GatewayError(
            "invalid_payload",
            "the payload must be an object",
            details={"_schema": [f"got {type(payload).__name__}"]},
        )
    accepted = _plain_strings(schema).accept(payload, unknown_fields == "refuse")
    if accepted is not None:
        return accepted
    try:
        return schema.load(payload, unknown=RAISE if unknown_fields == "refuse" else EXCLUDE)
    except ValidationError as exc:
        raise GatewayError(
            "invalid_payload", "the payload has invalid fields", details=exc.normalized_messages()
        ) from None


class _PlainStrings:
    """What a schema of string fields (required or not, None allowed or not, bounded by
    `Length`) returns for a payload it surely accepts, decided in a fraction of marshmallow's
    time (client events are small and many: `join_room` took a tenth of an ack's cost). Any
    other payload, and every schema with more than such fields, marshmallow decides: `accept`
    answers None, never an error."""

    def __init__(self, schema: Schema):
        # (name, required, allow_none, shortest, longest); None: a schema this cannot read
        self.rules: list[tuple[str, bool, bool, int, float]] | None = []
        if schema._hooks and any(schema._hooks.values()):
            self.rules = None
            return
        for name, field in schema.fields.items():
            lengths = [v for v in field.validators if type(v) is validate.Length]
            if (
                type(field) is not fields.String
                or field.data_key not in (None, name)
                or field.attribute not in (None, name)
                or len(lengths) != len(field.validators)
                or any(v.equal is not None for v in lengths)
            ):
                self.rules = None
                return
            shortest = max([v.min for v in lengths if v.min is not None], default=0)
            longest = min([v.max for v in lengths if v.max is not None], default=float("inf"))
            self.rules.append((name, field.required, field.allow_none, shortest, longest))

    def accept(self, payload: dict[str, Any], refuse_unknown: bool) -> dict[str, Any] | None:
        if self.rules is None:
            return None
        accepted: dict[str, Any] = {}
        for name, required, allow_none, shortest, longest in self.rules:
            if name not in payload:
                if required:
                    return None
                continue
            value = payload[name]
            if value is None:
                if not allow_none:
                    return None
            elif type(value) is not str or not shortest <= len(value) <= longest:
                return None
            accepted[name] = value
        if refuse_unknown and len(accepted) != len(payload):
            return None
        return accepted


def _plain_strings(schema: Schema) -> _PlainStrings:
    # kept on the schema (a weak mapping's lookup was a tenth of `load`'s cost): each schema
    # is read once, and its reader goes with it
    reader = schema.__dict__.get("_plain_strings")
    if reader is None:
        reader = schema.__dict__["_plain_strings"] = _PlainStrings(schema)
    return reader


def _user_id(value: str) -> None:
    if not rooms.is_room_key(value):
        raise ValidationError("not a valid user id")


MAX_TARGETS = 1000


MAX_DATA_DEPTH = 32  # nesting of a broadcast's data: far below what encoders and clients refuse


def _shallow(value: Any) -> None:
    """Refuse data nested deeper than `MAX_DATA_DEPTH`: accepted deeper, an event could fail
    to encode when it is replayed from deeper in the stack, long after it was logged."""
    level, layer = 0, [value]
    while layer:
        level += 1
        if level > MAX_DATA_DEPTH:
            raise ValidationError(f"nested deeper than {MAX_DATA_DEPTH} levels")
        layer = [
            child
            for item in layer
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]


class BroadcastSchema(Schema):
    """`POST /broadcast`: what a service may ask. Unknown fields are refused: a typo in a
    service's call should fail loudly, not be dropped."""

    event = fields.String(required=True, validate=validate.Length(min=1, max=64))
    data = fields.Dict(keys=fields.String(), required=True, validate=lambda data: _shallow(data))
    rooms = fields.List(
        fields.String(validate=validate.Length(min=1, max=160)),
        load_default=list,
        validate=validate.Length(max=MAX_TARGETS),
    )
    users = fields.List(
        fields.String(validate=_user_id),
        load_default=list,
        validate=validate.Length(max=MAX_TARGETS),
    )


# -- operators: POST /disconnect, POST /revoke ----------------------------------------------
ID_MAX = 256  # a user id (`sub`) or a token id (`jti`) as operators name them
SID_MAX = 64
REASON_MAX = 200
CUT_TARGETS_MAX = 100  # users or sids in one POST /disconnect
UNTIL_MAX_S = 253_402_300_799  # 9999-12-31T23:59:59Z, as the latest `exp` accepted


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})")


class _Until(fields.Field):
    """A moment as unix seconds (a number, as a token's `exp`) or an RFC 3339 time with its
    offset (`2026-11-21T10:00:00Z`); loaded as unix seconds. A time before 1970 is simply
    past (a lift); one after 9999 is the end of 9999."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValidationError("give unix seconds or an ISO 8601 time")
        if not isinstance(value, str):
            if not (math.isfinite(value) and 0 <= value <= UNTIL_MAX_S):
                raise ValidationError(f"unix seconds from 0 to {UNTIL_MAX_S}")
            return float(value)
        text = value.upper()
        match = _RFC3339.fullmatch(text) if len(text) <= 64 else None
        if match is None:
            raise ValidationError("not an ISO 8601 time with its offset (2026-11-21T10:00:00Z)")
        if match.group(1) == "60":  # a leap second: Python's datetime has none
            text = text[: match.start(1)] + "59" + text[match.end(1) :]
        try:
            seconds = dt.datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError):
            raise ValidationError("not a valid time") from None
        return min(max(seconds, 0.0), float(UNTIL_MAX_S))


class DisconnectSchema(Schema):
    """`POST /disconnect`: the users and sockets to cut, on every instance."""

    users = fields.List(
        fields.String(validate=validate.Length(min=1, max=ID_MAX)),
        load_default=list,
        validate=validate.Length(max=CUT_TARGETS_MAX),
    )
    sids = fields.List(
        fields.String(validate=validate.Length(min=1, max=SID_MAX)),
        load_default=list,
        validate=validate.Length(max=CUT_TARGETS_MAX),
    )
    reason = fields.String(validate=validate.Length(min=1, max=REASON_MAX))

    @validates_schema
    def _a_target(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("users") and not data.get("sids"):
            raise ValidationError("give at least one target in users or sids", "_schema")


class RevokeSchema(Schema):
    """`POST /revoke`: one token (`jti`) or every token of one user (`sub`), until a time."""

    jti = fields.String(validate=validate.Length(min=1, max=ID_MAX))
    sub = fields.String(validate=validate.Length(min=1, max=ID_MAX))
    until = _Until(required=True)
    reason = fields.String(validate=validate.Length(min=1, max=REASON_MAX))

    @validates_schema
    def _one_target(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("jti" in data) == ("sub" in data):
            raise ValidationError("give exactly one of jti and sub", "_schema")
