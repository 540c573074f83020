"""Room names and who may join them: every rule about rooms lives here."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Protocol

from realtime.auth import Principal
from realtime.errors import GatewayError

ADMIN_ROOMS = ("admin-general", "admin-reservations", "admin-payments")
# ids in room names: what ObjectId hex, UUIDs, numbers and most provider ids are made of
# (matched whole, with `fullmatch`: `$` would also match before a trailing newline)
_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@|-]{0,127}"
_ROOM_KEY = re.compile(_ID)
_KEYED_ROOM = re.compile(rf"(user|shop|reservation|availability)-({_ID})")


def is_room_key(text: object) -> bool:
    """Whether `text` can be the id in a room name (`user-{id}`, `shop-{id}`, ...)."""
    return isinstance(text, str) and _ROOM_KEY.fullmatch(text) is not None


@dataclasses.dataclass(frozen=True)
class Room:
    kind: str  # user, shop, reservation, availability, admin
    key: str  # the id after the prefix; for admin rooms the full name

    @property
    def name(self) -> str:
        return self.key if self.kind == "admin" else f"{self.kind}-{self.key}"


def parse_room(room_id: object) -> Room:
    """The room a name stands for, or `GatewayError("unknown_room")`."""
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


def home_rooms(principal: Principal) -> list[str]:
    """The rooms a socket is put in when it authenticates."""
    rooms = [user_room(principal.user_id)]
    if principal.is_admin:
        rooms.append("admin-general")
    return rooms


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


class ReservationHistory:
    """Whom a reservation concerned when each event of its room was sent, read in the log's
    order, so that a replay gives a socket only what it was allowed to see then: a booking
    moved to another customer or shop does not hand its history over.

    The reservation's `reservation_update`s say whom it concerns from then on; one that moves
    it is seen by both sides (the old parties had it live in the room, the new ones in their
    own rooms). Before the first one logged, an event is judged by whom it names itself, and
    one that names nobody is shown only if the log holds no `reservation_update` of the room
    at all (then it has concerned its present parties, who may join, all along)."""

    def __init__(self, principal: Principal, parties: ReservationParties | None, logged: bool):
        self._principal = principal
        self._parties = parties  # as of the replay's cursor, if a reservation_update says
        self._logged = logged  # whether any reservation_update of the room is logged

    def allows(self, named: ReservationParties | None, update: bool) -> bool:
        """Whether the next event, which names `named` (None: nobody) and is a
        `reservation_update` if `update`, was the principal's to see."""
        allows = RoomPolicy.allows_reservation
        principal, before = self._principal, self._parties
        if update and named is not None:
            self._parties = named
            return allows(principal, named) or (before is not None and allows(principal, before))
        if before is not None:
            return allows(principal, before)
        if named is not None:
            return allows(principal, named)
        return not self._logged


class ReservationDirectory(Protocol):
    async def reservation_parties(self, reservation_id: str) -> ReservationParties | None: ...


class RoomPolicy:
    """Decides every join: the spec's table, with reservations looked up in storage."""

    def __init__(self, reservations: ReservationDirectory):
        self._reservations = reservations

    @staticmethod
    def allows_reservation(principal: Principal, parties: ReservationParties) -> bool:
        """Whether a reservation concerning `parties` is `principal`'s to follow: its
        customer's, its shop's staff's, an admin's."""
        return (
            principal.is_admin
            or (principal.role == "customer" and parties.customer_id == principal.user_id)
            or (principal.role == "staff" and parties.shop_id in principal.shop_ids)
        )

    async def authorize(self, principal: Principal, room: Room) -> None:
        """Return if `principal` may join `room`; raise forbidden / not_found otherwise."""
        if principal.is_admin:
            return
        if room.kind == "user":
            allowed = room.key == principal.user_id
        elif room.kind == "shop":
            allowed = principal.role == "staff" and room.key in principal.shop_ids
        elif room.kind == "availability":
            allowed = True
        elif room.kind == "reservation":
            parties = await self._reservations.reservation_parties(room.key)
            if parties is None:
                raise GatewayError("not_found", f"no reservation {room.key!r}")
            allowed = self.allows_reservation(principal, parties)
        else:  # admin rooms
            allowed = False
        if not allowed:
            raise GatewayError("forbidden", f"not allowed to join {room.name!r}")
