"""The single path by which data events leave the server, and replay.

Data events (from changes and from `POST /broadcast` alike) are first written to the event log,
which gives each its `eventId` from one ordered sequence and refuses a source it has seen
(a change processed again after a crash), and only then emitted to their rooms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import socketio

from realtime import events
from realtime.errors import GatewayError
from realtime.transport import TransportControl
from realtime.wire import event_id, wire_payload
from storage.base import Checkpoint, NewEvent, Store, StoredEvent

logger = logging.getLogger(__name__)

REPLAY_BATCH = 500  # events read from the log at once, at most


@dataclasses.dataclass(frozen=True)
class Replay:
    replayed: int  # events sent before the socket entered the room
    last_event_id: str | None  # the room's newest event id when it entered
    # events after the client's id are gone (retention), were never in this log (an id ahead
    # of it: the store was replaced), or are too many to replay: the client must refetch
    gap: bool


class Emitter:
    """Logs and sends data events to rooms; sends control events to sockets."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        store: Store,
        transports: TransportControl,
        replay_max: int = 10_000,
        stall_timeout_s: float = 30.0,
    ):
        self._sio = sio
        self._store = store
        self._transports = transports
        self._replay_max = replay_max
        self._stall_timeout_s = stall_timeout_s
        # Held while events are logged and emitted, and while a replaying socket catches up
        # and enters its room: so ids go out in order and nothing slips between the two.
        self._lock = asyncio.Lock()
        self._after_emit: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = []
        self.emitted: dict[str, int] = {}

    def after_emit(self, listener: Callable[[str, dict[str, Any]], Awaitable[None]]) -> None:
        """Run `listener(name, payload)` after each data event this instance publishes is
        emitted, before the next one goes out (under the publish lock); also for an event
        another instance logged first (and emitted through Redis), so that every instance
        acts on it for its own sockets."""
        self._after_emit.append(listener)

    async def publish(
        self, new_events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        """Log, then emit, these events in order; an already logged source is not emitted
        again (None in its place). A checkpoint is saved with the log entries."""
        async with self._lock:
            stored = await self._store.append_events(new_events, checkpoint)
            for new, event in zip(new_events, stored, strict=True):
                if event is not None:  # (None: logged before, by a retry or another instance)
                    await self._sio.emit(event.name, wire_payload(event), to=list(event.rooms))
                    self.emitted[event.name] = self.emitted.get(event.name, 0) + 1
                    logger.debug(
                        "event emitted",
                        extra={
                            "event": event.name,
                            "event_id": event_id(event.sequence),
                            "rooms": list(event.rooms),
                        },
                    )
                for listener in self._after_emit:
                    await listener(new.name, new.payload)
        return stored

    async def enter_with_replay(
        self, sid: str, room: str, last_event_id: str | None, enter: Callable[[], Awaitable[None]]
    ) -> Replay:
        """Send the socket the room's events after `last_event_id`, oldest first, then
        `enter()` the room: replayed and live events arrive in order, none twice, none missed.

        Most of the replay runs while events keep flowing to others; only the last catch-up
        and the entering hold the publish lock.
        """
        if last_event_id is None:
            return await self._enter_now(room, enter, gap=False)
        cursor = events.last_event_sequence(last_event_id)
        bounds = await self._store.event_bounds(room)
        if cursor > bounds.newest:  # an id this log never gave: nothing to replay from
            return await self._enter_now(room, enter, gap=True)
        # with everything pruned, the log starts after the newest id it gave
        oldest = bounds.oldest if bounds.oldest is not None else bounds.newest + 1
        gap = cursor < oldest - 1
        replayed = 0
        eio_sid = self._sio.manager.eio_sid_from_sid(sid, "/")
        # read and sent in slices: what waits for this client stays within its backlog's
        # bounds, in packets and in bytes, with room left for live events
        limits = self._transports.bounds
        slice_events = max(1, min(REPLAY_BATCH, limits.packets // 4))
        slice_bytes = max(1, limits.bytes // 4)
        while replayed < self._replay_max:
            try:  # at the client's pace
                await asyncio.wait_for(
                    self._transports.wait_for_room(eio_sid, slice_events, slice_bytes),
                    self._stall_timeout_s,
                )
            except TimeoutError:
                await self._transports.close(eio_sid, abort=True)
                raise GatewayError(
                    "rate_limited", "the client stopped reading its replay"
                ) from None
            batch = await self._store.room_events(
                room, cursor, min(slice_events, self._replay_max - replayed), slice_bytes
            )
            if not batch:
                break
            cursor, replayed = await self._send(sid, batch, cursor, replayed)
        async with self._lock:
            # what was logged since the last slice, then the room: nothing slips in between
            if replayed < self._replay_max:
                batch = await self._store.room_events(
                    room, cursor, min(slice_events, self._replay_max - replayed), slice_bytes
                )
                cursor, replayed = await self._send(sid, batch, cursor, replayed)
            # more than can be replayed: the client must refetch
            gap = gap or bool(await self._store.room_events(room, cursor, 1))
            await enter()
            bounds = await self._store.event_bounds(room)
        return Replay(replayed, _event_id_or_none(bounds.room_newest), gap)

    async def _enter_now(
        self, room: str, enter: Callable[[], Awaitable[None]], gap: bool
    ) -> Replay:
        """Enter with nothing to replay; the room's newest id is the client's cursor."""
        async with self._lock:
            await enter()
            bounds = await self._store.event_bounds(room)
        return Replay(0, _event_id_or_none(bounds.room_newest), gap)

    async def _send(
        self, sid: str, batch: list[StoredEvent], cursor: int, replayed: int
    ) -> tuple[int, int]:
        for event in batch:
            await self._sio.emit(event.name, wire_payload(event), to=sid)
        if batch:
            cursor = batch[-1].sequence
        return cursor, replayed + len(batch)

    async def send_control(self, sid: str, event: str, payload: dict[str, Any]) -> None:
        """A control event (auth_*, error, rooms_revoked) to one socket; never logged."""
        await self._sio.emit(event, payload, to=sid)

    async def resync_everyone(self, reason: str, rooms: list[str]) -> None:
        """Tell every client that change events of these rooms (patterns) were lost: refetch."""
        await self._sio.emit(events.RESYNC, {"reason": reason, "rooms": rooms})


def _event_id_or_none(sequence: int | None) -> str | None:
    return event_id(sequence) if sequence is not None else None
