"""Event names and the schemas of what clients and services send."""

from __future__ import annotations

import weakref
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

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


_PLAIN: weakref.WeakKeyDictionary[Schema, _PlainStrings] = weakref.WeakKeyDictionary()


def _plain_strings(schema: Schema) -> _PlainStrings:
    reader = _PLAIN.get(schema)
    if reader is None:  # each schema is read once (the handlers' are module-level)
        reader = _PLAIN[schema] = _PlainStrings(schema)
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
