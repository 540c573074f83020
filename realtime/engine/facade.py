"""`Engine`: what the rest of the gateway uses of the engine, by Socket.IO sid.

The gateway knows a socket by its sid and a connection by the id the engine hands it when it
opens (`watch`); it enters and leaves rooms, sends, disconnects, closes and waits here, and
holds neither python-socketio's server nor an Engine.IO id of its own finding.

The emit path (`deliver`): python-socketio encodes an event once but then starts one task per
recipient and waits for them all, and python-engineio's writer wakes once per packet. Here an
event is encoded once and handed to each recipient's `Outbox`, without a task; acks, the
library's own packets and control events enter the same outboxes in call order, so each
socket's order holds. A room of more than `FANOUT_SLICE` sockets is handed the event a slice
at a time, the loop's other work (a `/health`, other sockets' packets) running between two
slices: the members are those of when the event went out, plus a socket that enters one of
its rooms meanwhile (`enter` hands it the event too), less one that leaves them or goes.

Library internals touched: none (the manager's and the server's public calls, and
`eio.sockets`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web

from realtime.engine.admin import AdminReport
from realtime.engine.dispatch import ADMIN_NAMESPACE, NAMESPACE, GatewayServer
from realtime.engine.endpoint import Endpoint
from realtime.engine.lifecycle import Lifecycle
from realtime.engine.membership import NO_ROOMS, RoomIndex
from realtime.engine.outbox import Outbox
from realtime.engine.packets import SharedPacket, encode_event
from realtime.limits import Admission, Bounds
from realtime.tasks import TaskKeeper

# recipients handed an event before the loop gets a turn: 5-15 ms of work
FANOUT_SLICE = 1000


class _InFlight:
    """An event being handed out a slice at a time, to the sockets of `rooms`."""

    __slots__ = ("late", "packet", "reached", "rooms")

    def __init__(self, packet: SharedPacket, rooms: list[str], reached: set[str]):
        self.packet = packet
        self.rooms = rooms
        self.reached = reached  # sids it went or goes to
        self.late = 0  # sockets it went to as they entered one of the rooms


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
        self._in_flight: _InFlight | None = None

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
        """Put the socket in the room, at once; an event of the room being handed out
        (`deliver`) reaches it too, as if it had been in the room when the event went out."""
        self.sio.manager.basic_enter_room(sid, NAMESPACE, room)
        in_flight = self._in_flight
        if in_flight is not None and room in in_flight.rooms and sid not in in_flight.reached:
            in_flight.reached.add(sid)
            connection = self.connection_of(sid)
            if connection is not None:
                in_flight.late += self._hand_over(in_flight.packet, ((sid, connection),))

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
    async def deliver(self, event: str, payload: Any, rooms: Iterable[str] | None) -> int:
        """Send `event` to this instance's sockets in `rooms` (None: every socket), encoded
        once, without a task, a slice of `FANOUT_SLICE` sockets at a time; returns how many
        sockets it went to. One event at a time: the next waits for this one's return."""
        rooms = None if rooms is None else list(rooms)
        if self.admin is not None:
            self.admin.sent(event, lambda: (sid for sid, _ in self._participants(rooms)), payload)
        packet = SharedPacket(encode_event(event, payload))
        recipients = list(self._participants(rooms))  # a copy: python-socketio's is one too
        if len(recipients) <= FANOUT_SLICE:
            return self._hand_over(packet, recipients)
        in_flight = _InFlight(packet, rooms or [], {sid for sid, _ in recipients})
        self._in_flight = in_flight if rooms else None
        try:
            count = self._hand_over(packet, recipients[:FANOUT_SLICE])
            for start in range(FANOUT_SLICE, len(recipients), FANOUT_SLICE):
                await asyncio.sleep(0)
                still = self._still_in(in_flight, recipients[start : start + FANOUT_SLICE])
                count += self._hand_over(packet, still)
        finally:
            self._in_flight = None
        return count + in_flight.late

    def _still_in(
        self, in_flight: _InFlight, recipients: list[tuple[str, str]]
    ) -> Iterable[tuple[str, str]]:
        """Those of `recipients` still in one of the event's rooms (after the loop had a
        turn); those gone are no longer counted as reached: entering again, they get it."""
        rooms = in_flight.rooms
        if not rooms or not isinstance(self.sio.manager, RoomIndex):
            return recipients
        index, still = self._rooms_by_sid, []
        for sid, connection in recipients:
            if any(room in index.get(sid, NO_ROOMS) for room in rooms):
                still.append((sid, connection))
            else:
                in_flight.reached.discard(sid)
        return still

    def send(self, sid: str, event: str, payload: Any) -> None:
        """Send `event` to one socket of this instance, behind what it was sent before."""
        connection = self.connection_of(sid)
        if connection is not None:
            if self.admin is not None:
                self.admin.sent(event, lambda: [sid], payload)
            self._hand_over(SharedPacket(encode_event(event, payload)), ((sid, connection),))

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

    def _participants(self, rooms: list[str] | None) -> Iterator[tuple[str, str]]:
        if rooms is None or rooms:
            yield from self.sio.manager.get_participants(NAMESPACE, rooms)

    def _hand_over(self, packet: SharedPacket, recipients: Iterable[tuple[str, str]]) -> int:
        sockets = self._eio.sockets
        count = 0
        for _, connection in recipients:
            socket = sockets.get(connection)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(packet)
                count += 1
        return count
