"""The Socket.IO namespace: validates each event and delegates; never raises.

Every failure is answered twice, so clients with and without callbacks both learn of it: in
the acknowledgement (`{ok: false, error}`) and as an event (`auth_error` for the auth codes,
`error` with the event's name for the rest).
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from realtime import events
from realtime.emitter import Emitter
from realtime.errors import AUTH_CODES, GatewayError
from realtime.metrics import Metrics
from realtime.sessions import Sessions

logger = logging.getLogger(__name__)

_HANDSHAKE = events.HandshakeAuthSchema()
_AUTHENTICATE = events.AuthenticateSchema()
_JOIN = events.JoinRoomSchema()
_LEAVE = events.LeaveRoomSchema()


class GatewayNamespace(socketio.AsyncNamespace):
    def __init__(
        self, sessions: Sessions, emitter: Emitter, metrics: Metrics, namespace: str = "/"
    ):
        super().__init__(namespace)
        self._sessions = sessions
        self._emitter = emitter
        self._metrics = metrics
        self._handlers = {
            events.AUTHENTICATE: self._authenticate,
            events.JOIN_ROOM: self._join_room,
            events.LEAVE_ROOM: self._leave_room,
        }

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "connect":
            return await self._connect(*args[:3])
        if event == "disconnect":
            self._sessions.closed(args[0])
            return None
        sid, payload = args[0], args[1:]
        try:
            handler = self._handlers.get(event)
            if handler is None:
                raise GatewayError(
                    "invalid_payload",
                    f"unknown event {str(event)[:64]!r}",
                    details={"known": sorted(self._handlers)},
                )
            if len(payload) > 1:
                raise GatewayError("invalid_payload", "send one payload object")
            return await handler(sid, payload[0] if payload else None)
        except GatewayError as error:
            logger.info(
                "event refused", extra={"sid": sid, "event": str(event)[:64], "code": error.code}
            )
            return await self._answer_error(sid, event, error)
        except Exception:
            logger.exception("event failed", extra={"sid": sid, "event": str(event)[:64]})
            return await self._answer_error(sid, event, GatewayError("internal"))

    async def _answer_error(self, sid: str, event: str, error: GatewayError) -> dict[str, Any]:
        if error.code in AUTH_CODES:
            await self._emitter.send_control(sid, events.AUTH_ERROR, error.to_dict())
        else:
            self._metrics.socket_errors.labels(error.code).inc()
            await self._emitter.send_control(
                sid, events.ERROR, {**error.to_dict(), "event": str(event)[:64]}
            )
        return {"ok": False, "error": error.to_dict()}

    async def _connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        self._sessions.opened(sid)
        try:
            handshake = events.load(_HANDSHAKE, auth)
            if not handshake.get("token"):
                return  # accepted unauthenticated: `authenticate` must follow in time
            payload = await self._sessions.authenticate(
                sid, handshake["token"], handshake.get("lastEventId")
            )
        except GatewayError as error:
            self._sessions.closed(sid)
            logger.info("handshake refused", extra={"sid": sid, "code": error.code})
            raise socketio.exceptions.ConnectionRefusedError(error.message, error.to_dict())
        # the CONNECT packet must reach the client before auth_success does
        self._sessions.announce_soon(sid, payload)

    async def _authenticate(self, sid: str, data: Any) -> dict[str, Any]:
        body = events.load(_AUTHENTICATE, data)
        payload = await self._sessions.authenticate(sid, body.get("token"))
        await self._sessions.announce(sid, payload)
        return {"ok": True, **payload}

    async def _join_room(self, sid: str, data: Any) -> dict[str, Any]:
        body = events.load(_JOIN, data)
        answer = await self._sessions.join(sid, body["roomId"], body.get("lastEventId"))
        return {"ok": True, **answer}

    async def _leave_room(self, sid: str, data: Any) -> dict[str, Any]:
        body = events.load(_LEAVE, data)
        room = await self._sessions.leave(sid, body["roomId"])
        return {"ok": True, "roomId": room}
