"""The Socket.IO namespace: validates each event and delegates; never raises.

Every failure is answered twice, so clients with and without callbacks both learn of it: in
the acknowledgement (`{ok: false, error}`) and as an event (`auth_error` for the auth codes,
`error` with the event's name for the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import socketio

from realtime import events
from realtime.access.sessions import Sessions
from realtime.delivery.emitter import Emitter
from realtime.engine import Later, RefusedEventName
from realtime.errors import AUTH_CODES, GatewayError, answer_for
from realtime.metrics import Metrics

logger = logging.getLogger(__name__)

_HANDSHAKE = events.HandshakeAuthSchema()
_AUTHENTICATE = events.AuthenticateSchema()
_JOIN = events.JoinRoomSchema()
_LEAVE = events.LeaveRoomSchema()


class GatewayNamespace(socketio.AsyncNamespace):
    """`on_connect`/`on_disconnect` for the lifecycle, `on_<event>` for each client event."""

    def __init__(
        self, sessions: Sessions, emitter: Emitter, metrics: Metrics, namespace: str = "/"
    ):
        super().__init__(namespace)
        self._sessions = sessions
        self._emitter = emitter
        self._metrics = metrics

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        # python-socketio's dispatcher, wrapped (as its docs allow) so that every client event
        # is answered, the unknown ones included, and a failure never escapes. A client event
        # never arrives named `connect` or `disconnect`: `GatewayServer` hands those over as
        # `RefusedEventName`, so these two names are the library's own lifecycle calls.
        if isinstance(event, str) and event in LIFECYCLE_EVENTS:
            return await super().trigger_event(event, *args)
        answer = self.answer_now(event, *args)
        return await answer.answer if type(answer) is Later else answer

    def answer_now(self, event: Any, sid: str, *payload: Any) -> Any:
        """A client event's answer (what its acknowledgement carries), or `Later` with the
        coroutine that answers it when that needs a wait (the store's word, a replay). The
        engine calls it as the event is read (`GatewayServer`): a usual `join_room` is
        answered without a coroutine."""
        try:
            self._sessions.admit_event(sid)
            if isinstance(event, RefusedEventName):
                raise GatewayError(
                    "invalid_payload", event.reason, details={"known": sorted(events.CLIENT_EVENTS)}
                )
            if not isinstance(event, str) or event not in events.CLIENT_EVENTS:
                raise GatewayError(
                    "invalid_payload",
                    f"unknown event {str(event)[:64]!r}",
                    details={"known": sorted(events.CLIENT_EVENTS)},
                )
            if len(payload) > 1:
                raise GatewayError("invalid_payload", "send one payload object")
            data = payload[0] if payload else None
            if event == events.JOIN_ROOM:
                body = events.load(_JOIN, data)
                joined = self._sessions.join_now(sid, body["roomId"], body.get("lastEventId"))
                if joined is not None:
                    return {"ok": True, **joined}
                return Later(self._answer_later(sid, event, self._join(sid, body)))
            # the library's dispatch would turn a cancelled handler into an empty ack
            handler = getattr(self, f"on_{event}")
            return Later(self._answer_later(sid, event, handler(sid, data)))
        except Exception as exc:
            return self._failed(sid, event, exc)

    async def _answer_later(self, sid: str, event: Any, answer: Awaitable[Any]) -> Any:
        try:
            return await answer
        except Exception as exc:
            return self._failed(sid, event, exc)

    def _failed(self, sid: str, event: Any, exc: Exception) -> dict[str, Any]:
        name = str(event)[:64]
        error = answer_for(exc, "event", logger, sid=sid, event=name)
        return self._answer_error(sid, name, error)

    def _answer_error(self, sid: str, event: str, error: GatewayError) -> dict[str, Any]:
        if error.code in AUTH_CODES:
            self._emitter.send_control(sid, events.AUTH_ERROR, error.to_dict())
        else:
            self._metrics.socket_errors.labels(error.code).inc()
            self._emitter.send_control(sid, events.ERROR, {**error.to_dict(), "event": event})
        return {"ok": False, "error": error.to_dict()}

    # -- lifecycle ---------------------------------------------------------------------------
    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        self._sessions.opened(sid)
        try:
            self._sessions.admit_connection(sid, environ)
            handshake = events.load(_HANDSHAKE, auth)
            if not handshake.get("token"):
                return  # accepted unauthenticated: `authenticate` must follow in time
            payload = await self._sessions.authenticate(
                sid, handshake["token"], handshake.get("lastEventId")
            )
        except Exception as exc:
            # refused: `connect_error` carries `{code, message}`; the session is forgotten
            error = answer_for(exc, "handshake", logger, sid=sid)
            self._sessions.closed(sid)
            raise socketio.exceptions.ConnectionRefusedError(
                error.message, error.to_dict()
            ) from None
        self._sessions.announce_soon(sid, payload)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._sessions.closed(sid)

    # -- client events -----------------------------------------------------------------------
    async def on_authenticate(self, sid: str, data: Any) -> dict[str, Any]:
        body = events.load(_AUTHENTICATE, data)
        payload = await self._sessions.authenticate(sid, body.get("token"))
        return {"ok": True, **await self._sessions.announce(sid, payload)}

    async def _join(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        # (`join_room`: `answer_now` reads it, and comes here when it must wait)
        answer = await self._sessions.join(sid, body["roomId"], body.get("lastEventId"))
        return {"ok": True, **answer}

    async def on_leave_room(self, sid: str, data: Any) -> dict[str, Any]:
        body = events.load(_LEAVE, data)
        room = await self._sessions.leave(sid, body["roomId"])
        return {"ok": True, "roomId": room}


LIFECYCLE_EVENTS = frozenset({"connect", "disconnect"})
