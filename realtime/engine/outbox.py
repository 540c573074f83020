"""One socket's outgoing packets: the flow control of the engine.

Replaces python-engineio's per-socket `asyncio.Queue` (its `create_queue`) and WebSocket
writer task: `Outbox` takes the same calls, is bounded in packets and bytes (the library's
queue had no bound), writes a frame straight to the connection when nothing waits before it,
and drains through aiohttp, at the client's pace, when the connection pushes back. A
long-poll takes at most what python-engineio clients accept in one payload.

Library internals touched: none (python-engineio calls it as its queue; see `socket.py`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import engineio.payload
from aiohttp import web

from realtime.engine.packets import NOOP, SharedPacket, websocket_frame, weight
from realtime.limits import Bounds

# what may wait in a WebSocket connection's own write buffer before packets queue in its
# Outbox instead (where they are bounded, and drained at the pace of the client)
DIRECT_WRITE_LIMIT = 64 * 1024
# how long a WebSocket whose client has gone quiet may take to close before it is cut
CLOSE_TIMEOUT_S = 10.0
NOTHING = object()  # `Outbox.ready()`: nothing yet
# what python-engineio clients accept in one long-polling payload
PACKETS_PER_POLL = engineio.payload.Payload.max_decode_packets


class Outbox:
    """One socket's outgoing packets, in place of python-engineio's `asyncio.Queue` (the same
    calls). Bounded in packets and in bytes: past either bound a packet is dropped and
    `overflow` is called, once; one packet always fits in an empty outbox, and `None` (the end
    of the transport) always gets in. On a WebSocket (`attach`), a packet put while nothing
    waits before it is written at once, as one frame, unless the connection's write buffer is
    past `DIRECT_WRITE_LIMIT`; otherwise a drain task sends what waits, in order, through
    aiohttp (at the client's pace); a `traffic` (an Admin UI on) counts the frames' bytes.
    Before that, packets wait for a poll (`get()`, or `ready()` and `waiter()` by callback),
    which takes at most `PACKETS_PER_POLL`."""

    __slots__ = (
        "_bounds",
        "_direct",
        "_draining",
        "_emptied",
        "_ended",
        "_getters",
        "_items",
        "_overflow",
        "_room",
        "_taken",
        "_transport",
        "_ws",
        "bytes",
        "overflowed",
        "traffic",
    )

    def __init__(self, bounds: Bounds, overflow: Callable[[Outbox], None]):
        self._bounds = bounds
        self._overflow = overflow
        self.overflowed = False
        self.bytes = 0  # what the waiting packets weigh
        self._items: collections.deque | None = None  # made when something has to wait
        self._getters: list[asyncio.Future] | None = None
        self._room: list[tuple[int, int, asyncio.Future]] | None = None  # (packets, bytes, w)
        self._emptied: asyncio.Future | None = None  # for `join()`
        self._taken = 0  # packets taken since the last `get()`: one poll's worth
        self._ws: web.WebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self._direct = False  # whether frames may be written straight to the transport
        self._draining: asyncio.Task | None = None
        self._ended = False  # its WebSocket is closed: nothing more will be sent
        self.traffic: Any = None  # the endpoint's `Traffic` while an Admin UI is on

    # -- asyncio.Queue's calls, as python-engineio makes them -------------------------------
    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        queued = len(self._items) if self._items else 0
        if item is not None:
            if self.overflowed or self._ended:
                return  # cut off, or closed: no later (smaller) packet may get past a dropped one
            if not queued and self._direct and self._draining is None and self._write(item):
                return  # the usual way on a WebSocket: the frame is on its way
            size = weight(item)
            bounds = self._bounds
            if queued >= bounds.packets or (queued and self.bytes + size > bounds.bytes):
                if not self.overflowed:
                    self.overflowed = True
                    self._overflow(self)
                return
            self.bytes += size
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        if self._ws is not None:
            if self._draining is None:
                self._draining = asyncio.get_running_loop().create_task(self._drain())
        elif self._getters:
            self._wake_getter(None)

    def get_nowait(self) -> Any:
        if not self._items or self._taken >= PACKETS_PER_POLL:
            raise asyncio.QueueEmpty
        self._taken += 1
        return self._pop()

    async def get(self) -> Any:
        while (item := self.ready()) is NOTHING:
            getter = self.waiter()
            try:
                await getter
            except BaseException:
                self.forget(getter, passing_on=True)
                raise
            self.forget(getter)
        return item

    def ready(self) -> Any:
        """What `get()` returns now (a poll left over from before an upgrade ends with a NOOP),
        or `NOTHING` when it would wait."""
        if self._items:
            self._taken = 0  # a concurrent poll may have taken some meanwhile: counted anew
            return self.get_nowait()
        return NOTHING if self._ws is None else NOOP

    def waiter(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future:
        """A future done when a packet may have come for a poll (`ready()` says), given back
        to `forget` once done or given up."""
        getter = (loop or asyncio.get_running_loop()).create_future()
        if self._getters is None:
            self._getters = []
        self._getters.append(getter)
        return getter

    def forget(self, getter: asyncio.Future, passing_on: bool = False) -> None:
        self._getters.remove(getter)
        if not self._getters:
            self._getters = None
        elif passing_on and self._items and not getter.cancelled():
            self._wake_getter(None)  # woken, but it gives up: another poll takes the wake

    def waited_on(self) -> bool:  # whether a poll waits for what comes next
        return bool(self._getters)

    def task_done(self) -> None:
        pass  # `join()` waits for the outbox to be empty: nothing to count

    async def join(self) -> None:
        if self._items:
            if self._emptied is None:
                self._emptied = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._emptied)

    # -- the gateway's own calls ------------------------------------------------------------
    async def wait_for_room(self, packets: int, size_bytes: int) -> None:
        """Return once at most `packets` packets of at most `size_bytes` wait here."""
        if (self.qsize() <= packets and self.bytes <= size_bytes) or self.overflowed or self._ended:
            return
        waiter = (packets, size_bytes, asyncio.get_running_loop().create_future())
        if self._room is None:
            self._room = []
        self._room.append(waiter)
        try:
            await waiter[2]
        finally:
            if self._room and waiter in self._room:
                self._room.remove(waiter)

    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """From now on, packets go onto this WebSocket; straight to its transport unless
        per-message compression was negotiated (aiohttp compresses)."""
        self._ws, self._transport = ws, transport
        self._direct = not ws.compress
        if self._items and self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        for getter in self._getters or ():  # polls still waiting end (with a NOOP)
            if not getter.done():
                getter.set_result(None)

    def end(self) -> None:
        """The socket closed: on a WebSocket, close it once what waits is sent, and cut the
        connection if that has not happened within `CLOSE_TIMEOUT_S` (a client that does not
        read keeps the drain waiting, and nothing reads a closed socket's connection); on
        long-polling, a poll that waits for nothing more returns."""
        if self._ws is not None:
            transport = self._transport
            self.put_nowait(None)
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, _cut_if_open, transport)
        elif self._getters and not self._items:
            self.put_nowait(None)  # a long-poll still waiting returns

    async def finish(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """The WebSocket's read side ended: close it once what waits is sent, or cut the
        connection if that takes longer than `CLOSE_TIMEOUT_S` (a client that reads no more)."""
        if self._ws is ws:
            self.put_nowait(None)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if self._draining is not None:
                    await asyncio.shield(self._draining)
                if not ws.closed:
                    await ws.close()
        except TimeoutError:
            transport.abort()

    # -- inside -----------------------------------------------------------------------------
    def _write(self, item: Any) -> bool:
        """Write one packet's frame to the connection now, if it takes it at once."""
        transport = self._transport
        if (
            self._ws.closed  # a close frame is (being) sent: nothing may follow it
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT
        ):
            return False
        frame = item.frame if type(item) is SharedPacket else websocket_frame(item.encode())
        transport.write(frame)
        if self.traffic is not None:
            self.traffic.sent += len(frame)
        return True

    async def _drain(self) -> None:
        """Send what waits, in order, through aiohttp: it waits while the client does not
        read. A `None` closes the WebSocket; a failure drops what waits (the connection is
        gone, as python-engineio's writer assumes too)."""
        ws = self._ws
        try:
            while self._items and self._ws is ws:
                item = self._pop()
                if item is None:
                    self._detach()
                    await ws.close()
                    break
                encoded = item.encode()
                await (ws.send_str if isinstance(encoded, str) else ws.send_bytes)(encoded)
                if self.traffic is not None:
                    self.traffic.frame_sent(encoded)
        except Exception:
            self._detach()
            self._items = None
            self.bytes = 0
            self._notify_emptied()
            if not ws.closed:
                await ws.close()
        finally:
            self._draining = None

    def _detach(self) -> None:
        self._ws = self._transport = None
        self._direct = False
        self._ended = True
        for *_, waiter in self._room or ():  # nothing more will be sent: waiting is over
            if not waiter.done():
                waiter.set_result(None)
        self._room = None

    def _pop(self) -> Any:
        item = self._items.popleft()
        if not self._items:
            self._items = None
            self._notify_emptied()
        if item is not None:
            self.bytes -= weight(item)
            if self._room:
                count, size = self.qsize(), self.bytes
                for waiter in [w for w in self._room if count <= w[0] and size <= w[1]]:
                    self._room.remove(waiter)
                    if not waiter[2].done():
                        waiter[2].set_result(None)
        return item

    def _notify_emptied(self) -> None:
        if self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)
        self._emptied = None

    def _wake_getter(self, woken: asyncio.Future | None) -> None:
        for getter in self._getters or ():
            if getter is not woken and not getter.done():
                getter.set_result(None)
                return


def _cut_if_open(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.abort()
