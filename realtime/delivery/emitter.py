"""The single path by which data events leave the server, and replay.

Data events (from changes and from `POST /broadcast` alike) are first written to the event log,
which gives each its `eventId` from one ordered sequence and refuses a source it has seen
(a change processed again after a crash), and only then delivered to their rooms.

Every instance delivers the log in sequence order: an event is sent to this instance's sockets
only once every event before it has been, whichever instance logged it. Events arrive by the
fastest way there is (this instance's own appends, the Redis bus from the others) and a hole
(an id not yet heard of) is filled from the log, which is also read on a timer: a Redis message
is never the only copy of an event, and an outage or a deaf subscription delays events but
never loses or reorders them. `docs/scaling.md` says why this design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from realtime import events
from realtime.delivery.replay import Replay, event_id_or_none, send_replayed
from realtime.engine import Engine
from realtime.errors import GatewayError
from realtime.rooms import ReservationParties, parties_in, reservation_room
from realtime.wire import event_id, wire_payload
from storage.base import Checkpoint, NewEvent, Store, StoredEvent, StoreError

logger = logging.getLogger(__name__)

REPLAY_BATCH = 500  # events read from the log at once, at most
CATCH_UP_INTERVAL_S = 0.5  # how often the log is read for events no message brought
PENDING_MAX = 1000  # events held ahead of a hole; past it they are read again from the log
ROOM_CURSORS_MAX = 100_000  # rooms whose newest delivered id is remembered
# `resync` goes through the log like a data event, so that every instance sends it in order;
# it is addressed to no room (never replayed) and sent to every socket without an eventId
EVERYONE = "*"


class Emitter:
    """Logs and sends data events to rooms; sends control events to sockets."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        replay_max: int = 10_000,
        stall_timeout_s: float = 30.0,
        catch_up_interval_s: float = CATCH_UP_INTERVAL_S,
    ):
        self._engine = engine
        self._store = store
        self._replay_max = replay_max
        self._stall_timeout_s = stall_timeout_s
        self._catch_up_interval_s = catch_up_interval_s
        # Held while events are delivered, and while a replaying socket catches up and enters
        # its room: so ids go out in order and nothing slips between the two.
        self._lock = asyncio.Lock()
        self._forget_reservation: Callable[[str], None] = _nothing
        self._members_losing: Callable[[str, ReservationParties], list[str]] | None = None
        self._announce: Callable[[list[StoredEvent]], None] | None = None
        self.delivered: int | None = None  # every event up to this id is delivered here
        self._pending: dict[int, StoredEvent] = {}  # heard of, ahead of a hole
        self._heard = asyncio.Event()  # something was heard: the delivery task has work
        self._catch_up_due = False
        self._delivering: asyncio.Task | None = None
        self.emitted: dict[str, int] = {}
        # each room's newest event delivered here (None: none yet), for the rooms that had
        # one since start or were asked about: a join answers from here without the store
        self._room_cursors: dict[str, int | None] = {}
        self.caught_up = 0  # events this instance read from the log: no message brought them

    def recheck_reservations_with(
        self,
        forget: Callable[[str], None],
        members_losing: Callable[[str, ReservationParties], list[str]],
    ) -> None:
        """The step of delivery after a booking change (`reservation_update`) reaches its
        rooms here, whichever instance logged it, before the next event goes out:
        `forget(reservation_id)` drops what was kept of the booking, and the sockets
        `members_losing(room, parties)` names (members of its reservation room whom the
        booking no longer concerns) leave the room and are told `rooms_revoked`: they got
        this change, and get nothing more of that reservation."""
        self._forget_reservation = forget
        self._members_losing = members_losing

    def announce_with(self, announce: Callable[[list[StoredEvent]], None]) -> None:
        """Tell the other instances of each event logged here (the Redis bus)."""
        self._announce = announce

    async def start(self) -> None:
        """Deliver from the log's newest id on (a socket gets older ones by replay), and read
        the log on a timer for what no message brings."""
        self.delivered = (await self._store.event_bounds("")).newest
        self._delivering = asyncio.get_running_loop().create_task(
            self._deliver_forever(), name="emitter:deliver"
        )

    async def stop(self) -> None:
        if self._delivering is not None:
            self._delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivering
            self._delivering = None

    async def publish(
        self, new_events: Sequence[NewEvent], checkpoint: Checkpoint | None = None
    ) -> list[StoredEvent | None]:
        """Log, then deliver, these events in order; an already logged source is not
        delivered again (None in its place). A checkpoint is saved with the log entries."""
        stored = await self._store.append_events(new_events, checkpoint)
        logged = [event for event in stored if event is not None]
        if logged:
            self._hold(logged)  # before any await: the log timer must not count them missed
            if self._announce is not None:
                self._announce(logged)
            await self._deliver_held()
        return stored

    async def _deliver_held(self) -> None:
        """What is held, in id order, before this returns; a hole before it is filled from
        the log first."""
        async with self._lock:
            if self.delivered is None:
                return  # not started: the log's position is taken at start
            await self._deliver_pending()
            if self._pending:  # a hole: the events before these are in the log
                await self._fill_from_log()

    def hear(self, heard: Sequence[StoredEvent]) -> None:
        """Events another instance logged (from the bus): delivered in id order by the
        delivery task. Never waits, so that the bus is read as fast as it speaks."""
        self._hold(heard)
        self._heard.set()

    def _hold(self, heard: Sequence[StoredEvent]) -> None:
        if self.delivered is None:
            return  # not started: the log's position is taken at start
        for event in heard:
            if event.sequence > self.delivered:
                self._pending[event.sequence] = event
        if len(self._pending) > PENDING_MAX:
            self._pending.clear()  # the log has them: read from there instead

    def catch_up_soon(self) -> None:
        """Have the delivery task read the log now (the bus was deaf: what it missed)."""
        self._catch_up_due = True
        self._heard.set()

    async def _deliver_forever(self) -> None:
        """What was heard, as soon as it was; and the log, every `catch_up_interval_s`."""
        while True:
            try:
                await asyncio.wait_for(self._heard.wait(), self._catch_up_interval_s)
                timer = False
            except TimeoutError:
                timer = True
            self._heard.clear()
            due, self._catch_up_due = self._catch_up_due, False
            try:
                async with self._lock:
                    await self._deliver_pending()
                    if timer or due or self._pending:
                        await self._fill_from_log()
            except StoreError as exc:
                logger.warning("catching up from the log failed", extra={"error": str(exc)})
            except Exception:
                logger.exception("delivering failed")

    async def _deliver_pending(self) -> None:
        while self.delivered + 1 in self._pending:
            await self._deliver(self._pending.pop(self.delivered + 1))

    async def _fill_from_log(self) -> None:
        while True:
            found = await self._store.events_after(self.delivered, REPLAY_BATCH)
            if not found:
                break
            for event in found:  # ids the log skips were pruned: nothing to deliver of them
                if event.sequence > self.delivered:
                    if self._pending.pop(event.sequence, None) is None:
                        self.caught_up += 1
                    await self._deliver(event)
            await self._deliver_pending()
        for sequence in [s for s in self._pending if s <= self.delivered]:
            del self._pending[sequence]

    async def _deliver(self, event: StoredEvent) -> None:
        """To this instance's sockets in the event's rooms (the other instances deliver to
        theirs); a booking change's reservation room is then checked again."""
        if event.rooms == (EVERYONE,):  # a control event kept in order: no eventId
            await self._engine.deliver(event.name, event.payload, None)
        else:
            await self._engine.deliver(event.name, wire_payload(event), event.rooms)
            for room in event.rooms:
                self._room_cursors.pop(room, None)  # moved to the end: the newest used
                self._room_cursors[room] = event.sequence
            self._trim_room_cursors()
        self.delivered = event.sequence
        self.emitted[event.name] = self.emitted.get(event.name, 0) + 1
        if logger.isEnabledFor(logging.DEBUG):  # per event: nothing built unless logged
            extra = {"event": event.name, "event_id": event_id(event.sequence)}
            logger.debug("event emitted", extra={**extra, "rooms": list(event.rooms)})
        if event.name == events.RESERVATION_UPDATE:
            await self._recheck_reservation(event.payload)

    async def _recheck_reservation(self, payload: dict[str, Any]) -> None:
        """See `recheck_reservations_with`."""
        reservation_id = str(payload.get("reservationId"))
        self._forget_reservation(reservation_id)
        parties = parties_in(payload)
        if (
            self._members_losing is None
            or parties is None
            or payload.get("updateType") == "deleted"
        ):
            return  # nothing to judge by: the change does not say whom the booking concerns
        room = reservation_room(reservation_id)
        for sid in self._members_losing(room, parties):
            await self._engine.leave(sid, room)
            self._engine.send(sid, events.ROOMS_REVOKED, {"rooms": [room]})
            logger.info("room revoked", extra={"sid": sid, "room": room})

    def delivered_event_id(self) -> str | None:
        """The id of the newest event delivered here (every older one is too), or None."""
        return event_id_or_none(self.delivered)

    def _trim_room_cursors(self) -> None:
        while len(self._room_cursors) > ROOM_CURSORS_MAX:  # the least recently used go
            del self._room_cursors[next(iter(self._room_cursors))]

    async def enter_with_replay(
        self,
        sid: str,
        room: str,
        last_event_id: str | None,
        enter: Callable[[], None],
        recheck: Callable[[], Awaitable[None]] | None = None,
        visible: Callable[[StoredEvent], bool] | None = None,
        upto: int | None = None,
    ) -> Replay:
        """Send the socket the room's events after `last_event_id`, oldest first, then
        `enter()` the room: replayed and live events arrive in order, none twice, none missed.
        `upto`, for a socket already in the room, is its `Replay.sent_from`: it has the rest.
        `recheck()`, if given, decides again just before entering, with no event going out
        meanwhile (it may refuse by raising). `visible(event)`, if given, is asked of each
        event in order: those it refuses (the socket was not allowed them when they were
        sent) are passed over.

        Most of the replay runs while events keep flowing to others; only the last catch-up
        and the entering hold the publish lock. `enter()` is synchronous: a join with nothing
        to replay and nothing to recheck then needs neither the lock nor the store once the
        room's newest id is known here (`enter_known`).
        """
        if last_event_id is None:
            return await self._enter_now(room, enter, recheck, gap=False)
        cursor = sent_from = events.last_event_sequence(last_event_id)
        if upto is not None and upto <= cursor <= (self.delivered or 0):
            # in the room since before the cursor (one beyond what was delivered here is
            # judged below: a gap, or a catch-up first)
            return await self._enter_now(room, enter, recheck, gap=False)
        bounds = await self._store.event_bounds(room)
        # Only what was delivered here is replayed: what comes after reaches the socket live,
        # once it is in the room.
        if cursor > bounds.newest:  # an id this log never gave: nothing to replay from
            return await self._enter_now(room, enter, recheck, gap=True)
        # with everything pruned, the log starts after the newest id it gave
        oldest = bounds.oldest if bounds.oldest is not None else bounds.newest + 1
        gap = cursor < oldest - 1
        replayed = read = 0  # events sent, and read (those not visible included)
        # read and sent in slices: what waits for this client stays within its backlog's
        # bounds, in packets and in bytes, with room left for live events
        limits = self._engine.bounds
        slice_events = max(1, min(REPLAY_BATCH, limits.packets // 4))
        slice_bytes = max(1, limits.bytes // 4)
        while read < self._replay_max:
            try:  # at the client's pace
                await asyncio.wait_for(
                    self._engine.wait_for_room(sid, slice_events, slice_bytes),
                    self._stall_timeout_s,
                )
            except TimeoutError:
                await self._engine.close(sid, abort=True)
                raise GatewayError(
                    "rate_limited", "the client stopped reading its replay"
                ) from None
            batch = await self._replay_slice(room, cursor, read, (slice_events, slice_bytes), upto)
            if not batch:
                break
            cursor, replayed = send_replayed(self._engine, sid, batch, cursor, replayed, visible)
            read += len(batch)
        async with self._lock:
            if self.delivered is not None and cursor > self.delivered:
                # the client saw events this instance has not delivered yet (it came from an
                # instance ahead of this one): catch up first, or they would come again
                await self._fill_from_log()
            # what was delivered since the last slice, then the room: nothing slips in between
            if read < self._replay_max:
                slices = (slice_events, slice_bytes)
                batch = await self._replay_slice(room, cursor, read, slices, upto)
                cursor, replayed = send_replayed(
                    self._engine, sid, batch, cursor, replayed, visible
                )
            # more than can be replayed: the client must refetch
            until = self._until(upto)
            gap = gap or bool(await self._store.room_events(room, cursor, 1, until=until))
            if recheck is not None:
                await recheck()
            enter()
            bounds = await self._store.event_bounds(room, until=self.delivered)
            if gap:  # it lacks some of what came after its cursor: only what comes now is had
                sent_from = self.delivered
        return Replay(replayed, event_id_or_none(bounds.room_newest), gap, sent_from)

    def _until(self, upto: int | None) -> int | None:
        """Where a replay ends: at what this instance delivered (what comes later reaches
        the socket live), or sooner where the socket has had the rest (`upto`)."""
        if upto is None or self.delivered is None:
            return self.delivered if upto is None else upto
        return min(self.delivered, upto)

    async def _replay_slice(
        self, room: str, cursor: int, read: int, slices: tuple[int, int], upto: int | None
    ) -> list[StoredEvent]:
        """The room's next logged events after `cursor`, up to `_until(upto)`, within the
        replay's bounds (`slices`: events and bytes)."""
        slice_events, slice_bytes = slices
        return await self._store.room_events(
            room,
            cursor,
            min(slice_events, self._replay_max - read),
            slice_bytes,
            until=self._until(upto),
        )

    def enter_known(self, room: str, enter: Callable[[], None], gap: bool = False) -> Replay | None:
        """`enter()` the room at once, nothing to replay, if its newest id is known here
        (None otherwise: the store must say). No event goes out between the two."""
        if room not in self._room_cursors:
            return None
        enter()
        return Replay(0, event_id_or_none(self._room_cursors[room]), gap, self.delivered)

    async def _enter_now(
        self,
        room: str,
        enter: Callable[[], None],
        recheck: Callable[[], Awaitable[None]] | None,
        gap: bool,
    ) -> Replay:
        """Enter with nothing to replay; the room's newest id is the client's cursor."""
        if recheck is None:
            entered = self.enter_known(room, enter, gap)
            if entered is not None:
                return entered
        async with self._lock:
            if recheck is not None:
                await recheck()
            enter()
            bounds = await self._store.event_bounds(room, until=self.delivered)
            if self.delivered is not None:
                self._room_cursors.setdefault(room, bounds.room_newest)
                self._trim_room_cursors()
            sent_from = self.delivered
        return Replay(0, event_id_or_none(bounds.room_newest), gap, sent_from)

    async def newest_room_event(
        self, room: str, name: str, until: int | None = None
    ) -> StoredEvent | None:
        """The newest event called `name` logged for `room` (up to `until`), whether or not
        this instance has delivered it yet: the log is the truth (a client's cursor may be
        ahead of what this instance delivered)."""
        return await self._store.newest_room_event(room, name, until)

    def send_control(self, sid: str, event: str, payload: dict[str, Any]) -> None:
        """A control event (auth_*, error, rooms_revoked) to one socket of this instance,
        behind what it was sent before; never logged."""
        self._engine.send(sid, event, payload)

    async def resync_everyone(self, reason: str, rooms: list[str]) -> None:
        """Tell every client, on every instance, that change events of these rooms (patterns)
        were lost: refetch. Logged, so that each instance sends it after the events logged
        before it, and none misses it."""
        payload = {"reason": reason, "rooms": rooms}
        await self.publish(
            [NewEvent(events.RESYNC, payload, (EVERYONE,), f"resync:{uuid.uuid4().hex}")]
        )


def _nothing(reservation_id: str) -> None:
    pass
