"""What each connected socket is allowed, and for how long.

Every Engine.IO connection must carry an authenticated socket within `AUTH_TIMEOUT` of opening
(or of losing the one it had), or its transport is closed, whatever its namespace does. A
verified token gives a socket a principal, its home rooms and two deadlines: `auth_expiring`
shortly before `exp`, and disconnection at `exp` unless a fresh token for the same user
arrives first. A background step of a socket's life that fails closes that socket: none is
left half set up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from realtime import events
from realtime.access.auth import Principal, TokenVerifier
from realtime.access.policy import ReservationHistory, RoomPolicy, home_rooms
from realtime.access.revocations import Revocations
from realtime.config import Settings
from realtime.delivery.emitter import Emitter
from realtime.engine import RATE_LIMITED, Engine
from realtime.errors import GatewayError
from realtime.limits import (
    TOO_MANY_CONNECTIONS,
    Admission,
    KeyedBuckets,
    TokenBucket,
    address_key,
    client_address,
    trusted_networks,
)
from realtime.metrics import Metrics
from realtime.rooms import parse_room, parties_in, reservation_room, user_room
from realtime.tasks import TaskKeeper
from storage.base import StoredEvent

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)  # one per connection: kept small
class SocketSession:
    sid: str
    connection: str  # the engine's id of the connection that carries it
    principal: Principal | None = None
    deadline: asyncio.TimerHandle | None = None  # the token's next deadline
    replay_from: str | None = None  # a handshake's lastEventId, replayed when announced

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


@dataclasses.dataclass(slots=True)  # one per Engine.IO connection: kept small
class TransportUse:
    """What one Engine.IO connection has used of its limits. Kept by the connection, not by
    the socket it carries: a socket disconnected for flooding that connects the namespace
    again on the same connection gets no fresh allowance."""

    events: TokenBucket | None = None  # what it may still send (made at its first event)
    refused_in_a_row: int = 0  # events refused rate_limited since it last kept to its rate
    # (for a whole burst: a client sending steadily past its rate gets some through, and is
    # still disconnected)
    sockets: int = 0  # namespace connections it has carried


class Sessions:
    """The registry of connected sockets and the rules of their identity and rooms."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        verifier: TokenVerifier,
        policy: RoomPolicy,
        emitter: Emitter,
        metrics: Metrics,
        tasks: TaskKeeper,
        revocations: Revocations,
        clock: Callable[[], float] = time.time,
    ):
        self._engine = engine
        self._settings = settings
        self._verifier = verifier
        self._policy = policy
        self._emitter = emitter
        self._metrics = metrics
        self._tasks = tasks
        self._revocations = revocations
        self._clock = clock
        # a token accepted within the leeway past its `exp` binds until then, not at once
        self._leeway_s = settings.jwt_leeway_s
        self._sessions: dict[str, SocketSession] = {}
        self._open_transports: dict[str, TransportUse] = {}
        # transports without an authenticated socket, and when they are closed for it
        self._auth_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._users: dict[str, set[str]] = {}  # user id -> its authenticated sids here
        self._trusted_proxies = trusted_networks(settings.trusted_proxies)
        rate = settings.rate_limit_connections
        burst = max(1.0, 2 * rate)  # bursts of twice the rate, and at least one
        self._connections = KeyedBuckets(rate, burst)  # new connections per address
        self._refusals = KeyedBuckets(rate, burst)  # and those refused past it

    # -- transports --------------------------------------------------------------------------
    def transport_opened(self, connection: str) -> None:
        self._open_transports[connection] = TransportUse()
        self._arm_auth_deadline(connection)

    def transport_closed(self, connection: str) -> None:
        self._open_transports.pop(connection, None)
        self._cancel_auth_deadline(connection)

    def _arm_auth_deadline(self, connection: str) -> None:
        self._cancel_auth_deadline(connection)
        # a bound method and its argument, not a closure: one of these per connection
        self._auth_deadlines[connection] = asyncio.get_running_loop().call_later(
            self._settings.auth_timeout_s, self._auth_deadline_passed, connection
        )

    def _auth_deadline_passed(self, connection: str) -> None:
        self._auth_deadlines.pop(connection, None)
        self._tasks.spawn(
            self._auth_timed_out(connection),
            name="auth timeout",
            on_error=lambda exc: self._failed(connection, None, "auth timeout", exc),
        )

    def _cancel_auth_deadline(self, connection: str) -> None:
        deadline = self._auth_deadlines.pop(connection, None)
        if deadline is not None:
            deadline.cancel()

    async def _auth_timed_out(self, connection: str) -> None:
        session = self._session_of(connection)
        if connection not in self._open_transports or (session and session.principal is not None):
            return
        if self._engine.carries_admin_ui(connection):
            return  # the Admin UI: its namespace connected only with the right credentials
        logger.info("auth timeout", extra={"eio_sid": connection})
        self._metrics.auth_failures.labels("auth_timeout").inc()
        if session is not None:  # the namespace is connected: tell it why, then disconnect it
            error = GatewayError("auth_timeout").to_dict()
            self._emitter.send_control(session.sid, events.AUTH_ERROR, error)
            await self._engine.disconnect(session.sid)
        await self._engine.close_connection(connection)

    def _session_of(self, connection: str) -> SocketSession | None:
        """The socket this transport carries on namespace `/`, if it has connected it."""
        sid = self._engine.socket_on(connection)
        return self._sessions.get(sid) if sid is not None else None

    # -- lifecycle ---------------------------------------------------------------------------
    def opened(self, sid: str) -> SocketSession:
        connection = self._engine.connection_of(sid)
        assert connection is not None  # (called from the namespace's `connect`)
        session = SocketSession(sid=sid, connection=connection)
        self._sessions[sid] = session
        use = self._open_transports.get(session.connection)
        if use is not None:
            use.sockets += 1
        return session

    def closed(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        session.cancel_deadline()
        if session.principal is not None:
            self._forget_user_socket(session.principal.user_id, sid)
        if session.principal is not None and session.connection in self._open_transports:
            # its transport may stay open (a client may connect the namespace again): it must
            # carry an authenticated socket again in time. (An unauthenticated socket's
            # transport still has its first deadline: connecting again does not move it.)
            self._arm_auth_deadline(session.connection)

    # -- limits ------------------------------------------------------------------------------
    def admit_transport(self, environ: Mapping[str, str]) -> Admission:
        """A new Engine.IO connection from this client's address (an IPv6 one by its /64),
        before it opens: within `RATE_LIMIT_CONNECTIONS`, admitted. Past it, it opens and its
        Socket.IO handshake is refused `rate_limited` (which clients show); past it twice
        over, it is turned away before it opens, so that a client that ignores the refusals
        holds nothing here."""
        address = address_key(client_address(environ, self._trusted_proxies))
        if self._connections.take(address):
            return Admission.ADMITTED
        self._metrics.rate_limited.labels("connections").inc()
        return Admission.REFUSED if self._refusals.take(address) else Admission.TURNED_AWAY

    def admit_connection(self, sid: str, environ: Mapping[str, str]) -> None:
        """The Socket.IO handshake of a connection `admit_transport` refused is refused; so
        is one past its address's rate on a connection that carried a socket before (a new
        socket on an old connection is a new connection: one disconnected for flooding
        would otherwise come back at once, free)."""
        if environ.get(RATE_LIMITED) is not None:
            raise GatewayError("rate_limited", TOO_MANY_CONNECTIONS)
        session = self._sessions.get(sid)
        use = self._open_transports.get(session.connection) if session is not None else None
        if use is not None and use.sockets > 1:
            if self.admit_transport(environ) is not Admission.ADMITTED:
                raise GatewayError("rate_limited", TOO_MANY_CONNECTIONS)

    def admit_event(self, sid: str) -> None:
        """One more client event from this socket, within `RATE_LIMIT_EVENTS`; a socket that
        goes on sending past `RATE_LIMIT_DISCONNECT` refusals is disconnected."""
        session = self._sessions.get(sid)
        use = self._open_transports.get(session.connection) if session is not None else None
        if use is None:
            return  # closing: the event is answered as for a socket that went
        now = time.monotonic()
        if use.events is None:
            rate = self._settings.rate_limit_events
            use.events = TokenBucket(rate, max(1.0, 2 * rate), now)
        if use.events.take(now):
            if use.events.idle(now):  # it kept to its rate for a whole burst: forgiven
                use.refused_in_a_row = 0
            return
        use.refused_in_a_row += 1
        self._metrics.rate_limited.labels("events").inc()
        if use.refused_in_a_row == self._settings.rate_limit_disconnect:
            logger.info("socket disconnected: too many events", extra={"sid": sid})
            # after this event's answer, which is already on its way; its connection too
            self._tasks.spawn(
                self._close(session.connection, sid), name="disconnect a flooding socket"
            )
        raise GatewayError(
            "rate_limited",
            f"more than {self._settings.rate_limit_events:g} events a second: slow down",
        )

    def _admit_user_socket(self, user_id: str) -> None:
        most = self._settings.max_connections_per_user
        if len(self._users.get(user_id, ())) >= most:
            self._metrics.rate_limited.labels("user_connections").inc()
            raise GatewayError(
                "rate_limited", f"this user has {most} connections already: close one first"
            )

    def _forget_user_socket(self, user_id: str, sid: str) -> None:
        sids = self._users.get(user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._users[user_id]

    def get(self, sid: str) -> SocketSession:
        session = self._sessions.get(sid)
        if session is None:
            raise GatewayError("unauthenticated", "this connection is closing")
        return session

    def _still_open(self, session: SocketSession) -> None:
        """After an await: the socket may have disconnected meanwhile; then stop here."""
        if self._sessions.get(session.sid) is not session:
            raise GatewayError("unauthenticated", "this connection is closing")

    def shutdown(self) -> None:
        for session in self._sessions.values():
            session.cancel_deadline()
        for connection in list(self._auth_deadlines):
            self._cancel_auth_deadline(connection)

    def _spawn_for(
        self, session: SocketSession, coroutine: Coroutine[Any, Any, None], name: str
    ) -> None:
        """Run a step of this socket's life in the background; if it fails, the socket is
        closed rather than left half set up (say, authenticated with no expiry armed)."""
        self._tasks.spawn(
            coroutine,
            name=name,
            on_error=lambda exc: self._failed(session.connection, session.sid, name, exc),
        )

    def _failed(self, connection: str, sid: str | None, step: str, exc: BaseException) -> None:
        if isinstance(exc, GatewayError) and (sid is None or sid not in self._sessions):
            # the socket went away during this step: nothing is left to close
            logger.info("socket gone during a step of its life", extra={"sid": sid, "step": step})
            return
        logger.error(
            "socket closed: a step of its life failed",
            extra={"sid": sid, "eio_sid": connection, "step": step},
            exc_info=exc,
        )
        self._tasks.spawn(self._close(connection, sid), name="close failed socket")

    async def _close(self, connection: str, sid: str | None) -> None:
        try:
            if sid is not None and sid in self._sessions:
                await self._engine.disconnect(sid)
        finally:
            await self._engine.close_connection(connection)

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
            principal = await self._verifier.verify(token)
            if current is not None and current.user_id != principal.user_id:
                raise GatewayError(
                    "identity_changed",
                    "this socket is authenticated as another user; reconnect to switch",
                )
            # decided before anything changes: a refresh refused leaves the socket as it was
            revoked = (
                await self._disallowed_rooms(session, principal) if current is not None else []
            )
            self._still_open(session)  # it may have gone while the store was asked
            # checked with no await before the principal is set: a revocation applied since
            # either refuses it here or finds the socket authenticated and cuts it
            self._revocations.check(principal)
            if current is None:
                self._admit_user_socket(principal.user_id)
        except GatewayError as error:
            # `unauthenticated` is no refusal (the socket went away); a user past its
            # connections is counted as rate-limited, not as a failed authentication
            if error.code not in ("unauthenticated", "rate_limited"):
                self._metrics.auth_failures.labels(error.code).inc()
            raise
        session.principal = principal
        self._users.setdefault(principal.user_id, set()).add(sid)
        # (the transport's auth deadline is left to pass: it finds an authenticated socket)
        # `exp` binds from now on; `announce` adds the `auth_expiring` warning before it
        self._arm(session, self._left_s(principal), self._token_expired)
        for room in revoked:
            await self._leave(session, room)
        session.replay_from = last_event_id
        for room in home_rooms(principal):
            if last_event_id is None or room != user_room(principal.user_id):
                await self._enter(session, room)
        if revoked:
            self._emitter.send_control(sid, events.ROOMS_REVOKED, {"rooms": revoked})
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
            "rooms": sorted({*self._engine.rooms_of(sid), *home_rooms(principal)}),
            "expiresAt": principal.expires_at_iso(),
        }

    def announce_soon(self, sid: str, payload: dict[str, Any]) -> None:
        """`announce` once the current handler has returned: a handshake's `auth_success`
        must reach the client after the CONNECT packet, which is sent when `connect` returns."""
        session = self._sessions.get(sid)
        if session is not None:
            self._spawn_for(session, self.announce(sid, payload), "announce")

    async def announce(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Replay what a handshake's lastEventId missed, send `auth_success`, then arm the
        `auth_expiring` warning (after, so a token that is already close to `exp` gets
        `auth_expiring` after `auth_success`, not before). Returns what it sent."""
        session = self._sessions.get(sid)
        if session is None or session.principal is None:
            return payload
        if session.replay_from is not None:
            room = user_room(session.principal.user_id)
            replay = await self._emitter.enter_with_replay(
                sid, room, session.replay_from, lambda: self._enter(session, room)
            )
            session.replay_from = None
            payload = {**payload, "replayed": replay.replayed, "gap": replay.gap}
            if self._sessions.get(sid) is not session:
                return payload  # it went while its replay was sent
        # A cursor for a client that has seen nothing yet: everything up to it that its user
        # room was sent is already in its queue, ahead of this message.
        payload = {**payload, "lastEventId": self._emitter.delivered_event_id()}
        self._emitter.send_control(sid, events.AUTH_SUCCESS, payload)
        self._arm_expiry(session)
        return payload

    async def _disallowed_rooms(self, session: SocketSession, principal: Principal) -> list[str]:
        disallowed = []
        for room in sorted(self._engine.rooms_of(session.sid)):
            try:
                await self._policy.authorize(principal, parse_room(room))
            except GatewayError:
                disallowed.append(room)
        return disallowed

    def _left_s(self, principal: Principal) -> float:
        """Seconds until the socket's token no longer binds: its `exp` and the leeway."""
        return principal.expires_at + self._leeway_s - self._clock()

    def _arm_expiry(self, session: SocketSession) -> None:
        assert session.principal is not None
        left_s = self._left_s(session.principal)
        lead_s = self._settings.auth_expiring_lead_s
        self._arm(session, max(0.0, left_s - lead_s), self._auth_expiring)

    async def _auth_expiring(self, session: SocketSession) -> None:
        principal = session.principal
        assert principal is not None
        left_s = max(0.0, self._left_s(principal))
        self._emitter.send_control(
            session.sid,
            events.AUTH_EXPIRING,
            {"expiresAt": principal.expires_at_iso(), "secondsLeft": int(left_s)},
        )
        self._arm(session, left_s, self._token_expired)

    async def _token_expired(self, session: SocketSession) -> None:
        logger.info("token expired", extra={"sid": session.sid})
        self._metrics.auth_failures.labels("token_expired").inc()
        error = GatewayError("token_expired").to_dict()
        self._emitter.send_control(session.sid, events.AUTH_ERROR, error)
        await self._engine.disconnect(session.sid)

    def _arm(
        self,
        session: SocketSession,
        delay_s: float,
        action: Callable[[SocketSession], Coroutine[Any, Any, None]],
    ) -> None:
        session.cancel_deadline()
        session.deadline = asyncio.get_running_loop().call_later(
            max(0.0, delay_s), self._deadline_passed, session, action
        )

    def _deadline_passed(
        self,
        session: SocketSession,
        action: Callable[[SocketSession], Coroutine[Any, Any, None]],
    ) -> None:
        session.deadline = None
        if self._sessions.get(session.sid) is session:
            self._spawn_for(session, action(session), action.__name__)

    # -- operators ---------------------------------------------------------------------------
    async def cut(self, choose: Callable[[str, Principal | None], str | None]) -> int:
        """Cut every socket of this instance for which `choose(sid, principal)` gives a
        message: it gets `auth_error` `revoked` with that message, then a Socket.IO
        disconnect (after which clients do not reconnect by themselves). Returns how many."""
        chosen = []
        for session in list(self._sessions.values()):
            message = choose(session.sid, session.principal)
            if message is not None:
                chosen.append(session)
                error = GatewayError("revoked", message).to_dict()
                self._emitter.send_control(session.sid, events.AUTH_ERROR, error)
        for session in chosen:
            session.cancel_deadline()
            if self._sessions.get(session.sid) is session:
                await self._engine.disconnect(session.sid)
        if chosen:
            self._metrics.sockets_cut.inc(len(chosen))
            logger.info("sockets cut", extra={"sids": [s.sid for s in chosen][:20]})
        return len(chosen)

    def sockets_of(self, user_id: str) -> list[str]:
        """The sids of this instance's sockets authenticated as this user."""
        return [
            s.sid
            for s in self._sessions.values()
            if s.principal is not None and s.principal.user_id == user_id
        ]

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
        session = self.get(sid)
        most = self._settings.max_rooms_per_socket
        rooms = self._engine.rooms_of(sid)
        if room.name not in rooms and len(rooms) >= most:
            self._metrics.rate_limited.labels("rooms").inc()
            raise GatewayError(
                "rate_limited", f"a socket may be in {most} rooms at most: leave one first"
            )
        await self._policy.authorize(principal, room)

        async def recheck() -> None:
            # decided again as the socket enters (with no event going out meanwhile): the
            # booking may have moved to someone else while its replay was being sent
            await self._policy.authorize(principal, room)

        visible = None
        if room.kind == "reservation" and last_event_id is not None and not principal.is_admin:
            visible = await self._reservation_history(principal, room.name, last_event_id)
        replay = await self._emitter.enter_with_replay(
            sid,
            room.name,
            last_event_id,
            lambda: self._enter(session, room.name),
            recheck if room.kind == "reservation" else None,
            visible,
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

    async def leave(self, sid: str, room_id: str) -> str:
        self.principal_of(sid)
        room = parse_room(room_id)
        await self._leave(self.get(sid), room.name)
        return room.name

    async def recheck_reservation(self, name: str, payload: dict[str, Any]) -> None:
        """After a booking change is emitted, the members of its reservation room whom the
        change no longer concerns (another customer, another shop) leave it: they got this
        change, and get nothing more of that reservation."""
        if name != events.RESERVATION_UPDATE:
            return
        room = reservation_room(str(payload.get("reservationId")))
        members = self._engine.members(room)
        if not members or payload.get("updateType") == "deleted":
            return
        parties = parties_in(payload)
        if parties is None:
            return  # the change does not say whom the booking concerns: nothing to judge by
        for sid in members:
            session = self._sessions.get(sid)
            if session is None or session.principal is None:
                continue
            if not self._policy.allows_reservation(session.principal, parties):
                await self._leave(session, room)
                self._emitter.send_control(sid, events.ROOMS_REVOKED, {"rooms": [room]})
                logger.info("room revoked", extra={"sid": sid, "room": room})

    async def _enter(self, session: SocketSession, room: str) -> None:
        self._still_open(session)
        if room not in self._engine.rooms_of(session.sid):
            await self._engine.enter(session.sid, room)

    async def _leave(self, session: SocketSession, room: str) -> None:
        if room in self._engine.rooms_of(session.sid):
            await self._engine.leave(session.sid, room)

    # -- figures -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        authenticated = [s for s in self._sessions.values() if s.principal is not None]
        return {
            "transports": len(self._open_transports),  # Engine.IO connections, joined or not
            "connections": len(self._sessions),
            "authenticated": len(authenticated),
            "users": len({s.principal.user_id for s in authenticated}),
        }
