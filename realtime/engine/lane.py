"""Long-polling's own lane: its requests served without aiohttp's machinery for each request.

A long-polling client makes a request for each answer it gets: a poll waits for what comes,
the next follows. aiohttp serves each with a request object, a task to run it in, the
router, the middlewares and a response written in three steps, which cost twice what the
engine's own code for a poll does (Node's engine.io spent half the gateway's CPU per poll).
Each connection starts here (`LaneConnection`): a request to an Engine.IO endpoint whose head
reads plainly (`http11.py`) is served by the endpoint's own code (`Endpoint.route`,
`Endpoint.post`) given a light request, and answered in one write; the usual poll (a session
open on long-polling, `polling.pollable`) waits by a callback on the socket's outbox, with no
task. Anything else (another route, a WebSocket, a head of another shape, a session in a
state only the library answers) hands the connection to aiohttp for good: its bytes from that
request on go to an aiohttp handler, as though it had read them from the start.

A poll cut short by its client closes its session, as Node's engine.io does: it takes no
packets to write nowhere, and its client catches up on reconnecting.

Library internals touched: none (the runner, `runner.py`, hands over to aiohttp).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from realtime.engine import polling
from realtime.engine.http11 import AIOHTTPS, INCOMPLETE, Body, LaneRequest, answer_bytes, failed
from realtime.engine.http11 import read_request as _read_request
from realtime.engine.outbox import NOTHING
from realtime.engine.socket import GatewaySocket

logger = logging.getLogger(__name__)

IDLE_S = 75.0  # a connection with no request under way is closed after (aiohttp's keep-alive)
AHEAD_LIMIT = 64 * 1024  # what a client may send ahead of an answer before reading pauses


class LaneConnection(asyncio.Protocol):
    """One client connection while its requests are the lane's (see the module)."""

    __slots__ = (
        "_ahead",
        "_body",
        "_due",
        "_last",
        "_loop",
        "_paused",
        "_poll",
        "_polled",
        "_remote",
        "_server",
        "_serving",
        "_since",
        "_timer",
        "_transport",
        "_writable",
        "close_after",
    )

    def __init__(self, server: Any):
        self._server = server  # `runner.LaneServer`
        self._transport: asyncio.Transport | None = None
        self._ahead = b""  # what arrived of requests not yet served
        self._body: Body | None = None  # the body of the POST served, while it arrives
        self._serving: asyncio.Future | None = None  # a task, or the poll's outbox waiter
        self._poll = False  # whether what is served waits for packets (a GET)
        self._paused = False
        self._writable = True  # (False while the transport's write buffer is past its mark)
        self._remote: str | None = None
        self._last = self._since = 0.0  # when the last answer went; the waiting poll came
        self._polled: tuple | None = None  # the waiting poll's endpoint, request and socket
        # one timer for the idle limit and a waiting poll's (one a poll cost ~2 us): ringing
        # (at `_due`), it works out whether either is reached, and when to ring next
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._loop = asyncio.get_event_loop()  # (`get_running_loop` calls getpid() on 3.11)
        self.close_after = False  # the answer under way is the connection's last

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.live.add(self)
        self._last = self._loop.time()
        self._ring_at(self._last + IDLE_S)
        if self._server.closing:
            self.close_when_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._left()
        if self._body is not None:
            self._body.fail()
        if self._serving is not None and self._poll:
            self._serving.cancel()  # a poll cut short: its session closes

    def data_received(self, data: bytes) -> None:
        if self._body is not None:
            data = self._body.feed(data)
            if not self._body.left:
                self._body = None
        scanned, self._ahead = len(self._ahead), self._ahead + data if self._ahead else data
        if self._serving is None and self._writable:
            self._next(scanned)  # (what was here already: found incomplete)
        elif len(self._ahead) > AHEAD_LIMIT and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def pause_writing(self) -> None:
        """The client does not read its answers as fast as they come: none is made until it
        has (a poll's packets wait in the outbox, bounded, meanwhile)."""
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._serving is None and self._ahead and self._transport is not None:
            self._next()

    def force_close(self) -> None:  # (`LaneRequest.protocol`: aiohttp's name for it)
        self.close_after = True

    def close_when_idle(self) -> None:
        self.close_after = True
        if self._serving is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next(self, scanned: int = 0) -> None:
        """Serve the requests that have all arrived, in order: those answered at once one
        after the other here (not each from within the last's answer: a stack as deep as they
        are many), until one is under way; hand over one that is not the lane's."""
        while (read := _read_request(self._ahead, self._server.lanes, scanned)) is not INCOMPLETE:
            if read is AIOHTTPS:
                return self._hand_over()
            endpoint, request, ends = read
            raw, self._ahead, scanned = self._ahead[:ends], self._ahead[ends:], 0
            if request.content.left:
                self._body = request.content  # the rest of it is on its way
                self._resume()  # (what was read ahead of it is all taken: read it on)
            request.transport = self._transport
            request.protocol = self
            request.remote = self._remote or self._remote_address()
            self.close_after = self.close_after or request.closes
            self._poll = request.method == "GET"
            if self._poll:
                query, eio = request.query, endpoint.eio
                sid = next((value for value in query.getall("sid", ()) if value), None)
                if sid and query.get("transport") == "polling" and "j" not in query:
                    socket = polling.pollable(eio, request, sid)
                    if socket is not None:  # the usual poll: served without a task
                        first = socket.queue.ready()
                        if first is NOTHING:
                            self._since = self._loop.time()
                            return self._wait(eio, request, socket)
                        if self._answer_poll(eio, request, socket, first, pipelined=False):
                            continue
                        return
            self._serving = self._loop.create_task(self._serve(endpoint, request, raw))
            return

    async def _serve(self, endpoint: Any, request: LaneRequest, raw: bytes) -> None:
        try:
            # (decided in the same step as the endpoint's own checks: the state is the same)
            if not endpoint.lane_serves(request):  # (a GET: no body)
                self._ahead = raw + self._ahead
                self._serving = None
                return self._hand_over()
            if request.method == "GET":
                response = await endpoint.route(request)
            else:
                response = await endpoint.post(request)
        except asyncio.CancelledError:
            return  # the connection is gone
        except Exception:
            logger.exception("error handling a long-polling request")
            response = self._failed()
        self._answer(response)

    def _wait(self, eio: Any, request: LaneRequest, socket: GatewaySocket) -> None:
        """Wait for the socket's next packets, as `GatewaySocket.poll` does, by a callback:
        for a ping interval and timeout at most (from `_since`)."""
        getter = self._serving = socket.queue.waiter(self._loop)
        self._polled = (eio, request, socket)
        if self._due > (due := self._since + eio.ping_interval + eio.ping_timeout):
            self._ring_at(due)
        getter.add_done_callback(self._woken)

    def _woken(self, getter: asyncio.Future) -> None:
        (eio, request, socket), self._polled = self._polled, None  # type: ignore[misc]
        socket.queue.forget(getter)
        # nothing came in time, or the connection is gone (what came would be written nowhere)
        if getter.cancelled() or self._transport is None:
            self._poll = False  # (no longer waits: the connection's loss must not cut this)
            self._serving = self._loop.create_task(self._serve_gone(eio, request, socket))
            return
        first = socket.queue.ready()
        if first is NOTHING:  # (another poll took it)
            return self._wait(eio, request, socket)
        self._answer_poll(eio, request, socket, first)

    def _answer_poll(
        self,
        eio: Any,
        request: LaneRequest,
        socket: GatewaySocket,
        first: Any,
        pipelined=True,
    ) -> bool:
        try:
            answer = polling.payload(eio, request, socket, socket.polled(first))
        except Exception:
            logger.exception("error answering a long-poll")
            return self._answer(self._failed(), pipelined)
        return self._answer(answer, pipelined)

    async def _serve_gone(self, eio: Any, request: LaneRequest, socket: GatewaySocket) -> None:
        self._answer(await polling.gone(eio, request, socket))

    def _failed(self) -> web.Response:
        self.close_after = True
        return failed()

    def _answer(self, response: web.StreamResponse | tuple, pipelined: bool = True) -> bool:
        """Write `response` (or a poll's 200, its body and headers); then serve the next
        request (`pipelined`), or say whether it may be served now."""
        self._serving = None
        transport = self._transport
        if transport is None:
            return False
        if type(response) is not tuple and type(getattr(response, "body", None)) is not bytes:
            logger.error("a long-polling answer without a body of bytes")  # (the endpoint's are)
            response = self._failed()
        close = self.close_after or getattr(response, "keep_alive", None) is False
        transport.write(answer_bytes(response, close))
        if close:
            transport.close()
            return False
        self._last = self._loop.time()
        self._resume()
        more = bool(self._ahead) and self._writable
        if more and pipelined:
            self._next()
        return more and not pipelined

    def _resume(self) -> None:
        if self._paused and len(self._ahead) <= AHEAD_LIMIT and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _hand_over(self) -> None:
        """From here on, the connection is aiohttp's: what arrived unserved goes to its
        handler, then everything else."""
        transport = self._transport
        if transport is None:
            return
        self._left()
        ahead, self._ahead = self._ahead, b""
        handler = self._server.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        if ahead:
            handler.data_received(ahead)

    def _left(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.left(self)

    def _ring_at(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due = self._loop.call_at(due, self._ring), due

    def _ring(self) -> None:
        transport, now, self._timer = self._transport, self._loop.time(), None
        if transport is None:
            return
        if self._polled is not None:  # a poll waits: until its ping interval and timeout
            eio = self._polled[0]
            if now < (due := self._since + eio.ping_interval + eio.ping_timeout):
                return self._ring_at(due)
            self._serving.cancel()  # type: ignore[union-attr]  # (`_woken` takes it on)
        elif self._serving is None and now - self._last >= IDLE_S:
            # (a head never ended, too; closing, with answers never read, it waits for ever: cut)
            (transport.abort if transport.is_closing() else transport.close)()
            self._last = now
        self._ring_at((now if self._serving is not None else self._last) + IDLE_S)

    def _remote_address(self) -> str | None:
        if self._remote is None and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            self._remote = peer[0] if isinstance(peer, (tuple, list)) else str(peer or "")
        return self._remote
