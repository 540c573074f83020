"""What the Socket.IO Admin UI is shown of the gateway's events, chosen field by field.

Whoever holds the Admin UI's password must not learn what lets them act as a user: a token,
wherever a client put it (any key, an event's name, a room name). So nothing a client sends is
shown as it came: an event the gateway knows is shown by its name and the fields listed here,
each only when it is what that field may hold (a room name, an event id); anything else is
shown as `[unknown event]` with nothing. Of what the gateway sends, the control events that
quote a client (an `error` names the event it refuses) are shown by their code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from realtime import events
from realtime.errors import GatewayError
from realtime.rooms import parse_room

HIDDEN = "[redacted]"
UNKNOWN_EVENT = "[unknown event]"


def _room(value: Any) -> Any:
    try:
        return parse_room(value).name
    except GatewayError:
        return HIDDEN


def _event_id(value: Any) -> Any:
    if value is None:
        return None
    try:
        events.last_event_sequence(value)
    except (GatewayError, TypeError):
        return HIDDEN
    return value


# client event -> {field: what of it is shown}
_RECEIVED: dict[str, dict[str, Callable[[Any], Any]]] = {
    events.AUTHENTICATE: {},
    events.JOIN_ROOM: {"roomId": _room, "lastEventId": _event_id},
    events.LEAVE_ROOM: {"roomId": _room},
}
# control events that quote what a client sent: only these fields are shown
_SENT_FIELDS: dict[str, tuple[str, ...]] = {
    events.ERROR: ("code",),
    events.AUTH_ERROR: ("code",),
}


def received(event: Any, args: Sequence[Any]) -> list[Any]:
    """A client event as the Admin UI sees it: `[name, payload]`, or `[UNKNOWN_EVENT]`."""
    shown = _RECEIVED.get(event) if isinstance(event, str) else None
    if shown is None:
        return [UNKNOWN_EVENT]
    payload = args[0] if len(args) == 1 else None
    if not isinstance(payload, dict):
        return [event]
    return [event, {key: show(payload[key]) for key, show in shown.items() if key in payload}]


def sent(event: str, payload: Any) -> Any:
    """What the Admin UI sees of an event the gateway sends: data events and most control
    events whole (they carry nothing a client sent unchecked), the others by their fields."""
    fields = _SENT_FIELDS.get(event)
    if fields is None or not isinstance(payload, dict):
        return payload
    return {key: payload[key] for key in fields if key in payload}
