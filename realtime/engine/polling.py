"""Long-polling: a POST's packets and a GET's answer.

Replaces python-engineio's `handle_post_request` and its long-poll answer (`handle_request`,
`handle_get_request`, `_ok`) for the requests `endpoint.py` routes here: a POST's body is read
to its length (the library took what had arrived), one POST of a session at a time and none
once it upgraded (the library ran them at once, so a socket's events raced); a poll is
answered without building the request's environ. Both count their bodies' bytes while an
Admin UI is on (the library's count, `sio.instrument()`, never sees them).

Library internals touched: `AsyncServer._gzip` and `_deflate` (a poll's compression).
"""

from __future__ import annotations

import asyncio
import logging
import time

import engineio
import engineio.exceptions
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from realtime.engine.answers import bad_request, cors_headers, origin_allowed, refuse_and_close
from realtime.engine.socket import GatewaySocket

logger = logging.getLogger(__name__)


async def post(eio: engineio.AsyncServer, request: web.Request) -> web.StreamResponse:
    """A long-polling POST: the client's packets, handled in order, one socket's events
    one at a time. python-engineio's checks and answers, with what it left to chance
    made sure: the body is read to its length (the library took what had arrived, and
    a body sent in two pieces lost its second), within a ping interval and timeout; a
    second POST of a session while one is read or handled closes the session, as Node's
    engine.io does (the library ran them at once, so a socket's events raced); none is
    taken once the session is upgraded or closing (one that arrived before the upgrade
    completed is handled first); a session that closes while its body arrives is
    answered 400 (the library answered 500)."""
    query = request.query
    sid = query.get("sid")
    socket = eio.sockets.get(sid) if sid else None
    if not origin_allowed(eio, request):
        return bad_request(eio, request, "origin not allowed")
    if type(socket) is not GatewaySocket or not socket.connected:
        return bad_request(eio, request, "unknown session")
    if not (socket.closed or socket.closing) and not await socket.check_ping_timeout():
        if eio.sockets.get(sid) is socket:
            del eio.sockets[sid]
        return bad_request(eio, request, "session closed")  # it missed its pong
    if socket.closed or socket.closing:
        if socket.closed and eio.sockets.get(sid) is socket:
            del eio.sockets[sid]
        return bad_request(eio, request, "session closed")
    if socket.upgraded or query.get("transport", "polling") != "polling":
        return bad_request(eio, request, "unexpected HTTP request")
    if socket.receiving is not None:
        logger.info("overlapping POSTs: session closed", extra={"eio_sid": sid})
        await socket.close(reason=eio.reason.SERVER_DISCONNECT)  # after its last poll
        return bad_request(eio, request, "overlapping POST")
    received = socket.receiving = asyncio.get_running_loop().create_future()
    try:
        body = await _body(eio, request)
        # (an upgrade that completed meanwhile waits for this POST's packets)
        if body is None:
            await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
            return await refuse_and_close(eio, request, "body refused")
        if socket.queue.traffic is not None:  # an Admin UI is on
            socket.queue.traffic.received += len(body)
        if socket.closed or socket.closing:
            return bad_request(eio, request, "session closed")
        try:
            await socket.receive_payload(body)
        except engineio.exceptions.EngineIOError:
            # closed at once (a poll waiting takes its CLOSE; the next finds no session)
            await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
            return bad_request(eio, request, "malformed payload")
    finally:
        socket.receiving = None
        received.set_result(None)
    return web.Response(
        body=b"ok", headers={"Content-Type": "text/plain", **cors_headers(eio, request)}
    )


async def _body(eio: engineio.AsyncServer, request: web.Request) -> bytes | None:
    """A POST's whole body, read to its end (aiohttp ends it at its Content-Length, or
    at the last chunk, and inflates a compressed one); None when it is larger than
    `max_http_buffer_size`, ends early, is malformed or takes longer than a ping interval
    and timeout to arrive."""
    most = eio.max_http_buffer_size
    length = request.content_length
    if length is not None and length > most:
        return None
    body = bytearray()
    try:
        async with asyncio.timeout(eio.ping_interval + eio.ping_timeout):
            while chunk := await request.content.read(65536):
                body += chunk
                if len(body) > most:
                    return None
    except (
        TimeoutError,
        OSError,
        HttpProcessingError,
        web.RequestPayloadError,  # a body cut short, or not what its encoding says
    ):
        return None
    return bytes(body)


def pollable(eio: engineio.AsyncServer, request: web.Request, sid: str) -> GatewaySocket | None:
    """The socket of a long-poll that `Endpoint.route` hands straight to `poll`, the usual
    one (a session open on long-polling, no poll waiting on it, its pongs in time, its origin
    allowed), for a request on long-polling without JSONP or Upgrade; None otherwise (`route`
    decides)."""
    socket = eio.sockets.get(sid)
    if (
        type(socket) is not GatewaySocket
        or not socket.connected
        or socket.closed
        or socket.closing
        or socket.upgrading
        or socket.upgraded
        or socket.queue.waited_on()
        or (socket.last_ping and time.time() - socket.last_ping > eio.ping_timeout)
        or not origin_allowed(eio, request)
    ):
        return None
    return socket


async def poll(
    eio: engineio.AsyncServer, request: web.Request, socket: GatewaySocket
) -> web.Response:
    """python-engineio's answer to a long-poll (`handle_request`, `handle_get_request`,
    `_ok`), without building the request's environ: what waits, or what comes."""
    try:
        packets = await socket.poll()
    except engineio.exceptions.QueueEmpty:
        return await gone(eio, request, socket)
    return answer(eio, request, socket, packets)


async def gone(
    eio: engineio.AsyncServer, request: web.Request, socket: GatewaySocket
) -> web.Response:
    """A poll that got nothing for a ping interval and more, or was cut short: the session
    is closed (its client is gone, or catches up on reconnecting)."""
    await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
    if socket.sid in eio.sockets:
        await eio.disconnect(socket.sid)
    return bad_request(eio, request, "Bad Request")


def answer(
    eio: engineio.AsyncServer,
    request: web.Request,
    socket: GatewaySocket,
    packets: list[engineio.packet.Packet],
) -> web.Response:
    """A poll's answer: its packets as one payload, compressed when asked and worth it."""
    body, headers = payload(eio, request, socket, packets)
    return web.Response(body=body, headers=headers)


def payload(
    eio: engineio.AsyncServer,
    request: web.Request,
    socket: GatewaySocket,
    packets: list[engineio.packet.Packet],
) -> tuple[bytes, dict[str, str]]:
    """A poll's answer (`answer`) as its body and headers (the lane writes them itself)."""
    # (python-engineio's `Payload.encode`, without its object)
    body = "\x1e".join([packet.encode(b64=True) for packet in packets]).encode()
    headers = {"Content-Type": "text/plain; charset=UTF-8", **cors_headers(eio, request)}
    if eio.http_compression and len(body) >= eio.compression_threshold:
        accepted = request.headers.get("Accept-Encoding", "").split(",")
        for encoding in (e.split(";")[0].strip() for e in accepted):
            if encoding in eio.compression_methods:
                body = getattr(eio, "_" + encoding)(body)
                headers["Content-Encoding"] = encoding
                break
    if socket.queue.traffic is not None:  # an Admin UI is on
        socket.queue.traffic.sent += len(body)
    return body, headers
