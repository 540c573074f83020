"""Who a reservation concerns, looked up in the store for the room policy and kept briefly.

The policy (`realtime/access/policy.py`) asks through `ReservationDirectory`; this is that
directory over the store, reading bookings with the mapping's field names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from realtime.changes.mapping import DocumentMapping
from realtime.rooms import ReservationParties
from realtime.tasks import TaskKeeper
from storage.base import Store

logger = logging.getLogger(__name__)


class StoreReservations:
    """`ReservationDirectory` over the store: who a reservation concerns, for room access.

    What the store answered is kept for `cache_s` seconds, and a lookup already under way is
    shared, so that a storm of joins to one reservation is one read; a change to the booking
    (its `reservation_update`, through `forget`) forgets it at once.
    """

    def __init__(
        self,
        store: Store,
        mapping: DocumentMapping,
        tasks: TaskKeeper,
        cache_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._mapping = mapping
        self._tasks = tasks
        self._cache_s = cache_s
        self._clock = clock
        self._kept: dict[str, tuple[float, ReservationParties | None]] = {}  # id -> (until, …)
        self._under_way: dict[str, asyncio.Future] = {}
        self._stale: set[str] = set()  # changed while their lookup was under way: not kept
        self.lookups = 0  # reads of the store, for tests and figures

    async def reservation_parties(self, reservation_id: str) -> ReservationParties | None:
        if self._cache_s <= 0:
            return await self._look_up(reservation_id)
        kept = self._kept.get(reservation_id)
        if kept is not None and kept[0] > self._clock():
            return kept[1]
        pending = self._under_way.get(reservation_id)
        if pending is None:
            # a failure is every waiter's (through `shield`), not logged as the task's own
            pending = self._tasks.spawn(
                self._look_up_and_keep(reservation_id), name="reservation lookup", on_error=_nothing
            )
            self._under_way[reservation_id] = pending
        return await asyncio.shield(pending)

    async def _look_up_and_keep(self, reservation_id: str) -> ReservationParties | None:
        try:
            parties = await self._look_up(reservation_id)
        finally:
            del self._under_way[reservation_id]
            changed = reservation_id in self._stale  # while the store was read
            self._stale.discard(reservation_id)
        if not changed:
            if len(self._kept) >= RESERVATIONS_KEPT_MAX:
                self._drop_expired()
            self._kept[reservation_id] = (self._clock() + self._cache_s, parties)
        return parties

    async def _look_up(self, reservation_id: str) -> ReservationParties | None:
        self.lookups += 1
        booking = await self._store.get_document(self._mapping.bookings_collection, reservation_id)
        if booking is None:
            return None
        return self._mapping.reservation_parties(booking)

    def forget(self, reservation_id: str) -> None:
        """A booking change was delivered: what was kept of it is stale."""
        self._kept.pop(reservation_id, None)
        if reservation_id in self._under_way:
            self._stale.add(reservation_id)

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [k for k, (until, _) in self._kept.items() if until <= now]:
            del self._kept[key]
        while len(self._kept) >= RESERVATIONS_KEPT_MAX:  # all fresh: the oldest go
            del self._kept[next(iter(self._kept))]


RESERVATIONS_KEPT_MAX = 10_000


def _nothing(error: BaseException) -> None:
    pass
