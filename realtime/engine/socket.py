"""The Engine.IO socket: python-engineio's `AsyncSocket`, costing less per connection.

Each socket becomes a `GatewaySocket` when it opens (`lifecycle.py`): a timer for its pings
rather than a sleeping task; long-polls answered at once, without a timer, when packets
wait; a POST's packets handled in order, up to `PACKETS_PER_POST` (the library read 16 and
dropped the rest); one upgrade per session; a WebSocket loop with neither a writer task (the
`Outbox` writes) nor a task per message (nor a coroutine for the usual one: the server's
`message_now`, set by `GatewayServer`); a long-polling socket closed by the server kept for
the poll that takes its CLOSE (the library waited for a drain no poll could make).

Library internals touched: `AsyncSocket`'s `_websocket_handler` (replaced), its state
(`last_ping`, `upgrading`, `upgraded`, `closing`, `queue`) and python-engineio's
`AsyncServer._trigger_event` (the server's connection events, triggered from here only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import engineio.async_socket
import engineio.exceptions
import engineio.packet
import engineio.payload
from aiohttp import web

from realtime.engine.outbox import CLOSE_TIMEOUT_S, NOTHING, Outbox
from realtime.engine.packets import CLOSE, NOOP, PING

logger = logging.getLogger(__name__)

# how long a long-polling client closed by the server has to fetch what it was last sent
LAST_POLL_WAIT_S = 5.0
# how late a ping may be sent and still be timed from when it was due
LATE_PING_GRACE_S = 0.05
# what one long-polling POST may carry (within MAX_PAYLOAD_BYTES)
PACKETS_PER_POST = 1000
# what `sio.instrument()` (the Admin UI) replaces on python-engineio's AsyncSocket class
INSTRUMENTED_SOCKET_CALLS = ("handle_post_request", "_websocket_handler", "_send_ping")


class _ClientPayload(engineio.payload.Payload):
    max_decode_packets = PACKETS_PER_POST


class GatewaySocket(engineio.async_socket.AsyncSocket):
    """python-engineio's socket, costing less per connection (each one becomes this when it
    opens; how, the module's docstring says)."""

    upgrade_transport: asyncio.Transport | None = None  # the connection of an upgrade under way
    opened_at = 0.0  # when it opened (time.monotonic())
    namespaced = False  # whether it has connected a namespace (its connect timeout passed)
    # a POST whose body is being read or its packets handled: done when it is answered
    receiving: asyncio.Future | None = None
    ping_timer: asyncio.TimerHandle | None = None  # the next ping; cancelled when it closes
    ping_due = 0.0  # when the next ping is due (time.time())
    last_poll_timer: asyncio.TimerHandle | None = None  # closed by then if no poll came

    def schedule_ping(self) -> None:
        # python-engineio: only when the previous ping was answered
        if self.last_ping:
            self.last_ping = None
            self.ping_due = time.time() + self.server.ping_interval
            self.ping_timer = asyncio.get_running_loop().call_later(
                self.server.ping_interval, self._ping
            )

    def _ping(self) -> None:
        if not self.closing and not self.closed:
            # A ping a moment late is timed from when it was due: a client that never answers
            # is closed pingInterval + pingTimeout after its last pong, to the moment. One held
            # back by a stall is timed from now: a client cannot answer what it has not got.
            now = time.time()
            late = now - self.ping_due > min(LATE_PING_GRACE_S, self.server.ping_timeout / 4)
            self.last_ping = now if late else self.ping_due
            self.queue.put_nowait(PING)

    async def poll(self) -> list[engineio.packet.Packet]:
        first = self.queue.ready()
        if first is NOTHING:
            try:  # (a timer, not `wait_for`: on Python 3.11 a task per poll)
                async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                    first = await self.queue.get()
            except (TimeoutError, asyncio.CancelledError):
                raise engineio.exceptions.QueueEmpty() from None
        return self.polled(first)

    def polled(self, first: Any) -> list[engineio.packet.Packet]:
        """A poll's packets, `first` (what the outbox gave it) and what follows it."""
        if first is None:
            return []
        packets = [first]
        outbox = self.queue
        while True:
            try:
                packet = outbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if packet is None:
                outbox.put_nowait(None)  # the end: for the next poll
                break
            packets.append(packet)
        if self.closing and not self.closed and outbox.empty():
            self._closed()  # its last poll: the CLOSE is on its way
        return packets

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """python-engineio's entry for a POST: refused (the endpoint serves every POST)."""
        raise engineio.exceptions.EngineIOError()

    async def receive_payload(self, body: bytes) -> None:
        """The packets of one long-polling POST, handled in order: up to `PACKETS_PER_POST`
        (python-engineio refuses more than 16, which a JS client sends when it emits faster
        than a round trip: all of them were lost), a batch at a time so that other clients
        go on. A payload that holds something other than packets raises
        `UnknownPacketError` (its session is closed, as a junk frame closes a WebSocket; the
        library logged it as its own error and went on)."""
        try:
            packets = _ClientPayload(encoded_payload=body.decode()).packets
            for count, pkt in enumerate(packets, 1):
                await self.receive(pkt)
                if self.closing or self.closed:
                    break  # what follows would be dropped (and the session may be forgotten)
                if count % 64 == 0:
                    await asyncio.sleep(0)
        except (ValueError, IndexError, RecursionError):
            logger.info("malformed packet: connection closed", extra={"eio_sid": self.sid})
            raise engineio.exceptions.UnknownPacketError() from None

    async def receive(self, pkt: engineio.packet.Packet) -> None:
        if pkt.packet_type == engineio.packet.MESSAGE:
            # python-socketio's handler, called here as on WebSocket, so that what it cannot
            # read reaches `handle_post_request` (the library would log it as an error)
            if not isinstance(pkt.data, (str, bytes)):  # `4{}`: JSON, no Socket.IO packet
                raise ValueError("not a Socket.IO packet")
            await self.server.handlers["message"](self.sid, pkt.data)
        else:
            await super().receive(pkt)

    async def _websocket_handler(self, ws: Any) -> None:
        """python-engineio's WebSocket loop, for the upgrades that reach the library's own
        request handling (the endpoint's `route` takes the usual ones)."""
        if self.connected and not await self.upgrade(ws.response, ws.transport):
            return
        self.connected = self.upgraded = True
        await self.run_websocket(ws.response, ws.transport)

    async def upgrade(self, response: web.WebSocketResponse, transport: asyncio.Transport) -> bool:
        """python-engineio's upgrade from long-polling: the probe, then UPGRADE. One per
        session: another WebSocket for it while one upgrades (or after) is refused."""
        if self.upgrading or self.upgraded or self.closing or self.closed:
            return False
        self.upgrading = True  # polls are answered NOOP, packets wait in the outbox
        self.upgrade_transport = transport  # cut if the socket closes meanwhile
        try:
            # each step within the ping timeout: a client that sends nothing is not kept
            async with asyncio.timeout(self.server.ping_timeout):
                probe = engineio.packet.Packet(encoded_packet=await _received(response))
            if probe.packet_type != engineio.packet.PING or probe.data != "probe":
                return False
            await response.send_str(
                engineio.packet.Packet(engineio.packet.PONG, data="probe").encode()
            )
            if self.queue.waited_on():
                self.queue.put_nowait(NOOP)  # ends the poll under way (a later one gets one)
            async with asyncio.timeout(self.server.ping_timeout):
                upgrade = engineio.packet.Packet(encoded_packet=await _received(response))
            # the session may have closed meanwhile (its auth deadline, say)
            return upgrade.packet_type == engineio.packet.UPGRADE and not (
                self.closed or self.closing
            )
        except (OSError, ValueError, TimeoutError):
            return False
        finally:
            self.upgrading = False
            self.upgrade_transport = None

    async def run_websocket(
        self, response: web.WebSocketResponse, transport: asyncio.Transport
    ) -> None:
        """Read the client's packets (in a task of its own: `websocket.detach`) until the
        WebSocket ends; the `Outbox` writes. No read timeout: a client that stops answering
        pings is closed by python-engineio's ping check (`close` ends the WebSocket)."""
        outbox = self.queue
        outbox.attach(response, transport)
        message_now = self.server.message_now  # python-socketio's, `GatewayServer`'s way
        traffic = outbox.traffic  # the endpoint's, while an Admin UI is on
        try:
            if self.receiving is not None:  # a POST still handled: its packets first
                await asyncio.shield(self.receiving)
            while True:
                try:
                    message = await response.receive()
                except (Exception, asyncio.CancelledError):  # cancelled, failed
                    break
                data = message.data
                if not isinstance(data, (str, bytes)) or self.closed:
                    break  # closed, closing or failed; or the socket closed meanwhile
                if traffic is not None:
                    traffic.frame_received(data)
                try:
                    if type(data) is str and data[:1] == "4":  # MESSAGE: what `receive` does
                        if (later := message_now(self.sid, data)) is not None:  # None: done
                            await later
                        continue
                    await self.receive(engineio.packet.Packet(encoded_packet=data))
                except engineio.exceptions.UnknownPacketError:
                    pass
                except engineio.exceptions.SocketIsClosedError:
                    break
                except (ValueError, IndexError, RecursionError):
                    # not a packet (an unknown type, JSON nested too deep): the library's ends too
                    logger.info("malformed packet: connection closed", extra={"eio_sid": self.sid})
                    break
                except Exception:
                    logger.exception("receiving a packet failed", extra={"eio_sid": self.sid})
        finally:
            # in a task of its own: aiohttp may cancel this handler when the client goes, and
            # the socket must still be closed (or it would wait for the ping timeout)
            ending = asyncio.ensure_future(self._end_websocket(outbox, response, transport))
            _ENDING.add(ending)
            ending.add_done_callback(_ENDING.discard)
            await asyncio.shield(ending)

    async def _end_websocket(
        self, outbox: Outbox, response: web.WebSocketResponse, transport: asyncio.Transport
    ) -> None:
        try:
            await outbox.finish(response, transport)
        finally:
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            if self.server.sockets.get(self.sid) is self:  # as python-engineio does after
                del self.server.sockets[self.sid]

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.closed or self.closing:
            return
        if wait and not abort and not self.upgraded:
            await self._close_after_last_poll(reason)
            return
        if not abort:
            # python-engineio's `send` drops it when a ping is overdue (which is why many a
            # socket closes): the poll waiting, or the WebSocket, would end without it
            self.queue.put_nowait(CLOSE)
        await super().close(wait=False, abort=True, reason=reason)
        self._closed()
        if wait:  # a WebSocket: its CLOSE is written (or the connection cut) within the bound
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.queue.join()

    async def _close_after_last_poll(self, reason: Any) -> None:
        """python-engineio's `close(wait=True)` on long-polling writes CLOSE, marks the socket
        closed and waits for a drain no poll can make (a closed socket's polls are refused).
        Here the socket stays open to polls, for `LAST_POLL_WAIT_S` at most, until one takes
        what waits and the CLOSE; nobody waits for that."""
        self.closing = True
        # queued first: a poll that empties the outbox from now on has taken it
        self.queue.put_nowait(CLOSE)
        self.last_poll_timer = asyncio.get_running_loop().call_later(LAST_POLL_WAIT_S, self._closed)
        await self.trigger("disconnect", reason or self.server.reason.SERVER_DISCONNECT)

    async def trigger(self, event: str, *args: Any) -> Any:
        """Run the server's handler of this connection's `connect` or `disconnect`."""
        return await self.server._trigger_event(event, self.sid, *args, run_async=False)

    def _closed(self) -> None:
        self.closed = True
        for timer in (self.ping_timer, self.last_poll_timer):
            if timer is not None:  # they hold the socket (and its outbox) until they run
                timer.cancel()
        self.ping_timer = self.last_poll_timer = None
        self.queue.end()  # on a WebSocket, it is closed once what waits is sent
        if self.upgrade_transport is not None:  # a WebSocket still upgrading: no use now
            self.upgrade_transport.abort()


_ENDING: set[asyncio.Task] = set()  # WebSockets being closed, kept until they are


async def _received(response: web.WebSocketResponse) -> str | bytes:
    message = await response.receive()
    if not isinstance(message.data, (str, bytes)):
        raise OSError("the WebSocket closed")
    return message.data


def kept_socket_calls() -> dict[str, Any]:
    """python-engineio's socket calls that `sio.instrument()` replaces, to put back after it
    (it patches the class for every server of the process, to count packets and bytes)."""
    socket_class = engineio.async_socket.AsyncSocket
    return {name: socket_class.__dict__[name] for name in INSTRUMENTED_SOCKET_CALLS}


def put_back_socket_calls(kept: dict[str, Any]) -> None:
    for name, call in kept.items():
        setattr(engineio.async_socket.AsyncSocket, name, call)
