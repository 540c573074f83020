"""What the Socket.IO Admin UI is shown of the gateway's events, chosen field by field.

Whoever holds the Admin UI's password must not learn what lets them act as a user: a token,
wherever a client put it (any key, an event's name, a room name). So nothing a client sends is
shown as it came: an event the gateway knows is shown by its name and the fields listed here,
each only when it is what that field may hold (a room name, an event id); anything else is
shown as `[unknown event]` with nothing. Of what the gateway sends, the control events that
quote a client (an `error` names the event it refuses) are shown by their code. Of a socket,
its ids (the Engine.IO one as a digest), rooms, some of its handshake (`socket`) and its
user's id and role (`identity`): nothing of the token they came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from realtime import events
from realtime.access.auth import Principal
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


# of a socket's handshake, what the UI is shown (browsers set these; clients put tokens in
# other headers and query keys, the User-Agent included)
_SHOWN_HEADERS: dict[str, set[str] | None] = {"origin": None}
_SHOWN_QUERY = {"EIO": {"4"}, "transport": {"polling", "websocket"}}  # and only these values


def socket(described: Mapping[str, Any], client_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A socket as the Admin UI sees it, from python-socketio's description (`serialize_socket`),
    field by field: `client_id` in place of its Engine.IO id (a long-polling client's whole
    session credential), `data` (see `identity`), and of its handshake the address, the time,
    the path and the keys above; never another header or query key."""
    handshake = described["handshake"]
    return {
        "id": described["id"],
        "clientId": client_id,
        "transport": described["transport"],
        "nsp": described["nsp"],
        "data": data,
        "handshake": {
            "address": handshake["address"],
            "headers": _shown(handshake["headers"], _SHOWN_HEADERS),
            "query": _shown(handshake["query"], _SHOWN_QUERY),
            "secure": handshake["secure"],
            "url": handshake["url"],
            "issued": handshake["issued"],
            "time": handshake["time"],
        },
        "rooms": described["rooms"],
    }


def _shown(values: Mapping[str, Any], keys: Mapping[str, set[str] | None]) -> dict[str, Any]:
    return {
        key: values[key]
        for key, allowed in keys.items()
        if isinstance(values.get(key), str) and (allowed is None or values[key] in allowed)
    }


def identity(principal_of: Callable[[str], Principal], sid: str) -> dict[str, Any]:
    """A gateway socket's `data` as the Admin UI sees it: its user's id and role, as the
    verified token says, both None until it authenticates (the keys are always there: the
    UI only redraws a key it had). Not its token, the token's id or expiry, nor its shops."""
    try:
        principal = principal_of(sid)
    except GatewayError:  # not authenticated (yet), or gone
        return {"userId": None, "role": None}
    return {"userId": principal.user_id, "role": principal.role}


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
