"""A connection once it is a WebSocket: aiohttp's request let go, read in a task of its own.

aiohttp serves a WebSocket inside the handler of its HTTP request, which lasts as long as the
connection: the request (its parsed headers, query and URL), the handler's task, the
connection's task and every frame between them stayed for the connection's life, unused
(~5 KB of the ~17 KB an idle connection cost). Once the handshake is answered (`detach`),
the socket's loop reads the WebSocket in a task of its own and the handler returns: aiohttp's
request handling ends without closing the connection, and all of that goes. What the
connection keeps of aiohttp for HTTP is let go too (`release_http`): its request parser and
queue (it takes no more requests: its bytes go to the WebSocket's reader), its cached reads
and the handshake answer's headers (written); a body the upgrade request declared is ended
unread (its bytes are the WebSocket's).

Library internals touched: none of python-engineio's or python-socketio's; aiohttp's
`RequestHandler._parser` and `_messages` (read only before the upgrade, or for a next request
that an upgraded connection never takes), its `_cache` and `transport` (which its connection
task closes as it ends, unless force-closed), `StreamResponse._req` (a WebSocket closes its
connection through it), `BaseRequest._cache`; yarl's `URL._cache`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

# (immutable: a request queued after all would fail, not be shared between connections)
_NO_MESSAGES: tuple = ()


def release_http(request: web.Request, response: web.WebSocketResponse) -> None:
    """Let go what aiohttp keeps for HTTP on this connection, now its WebSocket is open."""
    protocol = request.protocol
    if protocol.transport is not None:  # (gone: aiohttp has let them go itself)
        protocol._parser = None
        protocol._messages = _NO_MESSAGES
    protocol._cache.clear()  # its peer's and its own address, read again if asked
    response.headers.clear()
    request.rel_url._cache.clear()  # yarl's: the parsed query, say (a session's own, upgraded)
    request._cache.clear()


# WebSockets read in tasks of their own, kept until they end
_READING: set[asyncio.Task] = set()


def detach(
    request: web.Request, response: web.WebSocketResponse, reading: Coroutine[Any, Any, None]
) -> web.StreamResponse:
    """Go on reading the WebSocket (`reading`) in a task of its own, and return what ends
    aiohttp's handling of its request without closing the connection: the request, its
    handler's task and the connection's task (and their frames) go."""
    task = asyncio.get_running_loop().create_task(reading)
    _READING.add(task)
    task.add_done_callback(_READING.discard)
    if not request.content.is_eof():
        # a body the upgrade request declared: its bytes are the WebSocket's now. Left
        # unread, aiohttp's connection task would linger on it, then close the protocol,
        # which drops every byte the client sends from then on
        request.content.feed_eof()
    protocol = request.protocol
    transport = protocol.transport
    response._req = _Handshake(protocol, transport)  # (the response held the whole request)
    if transport is not None:
        # aiohttp's connection task closes the connection as it ends (a WebSocket is no
        # keep-alive): it sees one whose `close()` does nothing, until it has ended
        keep_open = _KeepOpen(transport)
        protocol.transport = keep_open

        def ended(_: asyncio.Task) -> None:
            if protocol.transport is keep_open:  # (None: the connection was lost meanwhile)
                protocol.transport = transport

        request.task.add_done_callback(ended)
    return _Detached(status=101)  # (as an access log saw it: the handshake's status)


class _KeepOpen:
    """The connection's transport as aiohttp's connection task sees it while it ends: the same
    but for `close()`."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Handshake:
    """What a detached `WebSocketResponse` reads of its request: the connection's transport
    (to close it), while the connection lasts."""

    __slots__ = ("_protocol", "_transport")
    method = "GET"  # (its repr)
    path = "(a WebSocket)"
    task = None

    def __init__(self, protocol: Any, transport: asyncio.Transport | None):
        self._protocol, self._transport = protocol, transport

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport if self._protocol.transport is not None else None


class _Detached(web.StreamResponse):
    """aiohttp's answer to a request whose WebSocket goes on without it: nothing to write."""

    async def prepare(self, request: Any) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
