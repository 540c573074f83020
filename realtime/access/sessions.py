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
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from realtime import events
from realtime.access.admission import ConnectionLimits
from realtime.access.auth import Principal, TokenVerifier
from realtime.access.expiry import TokenExpiry
from realtime.access.joins import Joins
from realtime.access.policy import RoomPolicy
from realtime.access.revocations import Revocations
from realtime.access.socket import SocketSession
from realtime.config import Settings
from realtime.delivery.emitter import Emitter
from realtime.engine import Engine
from realtime.errors import GatewayError
from realtime.metrics import Metrics
from realtime.rooms import ADMIN_GENERAL, ReservationParties
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)


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
        self._expiry = TokenExpiry(
            settings,
            engine,
            emitter,
            metrics,
            self._spawn_for,
            lambda session: self._sessions.get(session.sid) is session,
            clock,
        )
        self._sessions: dict[str, SocketSession] = {}
        self.limits = ConnectionLimits(settings, metrics, self._flooding)
        self._joins = Joins(engine, emitter, policy, settings, metrics, self._sessions)
        # transports without an authenticated socket, and when they are closed for it
        self._auth_deadlines: dict[str, asyncio.TimerHandle] = {}

    # -- transports --------------------------------------------------------------------------
    def transport_opened(self, connection: str) -> None:
        self.limits.opened(connection)
        self._arm_auth_deadline(connection)

    def transport_closed(self, connection: str) -> None:
        self.limits.closed(connection)
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
        if connection not in self.limits.open or (session and session.principal is not None):
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
        self.limits.socket_opened(connection)
        return session

    def closed(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        session.cancel_deadline()
        session.replayed()  # what waits for its replay goes on, to find it gone
        if session.principal is not None:
            self.limits.user_socket_gone(session.principal.user_id, sid)
        if session.principal is not None and session.connection in self.limits.open:
            # its transport may stay open (a client may connect the namespace again): it must
            # carry an authenticated socket again in time. (An unauthenticated socket's
            # transport still has its first deadline: connecting again does not move it.)
            self._arm_auth_deadline(session.connection)

    # -- limits ------------------------------------------------------------------------------
    def admit_connection(self, sid: str, environ: Mapping[str, str]) -> None:
        """This socket's handshake, within its connection's limits (`ConnectionLimits`)."""
        session = self._sessions.get(sid)
        self.limits.admit_socket(session.connection if session is not None else "", environ)

    def admit_event(self, sid: str) -> None:
        """One more client event from this socket, within its connection's limits."""
        session = self._sessions.get(sid)
        if session is not None:
            self.limits.admit_event(session.connection, sid)

    def _flooding(self, connection: str, sid: str) -> None:
        # its connection too: a new socket on it would be charged as a new connection anyway
        self._tasks.spawn(self._close(connection, sid), name="disconnect a flooding socket")

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
        session = await self._after_replay(sid)
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
            revoked = await self._joins.disallowed(sid, principal) if current is not None else []
            self._still_open(session)  # it may have gone while the store was asked
            # checked with no await before the principal is set: a revocation applied since
            # either refuses it here or finds the socket authenticated and cuts it
            self._revocations.check(principal)
            if current is None:
                self.limits.admit_user_socket(principal.user_id)
        except GatewayError as error:
            # `unauthenticated` is no refusal (the socket went away); a user past its
            # connections is counted as rate-limited, not as a failed authentication
            if error.code not in ("unauthenticated", "rate_limited"):
                self._metrics.auth_failures.labels(error.code).inc()
            raise
        session.principal = principal
        self.limits.user_socket_added(principal.user_id, sid)
        # the transport carries an authenticated socket: its deadline would find one (and
        # would hold a timer for its life); armed again if that socket goes (`closed`)
        self._cancel_auth_deadline(session.connection)
        # `exp` binds from now on; `announce` adds the `auth_expiring` warning before it
        self._expiry.bind(session)
        for room in revoked:
            await self._joins.leave_room(sid, room)
        session.replay_from = last_event_id
        if last_event_id is not None:
            session.replaying = asyncio.get_running_loop().create_future()
        for room in self._joins.home_rooms(principal, sid):
            if last_event_id is None or room == ADMIN_GENERAL:  # else `announce` replays it
                self._joins.enter(session, room)
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
            "rooms": sorted({*self._engine.rooms_of(sid), *self._joins.home_rooms(principal, sid)}),
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
        try:
            if session.replay_from is not None:
                payload = {**payload, **await self._joins.replay_home(session)}
                if self._sessions.get(sid) is not session:
                    return payload  # it went while its replay was sent
        finally:
            session.replayed()
        # A cursor for a client that has seen nothing yet: everything up to it that its home
        # rooms were sent is already in its queue, ahead of this message.
        payload = {**payload, "lastEventId": self._emitter.delivered_event_id()}
        self._emitter.send_control(sid, events.AUTH_SUCCESS, payload)
        self._expiry.warn(session)
        return payload

    async def _after_replay(self, sid: str) -> SocketSession:
        """The socket's session, once a handshake's replay under way has ended (see
        `SocketSession.replaying`)."""
        session = self.get(sid)
        if session.replaying is not None:
            await asyncio.wait((session.replaying,))  # its end, without cancelling it
            self._still_open(session)
        return session

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
        return self._principal(self.get(sid))

    @staticmethod
    def _principal(session: SocketSession) -> Principal:
        principal = session.principal
        if principal is None:
            raise GatewayError("unauthenticated", "authenticate first")
        return principal

    async def join(
        self, sid: str, room_id: str, last_event_id: str | None = None
    ) -> dict[str, Any]:
        """Authorise and join, first replaying the room's events after `last_event_id`;
        returns the acknowledgement's fields (`Joins.join`)."""
        session = self.get(sid)
        if session.replaying is not None:
            session = await self._after_replay(sid)
        return await self._joins.join(session, self._principal(session), room_id, last_event_id)

    def join_now(self, sid: str, room_id: str, last_event_id: str | None) -> dict[str, Any] | None:
        """`join` if it needs no wait (`Joins.join_now`); else None, having done nothing."""
        session = self.get(sid)
        if session.replaying is not None:
            return None
        return self._joins.join_now(session, self._principal(session), room_id, last_event_id)

    async def leave(self, sid: str, room_id: str) -> str:
        # after a handshake's replay under way, which would enter the room again after it
        session = await self._after_replay(sid)
        self._principal(session)
        return await self._joins.leave(sid, room_id)

    def members_losing(self, room: str, parties: ReservationParties) -> list[str]:
        """The sockets of this instance in a reservation room whom a booking concerning
        `parties` is no longer for (another customer, another shop)."""
        losing = []
        for sid in self._engine.members(room):
            session = self._sessions.get(sid)
            if session is None or session.principal is None:
                continue
            if not self._policy.allows_reservation(session.principal, parties):
                losing.append(sid)
        return losing

    # -- figures -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        authenticated = [s for s in self._sessions.values() if s.principal is not None]
        return {
            "transports": len(self.limits.open),  # Engine.IO connections, joined or not
            "connections": len(self._sessions),
            "authenticated": len(authenticated),
            "users": len({s.principal.user_id for s in authenticated}),
        }
