"""The Engine.IO endpoint: the route, handshakes, WebSocket opens, origin, admission, traffic.

Replaces python-engineio's request handling (`handle_request`, `_handle_connect`, its aiohttp
driver's WebSocket) for what clients do every day: a GET is served here with the library's
checks, packets and handlers but a shorter stack (a WebSocket keeps, for its life, a task of
its own and a small environ); polls and POSTs go to `polling.py`; the rest (JSONP, OPTIONS,
a check that refuses) to the library, which answers it as always. Handshakes follow the
protocol where the library did not (`server/conformance.py` runs its suites): a transport
required, a duplicate poll closing the session, one upgrade per session, `pingInterval` in
ms, other methods 400. WebSocket compression only when asked (the library's driver always
negotiated it: four times the memory); what a WebSocket keeps, see `websocket.py`.

Its long-polling requests are served through the lane (`lane.py`) where a `LaneRunner`
serves the app: `lane_serves` says which it takes.

Library internals touched: `AsyncServer._async` (its driver) and `ping_interval_grace_period`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import engineio
import engineio.packet
from aiohttp import web

from realtime.engine import polling
from realtime.engine.answers import (
    PAST_ITS_RATE,
    bad_request,
    connect_environ,
    origin_allowed,
    turned_away,
    unauthorized,
)
from realtime.engine.http11 import LaneRequest
from realtime.engine.packets import Traffic
from realtime.engine.runner import LANES
from realtime.engine.socket import GatewaySocket
from realtime.engine.websocket import detach, release_http
from realtime.limits import Admission

logger = logging.getLogger(__name__)


class Endpoint:
    """Serves the Engine.IO endpoint of one server."""

    def __init__(self, eio: engineio.AsyncServer, compression: bool):
        self.eio = eio
        self._compression = compression
        # who may open a connection (`Engine.watch`)
        self.admit: Callable[[Mapping[str, str]], Admission] = _admitted
        # the TCP transport under each WebSocket, to cut a stalled one off
        self.connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.traffic: Traffic | None = None  # counted while an Admin UI is on
        self._install_driver()

    def attach(self, app: web.Application, path: str) -> None:
        """Mount the Engine.IO endpoint on `path` (python-engineio's `attach` mounts
        `handle_request` on all three methods): GET through `route`."""
        path = "/" + path.strip("/") + "/"
        app.router.add_get(path, self.route)
        app.router.add_post(path, self.post)
        app.router.add_route("OPTIONS", path, self.eio.handle_request)
        app.router.add_route("*", path, self._no_such_method)
        app.setdefault(LANES, {})[path] = self  # its long-polling served by `LaneRunner`s

    @property
    def max_body(self) -> int:
        return self.eio.max_http_buffer_size

    async def post(self, request: web.Request) -> web.StreamResponse:
        return await polling.post(self.eio, request)

    def lane_serves(self, request: LaneRequest) -> bool:
        """Whether `route` answers this long-polling GET itself (or `post` a POST) with the
        sessions as they are now, rather than the library, from aiohttp's request."""
        if request.method != "GET":
            return True
        query = request.query
        if query.get("transport") != "polling" or "j" in query:
            return False
        if not origin_allowed(self.eio, request):
            return False
        sid = next((value for value in query.getall("sid", ()) if value), None)
        if sid is None:
            return query.get("EIO") == "4"
        socket = self.eio.sockets.get(sid)
        return (
            socket is None
            or socket.closed
            or socket.upgraded
            or (type(socket) is GatewaySocket and socket.connected and not socket.upgrading)
        )

    async def _no_such_method(self, request: web.Request) -> web.Response:
        """PUT, DELETE...: 400, as the protocol's reference server answers (aiohttp's 405 would
        answer in its own words, without the CORS headers)."""
        return bad_request(self.eio, request, "unsupported method")

    async def route(self, request: web.Request) -> web.StreamResponse:
        """A GET on the Engine.IO endpoint. Handshakes (long-polling and WebSocket), polls
        and upgrades are served here, with python-engineio's checks, packets and handlers but
        a shorter stack: a WebSocket keeps a task of its own and a small environ for its
        life, not the library's request handling and environ. What is left (JSONP, a check
        that refuses) goes to the library, which answers it as always."""
        eio = self.eio
        if request.method != "GET":  # HEAD: refused (a poll's body would be lost)
            return bad_request(self.eio, request, "unsupported method")
        query = request.query
        transport, jsonp, eio4 = query.get("transport"), "j" in query, query.get("EIO") == "4"
        # the session, as python-engineio reads the query (it drops empty values)
        sid = next((value for value in query.getall("sid", ()) if value), None)
        del query  # (this frame may serve a WebSocket: not kept for its life)
        if transport not in ("polling", "websocket"):
            # (python-engineio takes a missing one for polling; the protocol requires it)
            return bad_request(eio, request, "unknown transport")
        if sid is None:  # a new connection
            admission = self.admit(connect_environ(request))
            if admission is Admission.TURNED_AWAY:
                return turned_away(eio, request)
            if admission is Admission.REFUSED:
                request[PAST_ITS_RATE] = True
            if transport == "polling" and eio4 and not jsonp and origin_allowed(eio, request):
                return await self._open_polling(request)
        else:
            # a session that is gone, or a poll of one upgraded: refused here (the library
            # answers the same, and logs each kind at ERROR the first time: a client that
            # comes back after a restart is no operator's error)
            socket = eio.sockets.get(sid)
            if (
                socket is None
                or socket.closed
                # (a closing one is kept for the poll that takes its CLOSE: that one passes)
                or (not socket.closing and not await socket.check_ping_timeout())
            ):
                if socket is not None and socket.closed and eio.sockets.get(sid) is socket:
                    del eio.sockets[sid]
                return bad_request(eio, request, "unknown session")
            if socket.upgraded and transport == "polling":
                return bad_request(eio, request, "unexpected HTTP request")
        if transport == "polling" and sid is not None:
            socket = eio.sockets.get(sid)
            if (
                type(socket) is GatewaySocket
                and socket.connected
                and not (socket.closed or socket.upgrading or socket.upgraded)
                and not jsonp
                and "Upgrade" not in request.headers
                and origin_allowed(eio, request)
            ):
                if socket.queue.waited_on():
                    # a second poll while one waits: the session is closed, as Node's
                    # engine.io closes it (the waiting poll takes its CLOSE)
                    logger.info("overlapping polls: session closed", extra={"eio_sid": sid})
                    await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
                    return bad_request(eio, request, "overlapping poll")
                return await polling.poll(eio, request, socket)
            return await eio.handle_request(request)
        if (
            transport != "websocket"
            or jsonp
            or request.headers.get("Upgrade", "").lower() != "websocket"
            or not web.WebSocketResponse().can_prepare(request).ok
            or not origin_allowed(eio, request)
        ):
            return await eio.handle_request(request)
        if sid is None:
            if not eio4:
                return await eio.handle_request(request)
            return await self._open_websocket(request)
        socket = eio.sockets.get(sid)
        if type(socket) is GatewaySocket and (
            socket.upgrading or socket.upgraded or socket.closing
        ):
            # one upgrade per session: a second WebSocket would read frames as this socket
            # beside the first, and outlive it
            return bad_request(eio, request, "unexpected upgrade")
        if (
            type(socket) is not GatewaySocket
            or socket.closed
            or not socket.connected
            or socket.upgraded
            or "upgrade" not in request.headers.get("Connection", "").lower()
        ):
            return await eio.handle_request(request)
        try:
            response = await self._websocket_response(request, socket)
            if await socket.upgrade(response, request.transport):
                socket.upgraded = True
                return detach(request, response, socket.run_websocket(response, request.transport))
        finally:
            if socket.closed and eio.sockets.get(sid) is socket:
                del eio.sockets[sid]
        return response

    async def _open(
        self, request: web.Request, upgrades: list[str]
    ) -> tuple[GatewaySocket | None, Any]:
        """python-engineio's `_handle_connect`: a new socket, its OPEN packet queued and the
        connect handlers run; (None, what they answered) when they refuse it (it is then
        forgotten)."""
        eio = self.eio
        sid = eio.generate_id()
        socket = GatewaySocket(eio, sid)
        socket.queue.traffic = self.traffic
        eio.sockets[sid] = socket
        socket.queue.put_nowait(
            engineio.packet.Packet(
                engineio.packet.OPEN,
                {
                    "sid": sid,
                    "upgrades": upgrades,
                    "pingTimeout": round(eio.ping_timeout * 1000),
                    # (python-engineio rounds the seconds down first: 0.3 s was 0 ms)
                    "pingInterval": round(
                        (eio.ping_interval + eio.ping_interval_grace_period) * 1000
                    ),
                    "maxPayload": eio.max_http_buffer_size,
                },
            )
        )
        accepted = await socket.trigger("connect", connect_environ(request))
        if accepted is not None and accepted is not True:
            del eio.sockets[sid]
            return None, accepted
        return socket, None

    async def _open_polling(self, request: web.Request) -> web.StreamResponse:
        """python-engineio's `_handle_connect`, long-polling: OPEN is the first poll's answer."""
        socket, refusal = await self._open(request, ["websocket"])
        if socket is None:
            return unauthorized(self.eio, request, refusal)
        socket.schedule_ping()
        socket.connected = True
        return await polling.poll(self.eio, request, socket)

    async def _open_websocket(self, request: web.Request) -> web.StreamResponse:
        """python-engineio's `_handle_connect`, for a WebSocket."""
        eio = self.eio
        socket, refusal = await self._open(request, [])
        if socket is None:
            return unauthorized(self.eio, request, refusal)
        socket.schedule_ping()
        try:
            response = await self._websocket_response(request, socket)
        except BaseException:  # (the client went before its 101, say): closed, forgotten
            await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
            if eio.sockets.get(socket.sid) is socket:
                del eio.sockets[socket.sid]
            raise
        socket.connected = socket.upgraded = True
        # (which forgets the socket when it ends)
        return detach(request, response, socket.run_websocket(response, request.transport))

    async def _websocket_response(
        self, request: web.Request, socket: GatewaySocket
    ) -> web.WebSocketResponse:
        """The socket's WebSocket, prepared: compression negotiated only under
        `WS_COMPRESSION` (python-engineio's driver always negotiates it)."""
        response = web.WebSocketResponse(
            max_msg_size=self.eio.max_http_buffer_size, compress=self._compression
        )
        await response.prepare(request)
        self.connections[socket] = request.transport
        release_http(request, response)
        return response

    def _install_driver(self) -> None:
        """Requests `route` leaves to the library take the socket's WebSocket from it."""
        driver = self.eio._async["websocket"]  # the aiohttp driver's WebSocket wrapper class
        endpoint = self

        class GatewayWebSocket(driver):  # type: ignore[misc, valid-type]
            """The driver's wrapper, for the WebSocket requests `route` leaves to the library:
            the socket's loop is handed the response `route` builds, and its transport."""

            response: web.WebSocketResponse
            transport: asyncio.Transport

            async def __call__(self, environ: dict[str, Any]) -> Any:
                request = environ["aiohttp.request"]
                # the handler is the engine.io socket's bound `_websocket_handler`
                socket = self.handler.__self__
                self.response = self._sock = await endpoint._websocket_response(request, socket)
                self.environ = environ
                self.transport = request.transport
                await self.handler(self)
                return self.response

        self.eio._async = {**self.eio._async, "websocket": GatewayWebSocket}


def _admitted(environ: Mapping[str, str]) -> Admission:
    return Admission.ADMITTED
