"""A hostile review of the join fast path, the collector's pacing, the sliced fan-out and the
closes let through per turn (`Turns`): each test here names the defect it shows."""

from __future__ import annotations

import asyncio
import gc
import itertools
import types
import weakref

import pytest

from realtime.engine import facade
from realtime.engine.dispatch import _event_on_main_namespace
from realtime.engine.packets import GatewayPacket
from realtime.ops.collector import CollectorPacing
from tests.test_fanout import ROOM, sid_of
from tests.test_hostile_first_hour import broadcast, notification_ids
from tests.test_transport import eventually


class SliceGate:
    """Stands in for the fan-out's `asyncio` module: each pause between two slices waits
    until the test lets it go on, so what clients do between slices is chosen, not raced."""

    def __init__(self) -> None:
        self.paused = asyncio.Queue()  # one item per pause reached
        self._go: asyncio.Event | None = None
        self.armed = False  # until then, pauses pass at once

    async def sleep(self, delay: float) -> None:
        if not self.armed:
            await asyncio.sleep(delay)
            return
        go = self._go = asyncio.Event()
        self.paused.put_nowait(None)
        await go.wait()

    async def next_pause(self) -> None:
        await asyncio.wait_for(self.paused.get(), 10)

    def release(self) -> None:
        assert self._go is not None
        self._go.set()


@pytest.fixture
def gate(monkeypatch) -> SliceGate:
    gate = SliceGate()
    monkeypatch.setattr(facade, "FANOUT_SLICE", 1)
    monkeypatch.setattr(facade, "asyncio", types.SimpleNamespace(sleep=gate.sleep))
    return gate


# (was a defect of the sliced fan-out: a member dropped from its slice because it had left the
# room was still counted in `_InFlight.reached`; joining again before the last slice,
# `Engine.enter` handed it nothing, and the join's ack named the cursor from before the event.
# The event was lost, with no gap. Now a member dropped is no longer counted as reached.)
async def test_a_member_that_leaves_before_its_slice_and_rejoins_after_it_gets_the_event(
    gateway, connect, gate
):
    members = [await connect(sub=f"c{n}") for n in range(3)]
    for client in members:
        assert (await client.call("join_room", {"roomId": ROOM}))["ok"]
    before = await broadcast(gateway, ROOM, "before")  # the room's cursor is known here
    for client in members:
        assert (await client.next_event("notification"))["eventId"] == before
    # (three slices of one: the first pause, then the second, then it returns)
    order = [sid for sid, _ in gateway.engine._participants([ROOM])]
    by_sid = {sid_of(gateway, f"c{n}"): members[n] for n in range(3)}
    victim = by_sid[order[1]]  # handed the event in the second slice

    gate.armed = True
    sending = asyncio.ensure_future(broadcast(gateway, ROOM, "x"))
    await gate.next_pause()  # after the first slice
    assert (await victim.call("leave_room", {"roomId": ROOM}))["ok"]
    gate.release()
    await gate.next_pause()  # after the second slice, which passed the victim by
    answer = await victim.call("join_room", {"roomId": ROOM})
    assert answer["ok"], answer
    gate.armed = False
    gate.release()
    x = await sending

    after = await broadcast(gateway, ROOM, "after")
    await eventually(lambda: after in notification_ids(victim))
    # either the ack's cursor covers x, or x comes live: here neither (the ack says `before`)
    assert answer["lastEventId"] == x or notification_ids(victim) == [before, x, after], (
        answer["lastEventId"],
        notification_ids(victim),
    )


# (was a defect of the collector's pacing: it rests on "a connection's objects are freed by
# reference counting", which holds on uvloop only. On asyncio's loop (EVENT_LOOP=asyncio, or
# `auto` without uvloop: the loop these tests serve on) every accepted TCP connection's
# transport is a reference cycle (`_SelectorSocketTransport._read_ready_cb`, a bound method
# of itself): frozen while open, once closed only the hourly pass freed it. Now survivors are
# frozen on uvloop only.)
async def test_a_closed_connections_transport_is_freed_before_the_hourly_pass(gateway, connect):
    pace = CollectorPacing()
    pace.install()  # as `serve()` does, here on asyncio's loop
    try:
        client = await connect("py-websocket", sub="c1")
        (transport,) = gateway.engine._endpoint.connections.values()
        watched = weakref.ref(transport)
        del transport
        gc.collect(1)  # a middle-generation pass while it is open (under load: every ~0.1 s)
        await client.disconnect()
        await client.wait_disconnected()
        await eventually(lambda: not gateway.engine.sio.eio.sockets)
        gc.collect()  # any pass short of the hourly one
        assert watched() is None, "the closed connection's transport waits for the hourly pass"
    finally:
        pace.uninstall()
        gc.unfreeze()


# (checked, sound) the fast reader of EVENT packets on `/` reads what python-socketio's
# `Packet.decode` reads, or leaves the packet to it
_PIECES = [
    "",
    "0",
    "7",
    "00",
    "123",
    "9" * 18,
    "9" * 19,
    "-",
    "1-",
    "/",
    "/x,",
    "/?a=1,",
    " ",
    "\n",
    "²",
    "٣",
    "\uff11",  # a fullwidth digit one
    "+",
    "-1",
    "e",
    "[",
    "]",
    '["a"]',
    '["a",1]',
    "[]",
    '"x"',
    "{}",
    '["a-b"]',
    "null",
    "[NaN]",
    "[1e999]",
    "[" + "1" * 120 + "]",
    '["\\ud800"]',
]


def _library_read(data: str):
    try:
        packet = GatewayPacket(encoded_packet=data)
    except Exception as exc:
        return ("raises", type(exc))
    if packet.packet_type != 2 or packet.namespace is not None or packet.attachment_count:
        return None
    return (packet.id, packet.data)


def test_the_fast_event_reader_reads_what_the_library_reads():
    inputs = {"2" + "".join(parts) for parts in itertools.product(_PIECES, repeat=3)}
    for data in sorted(inputs):
        try:
            fast = _event_on_main_namespace(data)
        except Exception as exc:
            fast = ("raises", type(exc))
        if fast is not None:
            assert repr(fast) == repr(_library_read(data)), data
        # read where a WebSocket's message has it, after its Engine.IO type: the same
        try:
            in_place = _event_on_main_namespace("4" + data, 1)
        except Exception as exc:
            in_place = ("raises", type(exc))
        assert repr(in_place) == repr(fast), data
