"""Joining and leaving rooms: the policy's decision, the replay, the limit per socket, and
the rooms a refreshed token no longer allows. Membership itself is the engine's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from realtime import events
from realtime.access.auth import Principal
from realtime.access.policy import ReservationHistory, RoomPolicy, home_rooms, raise_forbidden
from realtime.access.socket import SocketSession
from realtime.config import Settings
from realtime.delivery.emitter import Emitter
from realtime.delivery.replay import Replay
from realtime.engine import Engine
from realtime.errors import GatewayError
from realtime.metrics import Metrics
from realtime.rooms import ADMIN_GENERAL, Room, parse_room, parties_in, user_room
from storage.base import StoredEvent

logger = logging.getLogger(__name__)


class Joins:
    """Puts sockets in rooms and takes them out, as the room policy allows."""

    def __init__(
        self,
        engine: Engine,
        emitter: Emitter,
        policy: RoomPolicy,
        settings: Settings,
        metrics: Metrics,
        registry: Mapping[str, SocketSession],
    ):
        self._registry = registry  # the connected sockets (`Sessions`'): one gone enters nothing
        self._engine = engine
        self._emitter = emitter
        self._policy = policy
        self._settings = settings
        self._metrics = metrics

    async def join(
        self,
        session: SocketSession,
        principal: Principal,
        room_id: str,
        last_event_id: str | None,
    ) -> dict[str, Any]:
        """Authorise and join, first replaying the room's events after `last_event_id`;
        returns the acknowledgement's fields."""
        room, allowed = self._decide_now(session, principal, room_id)
        if allowed is None:  # a reservation's: the store says
            await self._policy.authorize(principal, room)
        elif last_event_id is None:
            answer = self._join_known(session, room)
            if answer is not None:
                return answer

        async def recheck() -> None:
            # decided again as the socket enters (with no event going out meanwhile): the
            # booking may have moved to someone else while its replay was being sent
            await self._policy.authorize(principal, room)

        visible = None
        if room.kind == "reservation" and last_event_id is not None and not principal.is_admin:
            visible = await self._reservation_history(principal, room.name, last_event_id)
        upto = self.sent_from(session, room.name)
        replay = await self._emitter.enter_with_replay(
            session.sid,
            room.name,
            last_event_id,
            partial(self.enter, session, room.name),
            recheck if allowed is None else None,
            visible,
            upto,
        )
        return self._joined(session, room.name, replay, upto, last_event_id)

    def join_now(
        self,
        session: SocketSession,
        principal: Principal,
        room_id: str,
        last_event_id: str | None,
    ) -> dict[str, Any] | None:
        """`join`, when it needs no wait: no replay (no `last_event_id`), the policy's decision
        made here and the room's newest id known here. None, having done nothing, otherwise."""
        room, allowed = self._decide_now(session, principal, room_id)
        if allowed is None or last_event_id is not None:
            return None
        return self._join_known(session, room)

    def _decide_now(
        self, session: SocketSession, principal: Principal, room_id: str
    ) -> tuple[Room, bool | None]:
        """The room and whether the principal may join it (None: the store must say); raises
        for a room past the socket's limit or one it may not join."""
        room = parse_room(room_id)
        most = self._settings.max_rooms_per_socket
        rooms = self._engine.rooms_of(session.sid)
        if room.name not in rooms and len(rooms) >= most:
            self._metrics.rate_limited.labels("rooms").inc()
            raise GatewayError(
                "rate_limited", f"a socket may be in {most} rooms at most: leave one first"
            )
        allowed = self._policy.authorize_now(principal, room)
        if allowed is not None and not allowed:
            raise_forbidden(room)
        return room, allowed

    def _join_known(self, session: SocketSession, room: Room) -> dict[str, Any] | None:
        """The usual join: nothing to replay or recheck, the room's newest id known here
        (None: not known, nothing done)."""
        upto = self.sent_from(session, room.name)
        replay = self._emitter.enter_known(room.name, partial(self.enter, session, room.name))
        return None if replay is None else self._joined(session, room.name, replay, upto, None)

    def _joined(
        self,
        session: SocketSession,
        room: str,
        replay: Replay,
        upto: int | None,
        last_event_id: str | None,
    ) -> dict[str, Any]:
        """Note what the socket has been sent; the acknowledgement's fields."""
        self.sent_since(session, room, replay.sent_from, upto)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "room joined", extra={"sid": session.sid, "room": room, "replayed": replay.replayed}
            )
        answer = {"roomId": room, "replayed": replay.replayed, "lastEventId": replay.last_event_id}
        if last_event_id is not None:
            answer["gap"] = replay.gap
        return answer

    async def _reservation_history(
        self, principal: Principal, room: str, last_event_id: str
    ) -> Callable[[StoredEvent], bool]:
        """Which of a reservation room's events, replayed after `last_event_id`, this
        principal was allowed to see when they were sent (`ReservationHistory`)."""
        cursor = events.last_event_sequence(last_event_id)
        update = events.RESERVATION_UPDATE
        before = await self._emitter.newest_room_event(room, update, cursor)
        logged = (
            before is not None or await self._emitter.newest_room_event(room, update) is not None
        )
        history = ReservationHistory(
            principal, parties_in(before.payload) if before is not None else None, logged
        )
        return lambda event: history.allows(parties_in(event.payload), event.name == update)

    def home_rooms(self, principal: Principal, sid: str) -> list[str]:
        """The rooms the socket is put in when it authenticates as `principal` (`home_rooms`),
        within what the rooms it joined besides leave of MAX_ROOMS_PER_SOCKET (a refresh)."""
        most = self._settings.max_rooms_per_socket
        rooms = home_rooms(principal, self._settings.staff_shop_rooms, most)
        joined = sum(1 for room in self._engine.rooms_of(sid) if room not in rooms)
        return rooms[: max(most - joined, 1)]  # the user's own room first, always

    async def replay_home(self, session: SocketSession) -> dict[str, Any]:
        """Replay the user's room and a staff member's shops' rooms from the handshake's
        cursor, one after the other (the client dedupes by eventId, as after joins with
        lastEventId); `admin-general` is entered without, as the spec has it. Returns the
        `replayed` and `gap` that `auth_success` carries."""
        cursor, session.replay_from = session.replay_from, None
        replayed, gap = 0, False
        assert session.principal is not None
        for room in self.home_rooms(session.principal, session.sid):
            if room == ADMIN_GENERAL:
                continue
            replay = await self._emitter.enter_with_replay(
                session.sid,
                room,
                cursor,
                partial(self.enter, session, room),
                upto=self.sent_from(session, room),
            )
            self.sent_since(session, room, replay.sent_from)
            replayed, gap = replayed + replay.replayed, gap or replay.gap
            if self._registry.get(session.sid) is not session:
                break  # it went while its replay was sent
        return {"replayed": replayed, "gap": gap}

    async def leave(self, sid: str, room_id: str) -> str:
        room = parse_room(room_id)
        await self.leave_room(sid, room.name)
        return room.name

    async def disallowed(self, sid: str, principal: Principal) -> list[str]:
        """The socket's rooms that `principal` (a refreshed token's) may not be in. A room
        whose name is none of the gateway's (the Admin UI's JOIN, with its full powers, can
        put a socket anywhere) is the operator's to judge, not the policy's."""
        disallowed = []
        for name in sorted(self._engine.rooms_of(sid)):
            try:
                room = parse_room(name)
            except GatewayError:
                continue
            try:
                await self._policy.authorize(principal, room)
            except GatewayError:
                disallowed.append(name)
        return disallowed

    def enter(self, session: SocketSession, room: str) -> None:
        """Put the socket in the room, unless it has gone meanwhile (after an await). It
        gets the room's events live from the next one delivered (a replay says sooner)."""
        if self._registry.get(session.sid) is not session:
            raise GatewayError("unauthenticated", "this connection is closing")
        if room not in self._engine.rooms_of(session.sid):
            self._engine.enter(session.sid, room)
            if self._emitter.delivered is not None:
                self.sent_since(session, room, self._emitter.delivered)

    def sent_from(self, session: SocketSession, room: str) -> int | None:
        """For a room the socket is in (its shops', put in on authentication, or joined
        before), where it has had all the room's events since: a join with a cursor sends
        nothing twice. Not for the user's own room, which a join replays whole after the
        cursor, as the handshake's does; nor where unknown (the Admin UI put it there)."""
        if session.principal is not None and room == user_room(session.principal.user_id):
            return None
        return self._engine.sent_from(session.sid, room)

    def sent_since(
        self, session: SocketSession, room: str, sequence: int | None, before: int | None = None
    ) -> None:
        """The socket has been sent all the room's events after `sequence` (None: unknown;
        `before`: what was known when it was already in the room)."""
        if sequence is not None:
            sequence = sequence if before is None else min(before, sequence)
            self._engine.mark_sent_from(session.sid, room, sequence)

    async def leave_room(self, sid: str, room: str) -> None:
        if room in self._engine.rooms_of(sid):
            await self._engine.leave(sid, room)
