"""Engine.IO connections' lives: opening, ping checks, connect timeout, closing.

Replaces python-engineio's service task (`_service_task`: ping checks spread over a ping
timeout, holding ids rather than a copy of every socket), its `disconnect` (a long-polling
socket is kept for the poll that takes its CLOSE), its queue factory (`create_queue`: each
socket gets an `Outbox`, and one that overflows cuts its client) and wraps its connection
events (each socket becomes a `GatewaySocket`; the gateway is told when a connection opens and
ends; a polling client that closes is answered at once). Closing a transport here is not a
Socket.IO disconnect: clients reconnect by themselves and catch up by replay.

Library internals touched: `AsyncServer._service_task`, `service_task_event`,
`start_service_task`, `service_task_handle` and `create_queue`; its `handlers` (wrapped); a
`closing_turns` and `connecting_turns` (`Turns`) set on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import engineio
import engineio.async_socket

from realtime.engine.answers import connect_environ
from realtime.engine.outbox import Outbox
from realtime.engine.packets import NOOP
from realtime.engine.socket import LAST_POLL_WAIT_S, GatewaySocket
from realtime.engine.turns import Turns
from realtime.limits import Bounds
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)


# connections whose closing is handled per turn of the loop (~150 µs each: ~15 ms a turn)
CLOSES_PER_TURN = 100
# namespace connects (a token verified, rooms entered: ~250 µs each) handled per turn
CONNECTS_PER_TURN = 50


class Lifecycle:
    """Installs the lives of one server's Engine.IO connections, and closes them."""

    def __init__(
        self,
        eio: engineio.AsyncServer,
        bounds: Bounds,
        tasks: TaskKeeper,
        connections: weakref.WeakKeyDictionary,
        connect_timeout_s: float | None = None,
    ):
        self._eio = eio
        self.bounds = bounds
        self._tasks = tasks
        self._connections = connections  # the TCP transport under each WebSocket
        # how long a connection may stay without connecting a namespace (None: for ever)
        self._connect_timeout_s = connect_timeout_s
        self.slow_clients_closed = 0
        self._overflow = self._overflowed  # (one bound method for every outbox)
        self.opened: Callable[[str], None] = _nothing
        self.closed: Callable[[str], None] = _nothing
        eio.create_queue = self._create_outbox  # each socket's queue (base_socket.py)
        # closes handled a few per turn of the loop (`Turns`), here and by the dispatcher
        eio.closing_turns = self._closing = Turns(CLOSES_PER_TURN)
        eio.connecting_turns = Turns(CONNECTS_PER_TURN)
        eio._service_task = self._sweep
        self._forget = eio.disconnect
        eio.disconnect = self._disconnect
        self.install()

    async def _sweep(self) -> None:
        """python-engineio's service task: each socket's ping check and the closed sockets'
        removal, spread over a ping timeout. Its loop holds a copy of every socket while it
        sleeps (a closed one is kept up to 20 s: a storm of connections piles them up); this
        one holds their ids."""
        eio = self._eio
        stop = eio.service_task_event = eio.create_event()
        while not stop.is_set():
            sids = list(eio.sockets)
            interval = eio.ping_timeout / max(1, len(sids))
            for sid in sids or [None]:
                socket = eio.sockets.get(sid) if sid is not None else None
                try:
                    if socket is not None and socket.closed:
                        if eio.sockets.get(sid) is socket:
                            del eio.sockets[sid]
                    elif socket is not None and not socket.closing:
                        if await socket.check_ping_timeout():
                            self._check_connect_timeout(socket)
                except Exception:
                    logger.exception("ping check failed", extra={"eio_sid": sid})
                socket = None  # not kept while this waits
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()
                if stop.is_set():
                    return

    def _check_connect_timeout(self, socket: engineio.async_socket.AsyncSocket) -> None:
        """Close a connection that has connected no namespace within the connect timeout
        (the protocol's `connectTimeout`): it has no use but holding a socket."""
        timeout_s = self._connect_timeout_s
        if (
            timeout_s is not None
            and type(socket) is GatewaySocket
            and not socket.namespaced
            and time.monotonic() - socket.opened_at > timeout_s
        ):
            socket.namespaced = True  # closed once
            logger.info("connect timeout", extra={"eio_sid": socket.sid})
            self._tasks.spawn(self.close(socket.sid), name="connect timeout")

    async def _disconnect(self, sid: str | None = None) -> None:
        """python-engineio's `disconnect`, which closes a socket and forgets it at once: a
        long-polling one is kept for its last poll (`GatewaySocket._close_after_last_poll`),
        and forgotten by the sweep or that poll."""
        socket = self._eio.sockets.get(sid) if sid is not None else None
        if type(socket) is GatewaySocket and not socket.upgraded:
            await socket.close(reason=self._eio.reason.SERVER_DISCONNECT)
        else:
            await self._forget(sid)

    def _create_outbox(self, *args: Any, **kwargs: Any) -> Outbox:
        return Outbox(self.bounds, self._overflow)

    def _overflowed(self, outbox: Outbox) -> None:
        for eio_sid, socket in list(self._eio.sockets.items()):
            if socket.queue is outbox:
                logger.warning(
                    "slow client cut off",
                    extra={"sid": eio_sid, "backlog": outbox.qsize(), "bytes": outbox.bytes},
                )
                self.slow_clients_closed += 1
                self._tasks.spawn(self.close(eio_sid, abort=True), name="slow client cut")
                return

    def install(self) -> None:
        """Wrap python-socketio's handlers of Engine.IO's connection events (again after
        `sio.instrument()` has put its own in their place)."""
        eio = self._eio
        # python-socketio's own handlers of Engine.IO's connection events
        handle_connect = eio.handlers["connect"]
        handle_disconnect = eio.handlers["disconnect"]

        async def on_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
            if eio.start_service_task:  # the ping checks of every socket: started once
                eio.start_service_task = False
                eio.service_task_handle = eio.start_background_task(self._sweep)
            socket = eio.sockets[eio_sid]
            if type(socket) is engineio.async_socket.AsyncSocket:
                socket.__class__ = GatewaySocket  # before its pings and its transport start
            socket.opened_at = time.monotonic()
            if "aiohttp.request" in environ:  # python-socketio keeps it for the connection's life
                environ = connect_environ(environ["aiohttp.request"])
            accepted = await handle_connect(eio_sid, environ)
            if accepted is not False:
                self.opened(eio_sid)
            return accepted

        async def on_disconnect(eio_sid: str, reason: Any) -> None:
            try:
                await self._closing.take()
            finally:  # (cancelled while it waited, the socket is still forgotten)
                try:
                    await handle_disconnect(eio_sid, reason)
                finally:
                    self.closed(eio_sid)
            # Answer a polling client's pending GET when that client closes the connection:
            # python-engineio closes such a socket without writing to it, so the client's
            # outstanding long-poll waits for the ping interval (25 s) before it returns, and
            # python clients wait for it inside `disconnect()` (and a refused `connect()`).
            # Engine.IO's reference server answers it at once, with a NOOP; so do we.
            socket = eio.sockets.get(eio_sid)
            if (
                reason == eio.reason.CLIENT_DISCONNECT
                and socket is not None
                and not socket.upgraded
            ):
                socket.queue.put_nowait(NOOP)

        eio.on("connect", on_connect)
        eio.on("disconnect", on_disconnect)

    # -- closing ----------------------------------------------------------------------------
    async def close(self, eio_sid: str, abort: bool = False) -> None:
        """Close one client's transport, not with a Socket.IO disconnect (which would tell
        the client not to come back) nor an Engine.IO CLOSE packet (python clients do not
        reconnect after one): the connection just ends, and clients reconnect.

        A `None` in the socket's outbox ends its transport: on WebSocket the socket is closed,
        on long-polling the pending GET returns and the next finds no session. With `abort`,
        the TCP connection is cut at once, for a client that does not read.
        """
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        if not abort and not socket.upgraded and not socket.queue.empty():
            # a long-polling client fetches what it was last sent (say, `auth_error` and the
            # DISCONNECT) with its next poll: the session must outlive that poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_POLL_WAIT_S):
                    await socket.queue.join()
            if socket.closed:
                return
        connection = self._connections.get(socket)
        socket.queue.put_nowait(None)
        await socket.close(wait=False, abort=True, reason=self._eio.reason.SERVER_DISCONNECT)
        if abort and connection is not None:
            connection.abort()

    async def wait_for_room(self, eio_sid: str, packets: int, size_bytes: int) -> None:
        """Return once this client's outbox has room for `packets` more packets of
        `size_bytes` in all, and as much again (at once if it has, or the client is gone): how
        a long replay keeps to the pace of the client while live events still fit."""
        socket = self._eio.sockets.get(eio_sid)
        if socket is not None and isinstance(socket.queue, Outbox):
            await socket.queue.wait_for_room(
                max(0, self.bounds.packets - 2 * packets),
                max(0, self.bounds.bytes - 2 * size_bytes),
            )

    async def close_all(self) -> None:
        await asyncio.gather(
            *(self.close(sid) for sid in list(self._eio.sockets)), return_exceptions=True
        )

    def end_connection(self, eio_sid: str) -> None:
        self._tasks.spawn(self.close(eio_sid), name="end a connection")


def _nothing(eio_sid: str) -> None:
    pass
