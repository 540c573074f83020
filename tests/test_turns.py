"""`Turns` (realtime/engine/turns.py): a flood of closes let on a few per turn of the loop, in
arrival order, with the loop's other work served between them; and a flood of real clients
leaving at once is still closed and forgotten whole."""

from __future__ import annotations

import asyncio

import pytest

from realtime.engine import lifecycle
from realtime.engine.turns import Turns
from tests.test_transport import eventually


async def test_callers_go_on_a_few_per_turn_in_arrival_order():
    turns = Turns(per_turn=2)
    turn = 0
    went: list[tuple[int, int]] = []  # (caller, the turn it went on in)

    async def caller(n: int) -> None:
        await turns.take()
        went.append((n, turn))

    callers = [asyncio.ensure_future(caller(n)) for n in range(7)]
    while not all(c.done() for c in callers):
        await asyncio.sleep(0)
        turn += 1
    assert [n for n, _ in went] == list(range(7))
    per_turn: dict[int, int] = {}
    for _, at in went:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert max(per_turn.values()) <= 2
    assert len(per_turn) >= 4  # 7 callers, 2 a turn


async def test_nobody_waits_when_there_is_room():
    turns = Turns(per_turn=3)
    for _ in range(3):
        with pytest.raises(StopIteration):
            turns.take().send(None)  # done without suspending
    fourth = turns.take()
    assert fourth.send(None) is not None  # in the same turn: it waits (yields its future)
    fourth.close()


async def test_a_cancelled_caller_takes_no_room():
    turns = Turns(per_turn=1)
    first, gone, kept = (asyncio.ensure_future(turns.take()) for _ in range(3))
    await asyncio.sleep(0)  # all three ask in one turn: the first goes on
    assert first.done() and not gone.done() and not kept.done()
    gone.cancel()
    await asyncio.sleep(0)  # the next turn lets one on: the one still waiting
    await asyncio.sleep(0)
    assert kept.done() and gone.cancelled()


@pytest.mark.parametrize("kind", ["py-websocket", "js-websocket", "py-polling"])
async def test_clients_leaving_at_once_are_all_closed_and_forgotten(
    gateway, connect, monkeypatch, kind
):
    monkeypatch.setattr(gateway.engine.sio.eio.closing_turns, "_per_turn", 2)
    assert lifecycle.CLOSES_PER_TURN >= 2
    clients = [await connect(kind, sub=f"c{n}") for n in range(8)]
    await asyncio.gather(*(client.disconnect() for client in clients))
    for client in clients:
        await client.wait_disconnected()
    counts = gateway.sessions.counts
    await eventually(lambda: counts()["connections"] == counts()["transports"] == 0)
    assert gateway.engine.room_figures(1) == (0, 0, {})


@pytest.mark.parametrize("kind", ["py-websocket", "js-polling"])
async def test_clients_connecting_at_once_are_all_authenticated(
    gateway, clients, token, monkeypatch, kind
):
    monkeypatch.setattr(gateway.engine.sio.eio.connecting_turns, "_per_turn", 2)
    assert lifecycle.CONNECTS_PER_TURN >= 2
    many = [clients(kind) for _ in range(8)]
    await asyncio.gather(
        *(client.connect({"token": token(f"c{n}")}) for n, client in enumerate(many))
    )
    for n, client in enumerate(many):
        assert (await client.next_event("auth_success"))["userId"] == f"c{n}"
