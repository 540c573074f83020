"""Room names: what each kind of room is called, and whom a reservation's events name.

Who may join a room is decided in `realtime/access/policy.py`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from realtime.errors import GatewayError

ADMIN_GENERAL = "admin-general"  # every admin is put in it on authentication
ADMIN_ROOMS = (ADMIN_GENERAL, "admin-reservations", "admin-payments")
# ids in room names: what ObjectId hex, UUIDs, numbers and most provider ids are made of
# (matched whole, with `fullmatch`: `$` would also match before a trailing newline)
_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@|-]{0,127}"
_ROOM_KEY = re.compile(_ID)
_KEYED_ROOM = re.compile(rf"(user|shop|reservation|availability)-({_ID})")


def is_room_key(text: object) -> bool:
    """Whether `text` can be the id in a room name (`user-{id}`, `shop-{id}`, ...)."""
    return isinstance(text, str) and _ROOM_KEY.fullmatch(text) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Room:
    kind: str  # user, shop, reservation, availability, admin
    key: str  # the id after the prefix; for admin rooms the full name
    name: str = dataclasses.field(init=False, compare=False)  # what it is called

    def __post_init__(self) -> None:
        name = self.key if self.kind == "admin" else f"{self.kind}-{self.key}"
        object.__setattr__(self, "name", name)


# Names parsed already: a client rejoins the same few rooms, and matching the pattern was a
# tenth of a join's cost. Bounded: emptied when full, so made-up names cannot grow it.
_PARSED: dict[str, Room] = {}
PARSED_MAX = 4096


def parse_room(room_id: object) -> Room:
    """The room a name stands for, or `GatewayError("unknown_room")`."""
    if type(room_id) is str:
        room = _PARSED.get(room_id)
        if room is not None:
            return room
    room = _parse(room_id)
    if len(_PARSED) >= PARSED_MAX:
        _PARSED.clear()
    _PARSED[room.name] = room
    return room


def _parse(room_id: object) -> Room:
    if not isinstance(room_id, str):
        raise GatewayError("unknown_room", "a room name is a string")
    if room_id in ADMIN_ROOMS:
        return Room("admin", room_id)
    match = _KEYED_ROOM.fullmatch(room_id)
    if match is None:
        raise GatewayError(
            "unknown_room",
            f"no such room: {room_id[:80]!r}",
            details={
                "known": [
                    "user-{userId}",
                    "shop-{shopId}",
                    "reservation-{id}",
                    "availability-{shopId}",
                    *ADMIN_ROOMS,
                ]
            },
        )
    return Room(match.group(1), match.group(2))


def user_room(user_id: str) -> str:
    return f"user-{user_id}"


def shop_room(shop_id: str) -> str:
    return f"shop-{shop_id}"


def reservation_room(reservation_id: str) -> str:
    return f"reservation-{reservation_id}"


def availability_room(shop_id: str) -> str:
    return f"availability-{shop_id}"


@dataclasses.dataclass(frozen=True)
class ReservationParties:
    """Who a reservation concerns, as far as room access is decided."""

    customer_id: str | None
    shop_id: str | None
    therapist_id: str | None = None


def parties_in(payload: Mapping[str, Any]) -> ReservationParties | None:
    """Whom an event about a reservation (`reservation_update`, `payment_update`) says it
    concerns, or None when it names nobody (a delete without its pre-image, a broadcast)."""
    customer, shop = payload.get("userId"), payload.get("shopId")
    if customer is None and shop is None:
        return None
    return ReservationParties(customer, shop, payload.get("therapistId"))
