"""An event for a large room is handed out a slice at a time (`FANOUT_SLICE`), the loop's
other work running between slices: each member still gets it once and in order, a socket
that enters the room meanwhile gets it too, one that leaves meanwhile does not."""

from __future__ import annotations

import asyncio

import pytest

from realtime.engine import facade
from tests.test_hostile_first_hour import broadcast, notification_ids
from tests.test_transport import eventually

ROOM = "availability-big"


def sid_of(gateway, user: str) -> str:
    (sid,) = [
        s.sid
        for s in gateway.sessions._sessions.values()
        if s.principal is not None and s.principal.user_id == user
    ]
    return sid


@pytest.fixture
def one_per_slice(monkeypatch):
    monkeypatch.setattr(facade, "FANOUT_SLICE", 1)


async def test_members_get_every_event_once_in_order(gateway, connect, one_per_slice):
    members = [await connect("py-websocket", sub=f"c{n}") for n in range(4)]
    members.append(await connect("js-websocket", sub="c4"))
    members.append(await connect("py-polling", sub="c5"))
    for client in members:
        assert (await client.call("join_room", {"roomId": ROOM}))["ok"]
    sent = [await broadcast(gateway, ROOM, f"n{n}") for n in range(20)]
    for client in members:
        await eventually(lambda client=client: len(notification_ids(client)) >= len(sent))
        assert notification_ids(client) == sent, client.kind


async def test_a_socket_that_enters_while_an_event_is_handed_out_gets_it(
    gateway, connect, one_per_slice
):
    members = [await connect(sub=f"c{n}") for n in range(3)]
    for client in members:
        assert (await client.call("join_room", {"roomId": ROOM}))["ok"]
    late, leaving = await connect(sub="late"), members[2]
    engine = gateway.engine

    handing = asyncio.ensure_future(engine.deliver("notification", {"title": "x"}, [ROOM]))
    await asyncio.sleep(0)  # the first slice is handed out, then the loop has a turn: this one
    assert not handing.done()
    engine.enter(sid_of(gateway, "late"), ROOM)
    await engine.leave(sid_of(gateway, "c2"), ROOM)
    assert await handing == 3  # c0, c1 and the late one; not c2, gone before its slice

    for client in (*members[:2], late):
        assert (await client.next_event("notification"))["title"] == "x"
    # the one that left never gets it: an event sent to it alone after arrives first
    engine.send(sid_of(gateway, "c2"), "notification", {"title": "after"})
    assert (await leaving.next_event("notification"))["title"] == "after"
    engine.send(sid_of(gateway, "late"), "notification", {"title": "after"})
    assert (await late.next_event("notification"))["title"] == "after"  # once, not twice


async def test_a_socket_that_leaves_and_comes_back_meanwhile_gets_it_once(
    gateway, connect, one_per_slice
):
    members = [await connect(sub=f"c{n}") for n in range(3)]
    for client in members:
        assert (await client.call("join_room", {"roomId": ROOM}))["ok"]
    engine = gateway.engine
    handing = asyncio.ensure_future(engine.deliver("notification", {"title": "x"}, [ROOM]))
    await asyncio.sleep(0)
    await engine.leave(sid_of(gateway, "c2"), ROOM)
    engine.enter(sid_of(gateway, "c2"), ROOM)
    assert await handing == 3
    assert (await members[2].next_event("notification"))["title"] == "x"
    engine.send(sid_of(gateway, "c2"), "notification", {"title": "after"})
    assert (await members[2].next_event("notification"))["title"] == "after"


async def test_a_join_while_an_event_is_handed_out_misses_nothing(gateway, connect, one_per_slice):
    """Through the gateway's own join (the short way, no lock): the joiner's acknowledged
    cursor and what it receives leave no hole."""
    members = [await connect(sub=f"c{n}") for n in range(5)]
    for client in members:
        assert (await client.call("join_room", {"roomId": ROOM}))["ok"]
    joiner = await connect(sub="joiner")
    posting = asyncio.ensure_future(
        asyncio.gather(*(broadcast(gateway, ROOM, f"n{n}") for n in range(10)))
    )
    answer = await joiner.call("join_room", {"roomId": ROOM})
    sent = await posting
    after = sent[sent.index(answer["lastEventId"]) + 1 :] if answer["lastEventId"] in sent else sent
    await eventually(lambda: set(after) <= set(notification_ids(joiner)))
    received = notification_ids(joiner)
    assert len(received) == len(set(received))
    assert received == sorted(received)
