"""What each connected socket is allowed, and for how long.

A socket starts unauthenticated with an `AUTH_TIMEOUT` deadline. A verified token gives it a
principal, its home rooms and two deadlines: `auth_expiring` shortly before `exp`, and
disconnection at `exp` unless a fresh token for the same user arrives first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import socketio

from realtime import events
from realtime.auth import Principal, TokenVerifier
from realtime.config import Settings
from realtime.emitter import Emitter
from realtime.errors import GatewayError
from realtime.metrics import Metrics
from realtime.rooms import RoomPolicy, home_rooms, parse_room, user_room
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)  # one per connection: kept small
class SocketSession:
    sid: str
    principal: Principal | None = None
    rooms: set[str] = dataclasses.field(default_factory=set)
    deadline: asyncio.TimerHandle | None = None
    replay_from: str | None = None  # a handshake's lastEventId, replayed when announced

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class Sessions:
    """The registry of connected sockets and the rules of their identity and rooms."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        settings: Settings,
        verifier: TokenVerifier,
        policy: RoomPolicy,
        emitter: Emitter,
        metrics: Metrics,
        tasks: TaskKeeper,
        clock: Callable[[], float] = time.time,
    ):
        self._sio = sio
        self._settings = settings
        self._verifier = verifier
        self._policy = policy
        self._emitter = emitter
        self._metrics = metrics
        self._clock = clock
        self._sessions: dict[str, SocketSession] = {}
        self._tasks = tasks

    # -- lifecycle ---------------------------------------------------------------------------
    def opened(self, sid: str) -> SocketSession:
        session = SocketSession(sid=sid)
        self._sessions[sid] = session
        self._arm(session, self._settings.auth_timeout_s, self._auth_timed_out)
        return session

    def closed(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            session.cancel_deadline()

    def get(self, sid: str) -> SocketSession:
        session = self._sessions.get(sid)
        if session is None:
            raise GatewayError("unauthenticated", "this connection is closing")
        return session

    def shutdown(self) -> None:
        for session in self._sessions.values():
            session.cancel_deadline()

    # -- authentication ----------------------------------------------------------------------
    async def authenticate(
        self, sid: str, token: Any, last_event_id: str | None = None
    ) -> dict[str, Any]:
        """Verify `token` for this socket and put it in its home rooms.

        Returns the `auth_success` payload; the caller sends it with `announce`. A token for
        another user than the socket's current one is refused (`identity_changed`) and the
        current identity stays, as it does for any other refused refresh. With
        `last_event_id` (a handshake's), the user's room is entered by `announce`, after the
        events it missed are replayed.
        """
        session = self.get(sid)
        current = session.principal
        try:
            if last_event_id is not None:
                events.last_event_sequence(last_event_id)  # refuse a malformed one up front
            principal = self._verifier.verify(token)
            if current is not None and current.user_id != principal.user_id:
                raise GatewayError(
                    "identity_changed",
                    "this socket is authenticated as another user; reconnect to switch",
                )
        except GatewayError as error:
            self._metrics.auth_failures.labels(error.code).inc()
            raise
        session.cancel_deadline()
        session.principal = principal
        revoked = await self._revoke_disallowed(session) if current is not None else []
        session.replay_from = last_event_id
        for room in home_rooms(principal):
            if last_event_id is None or room != user_room(principal.user_id):
                await self._enter(session, room)
        if revoked:
            await self._emitter.send_control(sid, events.ROOMS_REVOKED, {"rooms": revoked})
        logger.info(
            "authenticated",
            extra={
                "sid": sid,
                "user_id": principal.user_id,
                "role": principal.role,
                "refresh": current is not None,
            },
        )
        return {
            "userId": principal.user_id,
            "role": principal.role,
            "rooms": sorted({*session.rooms, *home_rooms(principal)}),
            "expiresAt": principal.expires_at_iso(),
        }

    def announce_soon(self, sid: str, payload: dict[str, Any]) -> None:
        """`announce` once the current handler has returned: a handshake's `auth_success`
        must reach the client after the CONNECT packet, which is sent when `connect` returns."""
        self._tasks.spawn(self.announce(sid, payload), name="announce")

    async def announce(self, sid: str, payload: dict[str, Any]) -> None:
        """Replay what a handshake's lastEventId missed, send `auth_success`, then arm the
        token's expiry deadlines (after, so a token that is already close to `exp` gets
        `auth_expiring` after `auth_success`, not before)."""
        session = self._sessions.get(sid)
        if session is None or session.principal is None:
            return
        if session.replay_from is not None:
            room = user_room(session.principal.user_id)
            replay = await self._emitter.enter_with_replay(
                sid, room, session.replay_from, lambda: self._enter(session, room)
            )
            session.replay_from = None
            payload = {**payload, "replayed": replay.replayed, "gap": replay.gap}
        await self._emitter.send_control(sid, events.AUTH_SUCCESS, payload)
        self._arm_expiry(session)

    async def _revoke_disallowed(self, session: SocketSession) -> list[str]:
        revoked = []
        for room in sorted(session.rooms):
            try:
                await self._policy.authorize(session.principal, parse_room(room))
            except GatewayError:
                revoked.append(room)
                await self._leave(session, room)
        return revoked

    def _arm_expiry(self, session: SocketSession) -> None:
        assert session.principal is not None
        left_s = session.principal.expires_at - self._clock()
        lead_s = self._settings.auth_expiring_lead_s
        if left_s > lead_s:
            self._arm(session, left_s - lead_s, self._auth_expiring)
        else:
            self._arm(session, 0, self._auth_expiring)

    async def _auth_expiring(self, session: SocketSession) -> None:
        principal = session.principal
        assert principal is not None
        left_s = max(0.0, principal.expires_at - self._clock())
        await self._emitter.send_control(
            session.sid,
            events.AUTH_EXPIRING,
            {
                "expiresAt": principal.expires_at_iso(),
                "secondsLeft": int(left_s),
            },
        )
        self._arm(session, left_s, self._token_expired)

    async def _token_expired(self, session: SocketSession) -> None:
        logger.info("token expired", extra={"sid": session.sid})
        await self._refuse_and_disconnect(session, GatewayError("token_expired"))

    async def _auth_timed_out(self, session: SocketSession) -> None:
        logger.info("auth timeout", extra={"sid": session.sid})
        await self._refuse_and_disconnect(session, GatewayError("auth_timeout"))

    async def _refuse_and_disconnect(self, session: SocketSession, error: GatewayError) -> None:
        self._metrics.auth_failures.labels(error.code).inc()
        await self._emitter.send_control(session.sid, events.AUTH_ERROR, error.to_dict())
        await self._sio.disconnect(session.sid)

    def _arm(
        self,
        session: SocketSession,
        delay_s: float,
        action: Callable[[SocketSession], Coroutine[Any, Any, None]],
    ) -> None:
        session.cancel_deadline()

        def fire() -> None:
            session.deadline = None
            if self._sessions.get(session.sid) is session:
                self._tasks.spawn(action(session), name=action.__name__)

        session.deadline = asyncio.get_running_loop().call_later(max(0.0, delay_s), fire)

    # -- rooms -------------------------------------------------------------------------------
    def principal_of(self, sid: str) -> Principal:
        principal = self.get(sid).principal
        if principal is None:
            raise GatewayError("unauthenticated", "authenticate first")
        return principal

    async def join(
        self, sid: str, room_id: str, last_event_id: str | None = None
    ) -> dict[str, Any]:
        """Authorise and join, first replaying the room's events after `last_event_id`;
        returns the acknowledgement's fields."""
        principal = self.principal_of(sid)
        room = parse_room(room_id)
        await self._policy.authorize(principal, room)
        session = self.get(sid)
        replay = await self._emitter.enter_with_replay(
            sid, room.name, last_event_id, lambda: self._enter(session, room.name)
        )
        logger.info(
            "room joined", extra={"sid": sid, "room": room.name, "replayed": replay.replayed}
        )
        answer = {
            "roomId": room.name,
            "replayed": replay.replayed,
            "lastEventId": replay.last_event_id,
        }
        if last_event_id is not None:
            answer["gap"] = replay.gap
        return answer

    async def leave(self, sid: str, room_id: str) -> str:
        self.principal_of(sid)
        room = parse_room(room_id)
        await self._leave(self.get(sid), room.name)
        return room.name

    async def _enter(self, session: SocketSession, room: str) -> None:
        if room not in session.rooms:
            session.rooms.add(room)
            await self._sio.enter_room(session.sid, room)

    async def _leave(self, session: SocketSession, room: str) -> None:
        if room in session.rooms:
            session.rooms.discard(room)
            await self._sio.leave_room(session.sid, room)

    # -- figures -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        authenticated = [s for s in self._sessions.values() if s.principal is not None]
        return {
            "connections": len(self._sessions),
            "authenticated": len(authenticated),
            "users": len({s.principal.user_id for s in authenticated}),
        }

    def room_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for session in self._sessions.values():
            for room in session.rooms:
                sizes[room] = sizes.get(room, 0) + 1
        return sizes
