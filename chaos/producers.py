"""What the soak publishes, at a steady rate: services calling `POST /broadcast` (some with an
`Idempotency-Key`, retried on errors as a careful service does) and bookings and payments
written to the store the gateways watch."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections import Counter
from typing import Any

import aiohttp

from chaos.cluster import SERVICE_TOKEN
from storage.base import Store

RETRIES = 8


class Broadcasts:
    """POST /broadcast to nginx or straight to a gateway, `rate` a second."""

    def __init__(
        self, urls: list[str], rooms: list[str], users: list[str], rate: float, rng: random.Random
    ):
        self.urls = urls
        self.rooms = rooms
        self.users = users
        self.rate = rate
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self._sent = 0
        self.accepted: dict[int, str] = {}  # broadcast n -> the eventId its 202 named

    @property
    def sent(self) -> int:
        return self._sent

    async def run(self) -> None:
        in_flight: set[asyncio.Task] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            try:
                while True:
                    task = asyncio.ensure_future(
                        self._one(http)
                    )  # a slow answer does not slow the rate
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    await asyncio.sleep(self.rng.expovariate(self.rate))
            finally:  # the calls under way (their retries included) end before the session
                if in_flight:
                    await asyncio.wait(in_flight, timeout=60)
                for task in in_flight:
                    task.cancel()

    async def _one(self, http: aiohttp.ClientSession) -> None:
        self._sent += 1
        body: dict[str, Any] = {"event": "notification", "data": {"n": self._sent}}
        body["rooms"] = self.rng.sample(self.rooms, self.rng.randint(1, 2))
        if self.rng.random() < 0.5:
            body["users"] = self.rng.sample(self.users, 1)
        keyed = self.rng.random() < 0.4
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        if keyed:
            headers["Idempotency-Key"] = f"chaos-{self._sent}"
        for attempt in range(RETRIES if keyed else 1):
            url = self.rng.choice(self.urls)
            try:
                async with http.post(f"{url}/broadcast", json=body, headers=headers) as answer:
                    if answer.status == 202:
                        self.counts["accepted" if attempt == 0 else "accepted after retry"] += 1
                        self.accepted[body["data"]["n"]] = (await answer.json())["eventId"]
                        return
                    self.counts[f"answered {answer.status}"] += 1
            except (aiohttp.ClientError, TimeoutError):
                self.counts["failed"] += 1
            await asyncio.sleep(0.2 * 2**attempt)
        self.counts["given up"] += 1


class Bookings:
    """Bookings created and moved through their statuses, a payment when one completes:
    `rate` writes a second to the store the gateways watch."""

    NEXT = {
        "pending": ["confirmed", "cancelled"],
        "confirmed": ["in_progress", "no_show"],
        "in_progress": ["completed"],
    }

    def __init__(
        self, store: Store, customers: list[str], shops: list[str], rate: float, rng: random.Random
    ):
        self.store = store
        self.customers = customers
        self.shops = shops
        self.rate = rate
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self._open: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, list[str]] = {}  # booking id -> each status written, in order
        self.payments: Counter[str] = Counter()  # booking id -> payments written for it

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # a busy store: the write is tried again next time
                self.counts[f"failed: {type(exc).__name__}"] += 1
            await asyncio.sleep(self.rng.expovariate(self.rate))

    async def step(self) -> None:
        if len(self._open) < 4 or self.rng.random() < 0.35:
            shop = self.rng.choice(self.shops)
            start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(
                hours=self.rng.randint(2, 72)
            )
            booking = {
                "customerId": self.rng.choice(self.customers),
                "shopId": shop,
                "therapistId": f"{shop}-t{self.rng.randint(1, 2)}",
                "status": "pending",
                "startsAt": start.isoformat().replace("+00:00", "Z"),
                "durationMinutes": self.rng.choice([30, 60, 90]),
            }
            booking_id = await self.store.insert_document("bookings", booking)
            self._open[booking_id] = booking
            self.statuses[booking_id] = ["pending"]
            self.counts["bookings created"] += 1
            return
        booking_id = self.rng.choice(sorted(self._open))
        booking = self._open[booking_id]
        status = self.rng.choice(self.NEXT[booking["status"]])
        await self.store.update_document("bookings", booking_id, {"status": status})
        booking["status"] = status
        self.statuses[booking_id].append(status)
        self.counts["bookings updated"] += 1
        if status == "completed":
            await self.store.insert_document(
                "payments",
                {
                    "bookingId": booking_id,
                    "customerId": booking["customerId"],
                    "shopId": booking["shopId"],
                    "status": "paid",
                    "amount": 60,
                    "currency": "EUR",
                },
            )
            self.counts["payments"] += 1
            self.payments[booking_id] += 1
        if status not in self.NEXT:
            del self._open[booking_id]


async def stop(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
