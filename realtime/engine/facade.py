"""`Engine`: what the rest of the gateway uses of the engine, by Socket.IO sid.

The gateway knows a socket by its sid and a connection by the id the engine hands it when it
opens (`watch`); it enters and leaves rooms, sends, disconnects, closes and waits here, and
holds neither python-socketio's server nor an Engine.IO id of its own finding.

The emit path (`deliver`): python-socketio encodes an event once but then starts one task per
recipient and waits for them all, and python-engineio's writer wakes once per packet. Here an
event is encoded once and handed to each recipient's `Outbox` in one synchronous pass; acks,
the library's own packets and control events enter the same outboxes in call order, so each
socket's order holds.

Library internals touched: none (the manager's and the server's public calls, and
`eio.sockets`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web

from realtime.engine.admin import AdminReport
from realtime.engine.dispatch import ADMIN_NAMESPACE, NAMESPACE, GatewayServer
from realtime.engine.endpoint import Endpoint
from realtime.engine.lifecycle import Lifecycle
from realtime.engine.membership import NO_ROOMS, RoomIndex
from realtime.engine.outbox import Bounds, Outbox
from realtime.engine.packets import SharedPacket, encode_event
from realtime.limits import Admission
from realtime.tasks import TaskKeeper


class Engine:
    """One Socket.IO server with the engine's adjustments installed."""

    def __init__(
        self,
        sio: GatewayServer,
        compression: bool,
        bounds: Bounds,
        tasks: TaskKeeper,
        connect_timeout_s: float | None = None,
    ):
        self.sio = sio  # for the composition root and the handlers (namespaces register here)
        self._eio = sio.eio
        self.bounds = bounds
        self._endpoint = Endpoint(sio.eio, compression)
        self._lifecycle = Lifecycle(
            sio.eio, bounds, tasks, self._endpoint.connections, connect_timeout_s
        )
        sio.end_connection = self._lifecycle.end_connection
        self.admin: AdminReport | None = None  # with ADMIN_UI_USERNAME
        # each socket's rooms, kept by the manager (the conformance app's has no index)
        manager = sio.manager
        self._rooms_by_sid = manager.named_rooms if isinstance(manager, RoomIndex) else {}

    @property
    def slow_clients_closed(self) -> int:
        return self._lifecycle.slow_clients_closed

    def watch(
        self,
        opened: Callable[[str], None],
        closed: Callable[[str], None],
        admit: Callable[[Mapping[str, str]], Admission] | None = None,
    ) -> None:
        """Call `opened(connection)` when a client's Engine.IO connection opens (before any
        namespace connects) and `closed(connection)` when it ends, whatever the cause; and
        `admit(environ)` before one opens: one `REFUSED` opens with `RATE_LIMITED` in its
        environ, one `TURNED_AWAY` is answered 429."""
        self._lifecycle.opened, self._lifecycle.closed = opened, closed
        if admit is not None:
            self._endpoint.admit = admit

    def report_to(self, admin: AdminReport) -> None:
        """Report to the Admin UI; `sio.instrument()` has put its own handlers of Engine.IO's
        connection events in place of the lifecycle's (which now wrap them); the endpoint
        counts the bytes its transports carry for it."""
        self.admin = admin
        self._endpoint.traffic = admin.traffic
        self._lifecycle.install()

    def attach(self, app: web.Application, path: str) -> None:
        """Mount the Engine.IO endpoint on `path`."""
        self._endpoint.attach(app, path)

    # -- sockets and connections --------------------------------------------------------------
    def connection_of(self, sid: str) -> str | None:
        """The connection that carries this socket (None: it is gone)."""
        return self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)

    def socket_on(self, connection: str) -> str | None:
        """The socket this connection carries on namespace `/`, if it has connected it."""
        return self.sio.manager.sid_from_eio_sid(connection, NAMESPACE)

    def carries_admin_ui(self, connection: str) -> bool:
        """Whether this connection has connected the Admin UI's namespace (which only the
        right credentials connect)."""
        return self.sio.manager.sid_from_eio_sid(connection, ADMIN_NAMESPACE) is not None

    async def disconnect(self, sid: str) -> None:
        """A Socket.IO disconnect of this socket (clients do not reconnect after one)."""
        await self.sio.disconnect(sid)

    async def close(self, sid: str, abort: bool = False) -> None:
        """Close the connection that carries this socket (see `close_connection`)."""
        connection = self.connection_of(sid)
        if connection is not None:
            await self.close_connection(connection, abort)

    async def close_connection(self, connection: str, abort: bool = False) -> None:
        """End a client's transport, not with a Socket.IO disconnect: clients reconnect by
        themselves and catch up by replay. With `abort`, its TCP connection is cut at once."""
        await self._lifecycle.close(connection, abort)

    async def close_all(self) -> None:
        if self.admin is not None:
            await self.admin.shutdown()
        await self._lifecycle.close_all()

    # -- rooms --------------------------------------------------------------------------------
    def enter(self, sid: str, room: str) -> None:
        """Put the socket in the room, at once: no event can go out meanwhile."""
        self.sio.manager.basic_enter_room(sid, NAMESPACE, room)

    async def leave(self, sid: str, room: str) -> None:
        await self.sio.leave_room(sid, room)

    def rooms_of(self, sid: str) -> Collection[str]:
        """The rooms the socket entered (read in place: copy it to keep it)."""
        return self._rooms_by_sid.get(sid, NO_ROOMS)

    def sent_from(self, sid: str, room: str) -> int | None:
        """The sequence after which the socket has had all the room's events, as marked
        since it entered the room (None: not in it, or not marked)."""
        return self._rooms_by_sid.get(sid, NO_ROOMS).get(room)

    def mark_sent_from(self, sid: str, room: str, sequence: int) -> None:
        """Mark it (`sent_from`), while the socket is in the room: it goes when it leaves."""
        rooms = self._rooms_by_sid.get(sid)
        if rooms is not None and room in rooms:
            rooms[room] = sequence

    def members(self, room: str) -> list[str]:
        """The sids of this instance's sockets in the room."""
        return list(self._index.room_members(NAMESPACE).get(room, ()))

    def room_figures(self, limit: int) -> tuple[int, int, dict[str, int]]:
        """How many rooms have members here, how many memberships there are, and the `limit`
        largest rooms (largest first, ties by name)."""
        return self._index.room_figures(NAMESPACE, limit)

    @property
    def _index(self) -> RoomIndex:
        manager = self.sio.manager
        assert isinstance(manager, RoomIndex)
        return manager

    # -- sending ------------------------------------------------------------------------------
    def deliver(self, event: str, payload: Any, rooms: Iterable[str] | None) -> int:
        """Send `event` to this instance's sockets in `rooms` (None: every socket), encoded
        once, without a task or an await; returns how many sockets it went to."""
        if self.admin is not None:
            rooms = None if rooms is None else list(rooms)
            self.admin.sent(event, lambda: (sid for sid, _ in self._participants(rooms)), payload)
        return self._hand_over(encode_event(event, payload), self._in_rooms(rooms))

    def send(self, sid: str, event: str, payload: Any) -> None:
        """Send `event` to one socket of this instance, behind what it was sent before."""
        connection = self.connection_of(sid)
        if connection is not None:
            if self.admin is not None:
                self.admin.sent(event, lambda: [sid], payload)
            self._hand_over(encode_event(event, payload), (connection,))

    async def wait_for_room(self, sid: str, packets: int, size_bytes: int) -> None:
        """Return once this socket's outbox has room for `packets` more packets of
        `size_bytes` in all, and as much again (at once if it has, or the socket is gone): how
        a long replay keeps to the pace of the client while live events still fit."""
        connection = self.connection_of(sid)
        socket = self._eio.sockets.get(connection) if connection is not None else None
        if socket is not None and isinstance(socket.queue, Outbox):
            await socket.queue.wait_for_room(
                max(0, self.bounds.packets - 2 * packets),
                max(0, self.bounds.bytes - 2 * size_bytes),
            )

    def _in_rooms(self, rooms: Iterable[str] | None) -> Iterator[str]:
        for _, connection in self._participants(rooms):
            yield connection

    def _participants(self, rooms: Iterable[str] | None) -> Iterator[tuple[str, str]]:
        if rooms is not None:
            rooms = list(rooms)
            if not rooms:
                return
        yield from self.sio.manager.get_participants(NAMESPACE, rooms)

    def _hand_over(self, socketio_packet: str, connections: Iterable[str]) -> int:
        shared = SharedPacket(socketio_packet)
        sockets = self._eio.sockets
        count = 0
        for connection in connections:
            socket = sockets.get(connection)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(shared)
                count += 1
        return count
