"""Adjustments to python-engineio's transport, kept in this one place.

WebSocket per-message compression: python-engineio's aiohttp driver always negotiates it (its
`WebSocketResponse` is built with aiohttp's default `compress=True`), which costs about four
times the memory per connection. With `WS_COMPRESSION=false` (the default) the driver is handed
a request without the client's `Sec-WebSocket-Extensions` offer, so nothing is negotiated.
`tests/test_transport.py` fails if the library's internals this relies on move.
"""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
import engineio.packet

EXTENSIONS_HEADER = "Sec-WebSocket-Extensions"


def configure_compression(eio: engineio.AsyncServer, enabled: bool) -> None:
    """Make `eio` negotiate WebSocket compression only when `enabled`."""
    if enabled:
        return
    driver = eio._async["websocket"]  # the aiohttp driver's WebSocket wrapper class

    class UncompressedWebSocket(driver):  # type: ignore[misc, valid-type]
        async def __call__(self, environ: dict[str, Any]) -> Any:
            request = environ["aiohttp.request"]
            if EXTENSIONS_HEADER in request.headers:
                headers = request.headers.copy()
                del headers[EXTENSIONS_HEADER]
                environ = {**environ, "aiohttp.request": request.clone(headers=headers)}
            return await super().__call__(environ)

    eio._async = {**eio._async, "websocket": UncompressedWebSocket}


def release_long_polls_on_client_close(eio: engineio.AsyncServer) -> None:
    """Answer a polling client's pending GET when that client closes the connection.

    python-engineio closes such a socket without writing to it, so the client's outstanding
    long-poll waits for the ping interval (25 s) before it returns; python clients wait for it
    inside `disconnect()` (and inside a refused `connect()`). Engine.IO's reference server
    answers it at once; so do we, with a CLOSE packet.
    """
    handle_disconnect = eio.handlers["disconnect"]  # python-socketio's own handler

    async def on_disconnect(eio_sid: str, reason: Any) -> None:
        await handle_disconnect(eio_sid, reason)
        socket = eio.sockets.get(eio_sid)
        if reason == eio.reason.CLIENT_DISCONNECT and socket is not None and not socket.upgraded:
            socket.queue.put_nowait(engineio.packet.Packet(engineio.packet.CLOSE))

    eio.on("disconnect", on_disconnect)


async def close_transport(eio: engineio.AsyncServer, eio_sid: str) -> None:
    """Close one client's transport without a Socket.IO disconnect, so that the client
    reconnects by itself (and catches up by replay).

    A `None` in the socket's queue ends its writer: on WebSocket the socket is then closed, on
    long-polling the pending GET returns and the next one finds no session. A server-sent
    CLOSE packet or a Socket.IO DISCONNECT would instead tell clients not to reconnect.
    """
    socket = eio.sockets.get(eio_sid)
    if socket is None or socket.closed:
        return
    socket.queue.put_nowait(None)
    await socket.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)


async def close_all_transports(eio: engineio.AsyncServer) -> None:
    await asyncio.gather(*(close_transport(eio, sid) for sid in list(eio.sockets)),
                         return_exceptions=True)
