"""Work that comes in floods, let through a few at a time per turn of the event loop.

When thousands of clients close at once (a network switch, a load balancer draining, a
load generator stopping), every close is ready in the same turns of the loop, and each costs
~150 µs: 19,000 of them held the loop for seconds, and a `/health` arriving then waited behind
all of them. A `Turns` lets `per_turn` callers on in each turn; the others wait, in arrival
order, for the next turns, while the loop serves everything else in between. Under a usual
load nobody waits: the first `per_turn` of a turn go on at once.

Library internals touched: none.
"""

from __future__ import annotations

import asyncio
import collections


class Turns:
    def __init__(self, per_turn: int):
        self._per_turn = per_turn
        self._used = 0  # callers let on in this turn
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._next: asyncio.Handle | None = None

    async def take(self) -> None:
        """Return in this turn of the loop if there is room, else in a later one."""
        if self._used < self._per_turn and not self._waiting:
            self._used += 1
            self._schedule()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule()
        await waiter

    def _schedule(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._next = None
        self._used = 0
        while self._waiting and self._used < self._per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():  # (a waiter cancelled takes no room)
                waiter.set_result(None)
                self._used += 1
        if self._used:
            self._schedule()
