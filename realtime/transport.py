"""Adjustments to python-socketio and python-engineio, kept in this one place.

- Client events and lifecycle events: python-socketio hands a client's event to the same
  `trigger_event` as its own lifecycle calls, so a client could send an event named `connect`
  or `disconnect` and reach those handlers. `GatewayServer` hands a client event with a
  reserved name (or a name that is not a string) over as `RefusedEventName` instead.
- Binary events: the protocol has none, and python-socketio would keep every attachment a
  client announces until the packet completes; `GatewayServer` refuses them at once.
- Transport lifecycle: the gateway is told when an Engine.IO connection opens and closes
  (`TransportControl.watch`), so that a connection that never authenticates is closed.
- WebSocket per-message compression: python-engineio's aiohttp driver always negotiates it (its
  `WebSocketResponse` is built with aiohttp's default `compress=True`), which costs about four
  times the memory per connection. With `WS_COMPRESSION=false` (the default) the driver is
  handed a request without the client's `Sec-WebSocket-Extensions` offer, so nothing is
  negotiated.
- Slow clients: python-engineio's per-socket queue of outgoing packets has no bound, so a
  client that stops reading would grow the server's memory for as long as it stays connected.
  Here each queue is bounded in packets and in bytes; past either bound the client's transport
  is closed.
- Long-polling responses carry at most `engineio.payload.Payload.max_decode_packets` (16)
  packets: python-engineio clients refuse a longer payload ("Unexpected packet from server")
  and drop the connection, which a burst of events (or a replay) would otherwise cause.
- Long-polling clients that close are answered at once (see `_install_lifecycle`).
- Closing a transport (`close`) is not a Socket.IO disconnect: clients reconnect by themselves
  and catch up by replay.

`tests/test_transport.py` fails if the library internals this relies on move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import Callable
from typing import Any

import engineio
import engineio.packet
import engineio.payload
import socketio

from realtime.config import Settings
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)

EXTENSIONS_HEADER = "Sec-WebSocket-Extensions"

# Event names the Socket.IO libraries (server, python and JS clients) give a meaning of their own.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
) | frozenset(socketio.base_server.BaseServer.reserved_events)


class RefusedEventName:
    """What a namespace receives in place of a client event's name when the event cannot be
    dispatched: its name is reserved, or not a string, or it is a binary event. It can be
    refused, never mistaken for the server's own lifecycle events."""

    __slots__ = ("name", "reason")

    def __init__(self, name: Any, reason: str):
        self.name = name
        self.reason = reason  # what the refusal says

    def __str__(self) -> str:
        return str(self.name)


# Socket.IO packet types with binary attachments (BINARY_EVENT, BINARY_ACK)
_BINARY_PACKETS = (str(socketio.packet.BINARY_EVENT), str(socketio.packet.BINARY_ACK))


class GatewayServer(socketio.AsyncServer):
    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # The protocol has no binary events, and python-socketio would hold every attachment
        # a client announces (a count of up to nine digits) until the packet is complete: a
        # binary event is refused at once and its attachments never kept.
        if isinstance(data, (bytes, bytearray)):
            return  # an attachment of a binary packet refused below
        if isinstance(data, str) and data[:1] in _BINARY_PACKETS:
            await self._refuse_binary(eio_sid, data)
            return
        await super()._handle_eio_message(eio_sid, data)

    async def _refuse_binary(self, eio_sid: str, data: str) -> None:
        try:
            header = self.packet_class(encoded_packet=data)
        except Exception:
            return  # not even a packet: nothing to answer
        if header.packet_type == socketio.packet.BINARY_EVENT:
            refused = RefusedEventName("binary event", "binary events are not accepted")
            await super()._handle_event(eio_sid, header.namespace, header.id, [refused])

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        # Client events, and only they, enter here (python-socketio's own `connect` and
        # `disconnect` calls come from `_handle_connect` / `_handle_disconnect`).
        if not isinstance(data, list) or not data:
            data = [RefusedEventName(None, "an event needs a name")]
        elif not isinstance(data[0], str):
            data = [RefusedEventName(data[0], "an event name must be a string"), *data[1:]]
        elif data[0] in RESERVED_EVENTS:
            refused = RefusedEventName(data[0], f"the event name {data[0]!r} is reserved")
            data = [refused, *data[1:]]
        await super()._handle_event(eio_sid, namespace, id, data)


def create_socketio_server(
    settings: Settings, tasks: TaskKeeper
) -> tuple[socketio.AsyncServer, TransportControl]:
    """The Socket.IO server, with the adjustments of this module installed."""
    client_manager = None
    if settings.redis_url:
        client_manager = socketio.AsyncRedisManager(settings.redis_url)
    sio = GatewayServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        # Events of one socket are handled in arrival order: `authenticate` then `join_room`
        # never race.
        async_handlers=False,
        # None: same origin only (clients that send no Origin, like mobile SDKs, pass)
        cors_allowed_origins=list(settings.cors_origins) or None,
        max_http_buffer_size=settings.max_payload_bytes,
        logger=False,
        engineio_logger=False,
    )
    transports = TransportControl(
        sio.eio,
        settings.ws_compression,
        Bounds(settings.client_backlog_max, settings.client_backlog_max_bytes),
        tasks,
    )
    return sio, transports


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    """How much may wait in one client's outgoing queue, in packets and in bytes."""

    packets: int
    bytes: int


class TransportControl:
    """Installs the adjustments on one Engine.IO server and closes its clients' transports."""

    def __init__(
        self, eio: engineio.AsyncServer, compression: bool, bounds: Bounds, tasks: TaskKeeper
    ):
        self._eio = eio
        self.bounds = bounds
        # the TCP transport under each WebSocket, to cut a stalled one off
        self._connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._tasks = tasks
        self.slow_clients_closed = 0
        self._opened: Callable[[str], None] = _nothing
        self._closed: Callable[[str], None] = _nothing
        self._install_driver(compression)
        eio.create_queue = self._create_backlog  # each socket's outgoing queue (base_socket.py)
        self._install_lifecycle()

    def watch(self, opened: Callable[[str], None], closed: Callable[[str], None]) -> None:
        """Call `opened(eio_sid)` when a client's Engine.IO connection opens (before any
        namespace connects) and `closed(eio_sid)` when it ends, whatever the cause."""
        self._opened, self._closed = opened, closed

    def _install_driver(self, compression: bool) -> None:
        driver = self._eio._async["websocket"]  # the aiohttp driver's WebSocket wrapper class
        connections = self._connections

        class GatewayWebSocket(driver):  # type: ignore[misc, valid-type]
            async def __call__(self, environ: dict[str, Any]) -> Any:
                request = environ["aiohttp.request"]
                if not compression and EXTENSIONS_HEADER in request.headers:
                    headers = request.headers.copy()
                    del headers[EXTENSIONS_HEADER]
                    environ = {**environ, "aiohttp.request": request.clone(headers=headers)}
                # the handler is the engine.io socket's bound `_websocket_handler`
                connections[self.handler.__self__] = request.transport
                return await super().__call__(environ)

        self._eio._async = {**self._eio._async, "websocket": GatewayWebSocket}

    def _create_backlog(self, *args: Any, **kwargs: Any) -> asyncio.Queue:
        return _Backlog(self.bounds, self._overflowed)

    def _overflowed(self, backlog: _Backlog) -> None:
        for eio_sid, socket in list(self._eio.sockets.items()):
            if socket.queue is backlog:
                logger.warning(
                    "slow client cut off",
                    extra={"sid": eio_sid, "backlog": backlog.qsize(), "bytes": backlog.bytes},
                )
                self.slow_clients_closed += 1
                self._tasks.spawn(self.close(eio_sid, abort=True), name="slow client cut")
                return

    def _install_lifecycle(self) -> None:
        eio = self._eio
        # python-socketio's own handlers of Engine.IO's connection events
        handle_connect = eio.handlers["connect"]
        handle_disconnect = eio.handlers["disconnect"]

        async def on_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
            accepted = await handle_connect(eio_sid, environ)
            if accepted is not False:
                self._opened(eio_sid)
            return accepted

        async def on_disconnect(eio_sid: str, reason: Any) -> None:
            try:
                await handle_disconnect(eio_sid, reason)
            finally:
                self._closed(eio_sid)
            # Answer a polling client's pending GET when that client closes the connection:
            # python-engineio closes such a socket without writing to it, so the client's
            # outstanding long-poll waits for the ping interval (25 s) before it returns, and
            # python clients wait for it inside `disconnect()` (and a refused `connect()`).
            # Engine.IO's reference server answers it at once; so do we, with a CLOSE packet.
            socket = eio.sockets.get(eio_sid)
            if (
                reason == eio.reason.CLIENT_DISCONNECT
                and socket is not None
                and not socket.upgraded
            ):
                socket.queue.put_nowait(engineio.packet.Packet(engineio.packet.CLOSE))

        eio.on("connect", on_connect)
        eio.on("disconnect", on_disconnect)

    async def close(self, eio_sid: str, abort: bool = False) -> None:
        """Close one client's transport, not with a Socket.IO disconnect (which would tell
        the client not to come back) nor an Engine.IO CLOSE packet (python clients do not
        reconnect after one): the connection just ends, and clients reconnect.

        A `None` in the socket's queue ends its writer: on WebSocket the socket is closed, on
        long-polling the pending GET returns and the next finds no session. With `abort`, the
        TCP connection is cut at once, for a writer stuck on a client that does not read.
        """
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        connection = self._connections.get(socket)
        socket.queue.put_nowait(None)
        await socket.close(wait=False, abort=True, reason=self._eio.reason.SERVER_DISCONNECT)
        if abort and connection is not None:
            connection.abort()

    async def wait_for_room(self, eio_sid: str, packets: int, size_bytes: int) -> None:
        """Return once this client's backlog has room for `packets` more packets of
        `size_bytes` in all, and as much again (at once if it has, or the client is gone): how
        a long replay keeps to the pace of the client while live events still fit."""
        socket = self._eio.sockets.get(eio_sid)
        if socket is not None and isinstance(socket.queue, _Backlog):
            await socket.queue.wait_for_room(
                max(0, self.bounds.packets - 2 * packets),
                max(0, self.bounds.bytes - 2 * size_bytes),
            )

    async def close_all(self) -> None:
        await asyncio.gather(
            *(self.close(sid) for sid in list(self._eio.sockets)), return_exceptions=True
        )


# what python-engineio clients accept in one long-polling payload
PACKETS_PER_POLL = engineio.payload.Payload.max_decode_packets


class _Backlog(asyncio.Queue):
    """A socket's outgoing packets, bounded in packets and in bytes: past either bound a packet
    is dropped and `overflow` is called, once. One packet always fits in an empty queue, and
    `None` (the writer's wake-up to stop) always gets in.

    engine.io's `poll()` takes one packet with `get()`, then more with `get_nowait()` until the
    queue is empty: here it stops after `PACKETS_PER_POLL`, the rest going in the next poll.
    """

    def __init__(self, bounds: Bounds, overflow: Callable[[_Backlog], None]):
        super().__init__()
        self._bounds = bounds
        self._overflow = overflow
        self._overflowed = False
        self.bytes = 0  # what the queued packets weigh
        self._room: list[tuple[int, int, asyncio.Future]] = []  # (packets, bytes, waiter)
        self._taken = 0  # packets taken since the last `get()`: one poll's worth

    async def get(self) -> Any:
        self._taken = 0
        return await super().get()  # which takes the packet with `get_nowait()`

    def get_nowait(self) -> Any:
        if self._taken >= PACKETS_PER_POLL:
            raise asyncio.QueueEmpty
        item = super().get_nowait()
        self._taken += 1
        self.bytes -= _weight(item)
        if self._room:
            count, size = self.qsize(), self.bytes
            for waiter in [w for w in self._room if count <= w[0] and size <= w[1]]:
                self._room.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(None)
        return item

    async def wait_for_room(self, packets: int, size_bytes: int) -> None:
        """Return once at most `packets` packets of at most `size_bytes` are queued."""
        if (self.qsize() <= packets and self.bytes <= size_bytes) or self._overflowed:
            return
        waiter = (packets, size_bytes, asyncio.get_running_loop().create_future())
        self._room.append(waiter)
        try:
            await waiter[2]
        finally:
            if waiter in self._room:
                self._room.remove(waiter)

    def put_nowait(self, item: Any) -> None:
        if item is not None:
            weight = _weight(item)
            if self.qsize() >= self._bounds.packets or (
                self.qsize() > 0 and self.bytes + weight > self._bounds.bytes
            ):
                if not self._overflowed:
                    self._overflowed = True
                    self._overflow(self)
                return
            self.bytes += weight
        super().put_nowait(item)


def _weight(item: Any) -> int:
    """About what an Engine.IO packet weighs on the wire: its encoded data (text or binary)."""
    data = getattr(item, "data", None)
    return len(data) + 1 if isinstance(data, (str, bytes, bytearray)) else 1


def _nothing(eio_sid: str) -> None:
    pass
