"""Demo mode: a plausible stream of bookings and payments, so a person sees live events at once.

Three shops (ids `1` .. `3`, so their rooms are `shop-1` and `availability-1`, the names the
test page and the README use), five customers (`customer-1` ..), two therapists per shop
(`therapist-1-1` ..). Bookings are created pending, then confirmed, started, completed (and
paid), cancelled or rescheduled, one write per interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from typing import Any

from realtime.changes.mapping import DocumentMapping
from realtime.wire import iso_timestamp
from storage.base import Store

logger = logging.getLogger(__name__)

SHOPS = ("1", "2", "3")
CUSTOMERS = tuple(f"customer-{n}" for n in range(1, 6))
NEXT_STATUS = {
    "pending": ("confirmed", "cancelled"),
    "confirmed": ("in_progress", "cancelled", "no_show", "reschedule"),
    "in_progress": ("completed",),
}


class DemoWriter:
    def __init__(
        self,
        store: Store,
        mapping: DocumentMapping,
        interval_s: float = 1.0,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._bookings = mapping.bookings_collection
        self._payments = mapping.payments_collection
        self._interval_s = interval_s
        self._rng = rng or random.Random()
        self._open: dict[str, dict[str, Any]] = {}  # booking id -> what we wrote

    async def run(self) -> None:
        logger.info("demo writing", extra={"interval_s": self._interval_s})
        while True:
            await self.step()
            await asyncio.sleep(self._interval_s)

    async def step(self) -> None:
        """One write: a new booking, or the next step of an open one."""
        if len(self._open) < 3 or self._rng.random() < 0.3:
            await self._create()
            return
        booking_id = self._rng.choice(sorted(self._open))
        booking = self._open[booking_id]
        action = self._rng.choice(NEXT_STATUS[booking["status"]])
        if action == "reschedule":
            moved = self._later(booking["startsAt"], hours=self._rng.randint(1, 48))
            await self._store.update_document(self._bookings, booking_id, {"startsAt": moved})
            booking["startsAt"] = moved
            return
        await self._store.update_document(self._bookings, booking_id, {"status": action})
        booking["status"] = action
        if action == "completed":
            await self._store.insert_document(
                self._payments,
                {
                    "bookingId": booking_id,
                    "customerId": booking["customerId"],
                    "shopId": booking["shopId"],
                    "status": "paid",
                    "amount": self._rng.choice([45, 60, 80, 120]),
                    "currency": "EUR",
                },
            )
        if action not in NEXT_STATUS:
            del self._open[booking_id]

    async def _create(self) -> None:
        shop = self._rng.choice(SHOPS)
        start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        booking = {
            "customerId": self._rng.choice(CUSTOMERS),
            "shopId": shop,
            "therapistId": f"therapist-{shop}-{self._rng.randint(1, 2)}",
            "status": "pending",
            "startsAt": iso_timestamp(
                (start + dt.timedelta(hours=self._rng.randint(2, 72))).timestamp()
            ),
            "durationMinutes": self._rng.choice([30, 45, 60, 90]),
        }
        booking_id = await self._store.insert_document(self._bookings, booking)
        self._open[booking_id] = booking

    @staticmethod
    def _later(starts_at: str, hours: int) -> str:
        moment = dt.datetime.fromisoformat(starts_at.replace("Z", "+00:00"))
        return iso_timestamp((moment + dt.timedelta(hours=hours)).timestamp())
