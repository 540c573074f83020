"""Who is in which room: python-socketio's manager, the one owner of membership.

Adjusts python-socketio's client managers (the in-process one and the Redis one) with an
index from each socket to its named rooms, kept by the same calls that keep the manager's
rooms (`basic_enter_room`, `basic_leave_room`): the gateway reads a socket's rooms without a
scan of every room, and keeps no copy of its own. A disconnect, and the library's own
`get_rooms`, read the index too: the library scanned (and copied) every room of the
namespace for each, so 19,000 sockets closing at once took minutes of a stalled loop.

Library internals touched: `BaseManager.rooms` (read), `basic_enter_room` and
`basic_leave_room` (extended), `basic_disconnect` and `get_rooms` (replaced, with the
library's `callbacks`, `pending_connect` and `pending_disconnect`).
"""

from __future__ import annotations

import heapq
import types
from collections.abc import Mapping
from typing import Any

import socketio

NO_ROOMS: Mapping[str, int | None] = types.MappingProxyType({})


class RoomIndex:
    """Mixed into a python-socketio manager: `named_rooms[sid]`, the rooms a socket entered
    (neither its connection's None room nor the room named after its sid), each with the
    sequence after which the gateway knows it has had all the room's events (None: unknown,
    as after an Admin UI's JOIN): kept with the membership, it goes when the socket leaves."""

    rooms: dict[str, dict[Any, Any]]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.named_rooms: dict[str, dict[str, int | None]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if room is not None and room != sid:
            self.named_rooms.setdefault(sid, {}).setdefault(room, None)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self.named_rooms.get(sid)
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self.named_rooms[sid]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, leaving the socket's rooms by the index (its connection's
        None room, its sid's room and its named ones) rather than by a scan of them all."""
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        # (a sid is of one namespace: its named rooms are that namespace's)
        held = [name for name in (None, sid) if sid in rooms.get(name, ())]
        held.extend(self.named_rooms.get(sid, ()))
        for room in held:
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)  # type: ignore[attr-defined]
        for pending in (self.pending_connect, self.pending_disconnect):  # type: ignore[attr-defined]
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The socket's rooms, its sid's included (python-socketio's, by the index)."""
        own = [sid] if sid in self.rooms.get(namespace, {}).get(sid, ()) else []
        return own + list(self.named_rooms.get(sid, ()))

    def room_members(self, namespace: str) -> dict[str, Any]:
        """The namespace's named rooms and their members (sid -> Engine.IO id), in place."""
        return self.rooms.get(namespace, {})

    def room_figures(self, namespace: str, limit: int) -> tuple[int, int, dict[str, int]]:
        """How many named rooms have members, how many memberships there are, and the
        `limit` largest rooms (largest first, ties by name), in O((rooms + sockets) log
        limit): the manager also holds a room named after each socket, passed over."""
        rooms = self.room_members(namespace)
        sids = rooms.get(None, {})
        named = [(room, members) for room, members in rooms.items() if _named(room, sids)]
        largest = heapq.nsmallest(limit, named, key=lambda room: (-len(room[1]), room[0]))
        return len(named), sum(len(m) for _, m in named), {r: len(m) for r, m in largest}


def _named(room: Any, sids: Any) -> bool:
    return room is not None and room not in sids


class GatewayManager(RoomIndex, socketio.AsyncManager):
    """python-socketio's in-process manager, with the room index."""


class GatewayRedisManager(RoomIndex, socketio.AsyncRedisManager):
    """python-socketio's Redis manager (its rooms are this instance's sockets'), with the
    room index."""


def client_manager(redis_url: str | None) -> socketio.AsyncManager:
    return GatewayRedisManager(redis_url) if redis_url else GatewayManager()
