"""Who may be in which room: the spec's table, a socket's home rooms, and a reservation's
history as its replay may show it."""

from __future__ import annotations

from typing import NoReturn, Protocol

from realtime.access.auth import Principal
from realtime.errors import GatewayError
from realtime.rooms import (
    ADMIN_GENERAL,
    ReservationParties,
    Room,
    is_room_key,
    shop_room,
    user_room,
)


def home_rooms(principal: Principal, shop_rooms: bool = True, most: int = 100) -> list[str]:
    """The rooms a socket is put in when it authenticates: its user's, `admin-general` for
    an admin, and with `shop_rooms` (STAFF_SHOP_ROOMS) a staff member's shops' rooms, which
    the policy lets it join anyway, up to `most` rooms in all (MAX_ROOMS_PER_SOCKET)."""
    rooms = [user_room(principal.user_id)]
    if principal.is_admin:
        rooms.append(ADMIN_GENERAL)
    elif shop_rooms and principal.role == "staff":
        shops = sorted(shop for shop in principal.shop_ids if is_room_key(shop))
        rooms.extend(shop_room(shop) for shop in shops[: max(most - len(rooms), 0)])
    return rooms


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

    @staticmethod
    def authorize_now(principal: Principal, room: Room) -> bool | None:
        """Whether `principal` may join `room`, decided without the store: None for a
        reservation room, whose parties only the store knows (`authorize`)."""
        if principal.is_admin:
            return True
        kind = room.kind
        if kind == "availability":
            return True
        if kind == "user":
            return room.key == principal.user_id
        if kind == "shop":
            return principal.role == "staff" and room.key in principal.shop_ids
        if kind == "reservation":
            return None
        return False  # admin rooms

    async def authorize(self, principal: Principal, room: Room) -> None:
        """Return if `principal` may join `room`; raise forbidden / not_found otherwise."""
        allowed = self.authorize_now(principal, room)
        if allowed is None:
            parties = await self._reservations.reservation_parties(room.key)
            if parties is None:
                raise GatewayError("not_found", f"no reservation {room.key!r}")
            allowed = self.allows_reservation(principal, parties)
        if not allowed:
            raise_forbidden(room)


def raise_forbidden(room: Room) -> NoReturn:
    raise GatewayError("forbidden", f"not allowed to join {room.name!r}")
