"""The garbage collector, paced for a process that holds many long-lived objects.

CPython's collector stops the process for each pass, for a time in proportion to the objects
of the generations it walks. A gateway holds about 150 objects per connection for the
connection's life: at 19,000 connections a pass over the middle generation (up to a million
young objects with the thresholds used before) took 0.4-0.6 s, and a full pass over a
second, during which no event went out and `/health` did not answer.

Here every pass walks young objects only:
- the young generations are collected often enough to stay small (`THRESHOLDS`);
- what survives a pass of the middle generation is long-lived by then, and is frozen out of
  every later pass (`gc.freeze`): the old generation stays nearly empty, so do full passes;
- a connection's objects are freed by reference counting when it closes (no cycles: tests
  hold it to that), frozen or not. Cyclic garbage among frozen objects, should any appear,
  is collected by a full pass of everything (`gc.unfreeze`, `gc.collect`) every
  `FULL_PASS_EVERY_S`: the one pause in proportion to the whole heap, once an hour.

Survivors are frozen on uvloop only: asyncio's own loop makes each TCP transport a cycle (it
holds a bound method of itself), so every connection frozen while open would stay until the
hourly pass. There (`EVENT_LOOP=asyncio`, or uvloop missing) the collector runs as before:
larger young generations (`UNFROZEN_THRESHOLDS`), full passes when they come.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# gen0 every 10,000 allocations, gen1 every 10 of those: a pass walks at most ~100,000 objects
THRESHOLDS = (10_000, 10, 100)
UNFROZEN_THRESHOLDS = (50_000, 20, 100)  # without freezing: full passes made rarer
FULL_PASS_EVERY_S = 3600.0


class CollectorPacing:
    """Installed once the process has started (`install`), for as long as it serves."""

    def __init__(
        self, freeze_survivors: bool | None = None, full_pass_every_s: float = FULL_PASS_EVERY_S
    ):
        self._freeze_survivors = freeze_survivors  # None: on uvloop only
        self._full_pass_every_s = full_pass_every_s
        self._timer: asyncio.TimerHandle | None = None
        self._thresholds: tuple[int, int, int] | None = None
        self.frozen_passes = 0  # middle-generation passes whose survivors were frozen

    def install(self) -> None:
        """Freeze what start-up made, pace the young generations, freeze survivors from now
        on, and schedule the full passes."""
        gc.collect()
        gc.freeze()  # what start-up made, for good: it lives as long as the process
        self._thresholds = gc.get_threshold()
        if self._freeze_survivors is None:
            loop = asyncio.get_running_loop()
            self._freeze_survivors = type(loop).__module__.startswith("uvloop")
        if not self._freeze_survivors:
            gc.set_threshold(*UNFROZEN_THRESHOLDS)
            return
        gc.set_threshold(*THRESHOLDS)
        gc.callbacks.append(self._after_pass)
        self._schedule()

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._after_pass in gc.callbacks:
            gc.callbacks.remove(self._after_pass)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def _after_pass(self, phase: str, info: dict[str, Any]) -> None:
        # after a pass of generation 1 (or 2) the young generations are empty: what the old
        # one holds has survived two passes, and only that is frozen
        if phase == "stop" and info["generation"] >= 1:
            gc.freeze()
            self.frozen_passes += 1

    def full_pass(self) -> int:
        """Collect everything, frozen objects included, then freeze the survivors again;
        returns how many objects were found unreachable."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        logger.info(
            "garbage collected",
            extra={"unreachable": found, "ms": round((time.perf_counter() - started) * 1000)},
        )
        return found

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._full_pass_every_s, self._full_pass_and_schedule)

    def _full_pass_and_schedule(self) -> None:
        self.full_pass()
        self._schedule()
