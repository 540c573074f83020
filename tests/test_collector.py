"""The garbage collector's pacing (realtime/ops/collector.py): survivors frozen out of later
passes, a full pass that still finds cyclic garbage among them, and connections whose objects
need no collector pass at all to be freed when they close."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from realtime.ops import collector as pacing
from tests.test_transport import eventually


class Node:
    """Something that can be part of a reference cycle, and be watched by a weakref."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
async def paced():
    was_enabled = gc.isenabled()
    gc.enable()
    pace = pacing.CollectorPacing(freeze_survivors=True, full_pass_every_s=3600)
    pace.install()
    try:
        yield pace
    finally:
        pace.uninstall()
        gc.unfreeze()
        if not was_enabled:
            gc.disable()


async def test_survivors_of_a_middle_generation_pass_are_frozen(paced):
    assert gc.get_threshold() == pacing.THRESHOLDS
    kept = [Node() for _ in range(1000)]
    frozen_before, passes_before = gc.get_freeze_count(), paced.frozen_passes
    gc.collect(1)
    assert paced.frozen_passes == passes_before + 1
    assert gc.get_freeze_count() >= frozen_before + len(kept)
    assert gc.get_count()[0] < 100  # the young generations are empty again


async def test_a_full_pass_finds_cyclic_garbage_among_frozen_objects(paced):
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    gc.collect(1)  # both survive it, and are frozen
    del first, second
    gc.collect()  # a full pass, but of what is not frozen
    assert gone() is not None
    assert paced.full_pass() >= 2
    assert gone() is None


async def test_the_full_pass_comes_by_itself():
    pace = pacing.CollectorPacing(freeze_survivors=True, full_pass_every_s=0.05)
    pace.install()
    try:
        first, second = Node(), Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        gc.collect(1)
        del first, second
        await eventually(lambda: gone() is None)
    finally:
        pace.uninstall()
        gc.unfreeze()


async def test_survivors_are_frozen_on_uvloop_only():
    """asyncio's own loop makes each TCP transport a cycle: frozen while open, a closed
    connection would wait for the hourly pass (`test_hostile_pacing.py`)."""
    pace = pacing.CollectorPacing()
    pace.install()  # here, on asyncio's loop
    try:
        assert gc.get_threshold() == pacing.UNFROZEN_THRESHOLDS
        assert pace._after_pass not in gc.callbacks
    finally:
        pace.uninstall()
        gc.unfreeze()


async def test_uninstall_puts_the_collector_back():
    before = gc.get_threshold()
    pace = pacing.CollectorPacing()
    pace.install()
    pace.uninstall()
    assert gc.get_threshold() == before
    assert pace._after_pass not in gc.callbacks
    gc.unfreeze()


# (a closed long-polling socket is kept for one more poll, until python-engineio's service
# task sweeps it: held on purpose, not by a cycle)
@pytest.mark.parametrize("kind", ["py-websocket", "js-websocket", "py-upgrade", "js-upgrade"])
async def test_a_closed_connection_is_freed_without_a_collector_pass(gateway, connect, kind):
    """What a connection holds is freed by reference counting when it closes: frozen out of
    the collector's passes (as the pacing freezes long-lived objects), a cycle among its
    objects would never be freed but by the hourly full pass."""
    gc.disable()
    try:
        client = await connect(kind, sub="c1")
        assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"]
        await eventually(lambda: len(gateway.engine.sio.eio.sockets) == 1)
        (socket,) = gateway.engine.sio.eio.sockets.values()
        watched = [weakref.ref(socket)]
        del socket
        await client.disconnect()
        await client.wait_disconnected()
        await eventually(lambda: all(ref() is None for ref in watched), within=10.0)
    finally:
        gc.enable()
        await asyncio.sleep(0)
