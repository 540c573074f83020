"""A connection once it is a WebSocket: what aiohttp keeps of its HTTP request let go.

aiohttp serves a WebSocket inside the request's handler, which lasts as long as the
connection: what it made for HTTP stays with it, unused, for its life (a few KB of the ~20 KB
an idle connection cost). Once the handshake is answered, these go: the request parser and
its queue (the connection takes no more requests: its bytes go to the WebSocket's reader),
the handshake answer's headers (written), the request's and its URL's cached reads.

Library internals touched: none of python-engineio's or python-socketio's; aiohttp's
`RequestHandler._parser` and `_messages` (read only before the upgrade, or for a next request
that an upgraded connection never takes) and `BaseRequest._cache`; yarl's `URL._cache`.
"""

from __future__ import annotations

from aiohttp import web

# (immutable: a request queued after all would fail, not be shared between connections)
_NO_MESSAGES: tuple = ()


def release_http(request: web.Request, response: web.WebSocketResponse) -> None:
    """Let go what aiohttp keeps for HTTP on this connection, now its WebSocket is open."""
    protocol = request.protocol
    if protocol.transport is not None:  # (gone: aiohttp has let them go itself)
        protocol._parser = None
        protocol._messages = _NO_MESSAGES
    response.headers.clear()
    request.rel_url._cache.clear()  # yarl's: the parsed query, say (a session's own, upgraded)
    request._cache.clear()
