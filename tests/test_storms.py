"""Connection storms against a gateway process: thousands of clients from nothing to gone
(connect, authenticate, join, disconnect) over WebSocket, long-polling and upgrades, raw, with
python-socketio and with socket.io-client. Afterwards nothing of them is left: no session, no
transport, no room, no task, and the memory is where it was after a warm-up. And /status stays
small however many rooms there are.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from bench.storm import STORM_ENV, storm
from tests.conftest import SECRET
from tests.gateways import SERVICE_TOKEN, GatewayProcess, get_json, post, received, until

CYCLES = 5000
WARM_UP_CYCLES = 500
CONCURRENCY = 50
JS_CYCLES = 20  # per socket.io-client transport: a Node process each, reused cycle after cycle
RSS_GROWTH_MAX = 0.10
SENTINEL_ROOM = "availability-s0"


@pytest.fixture
async def storm_gateway(environ, free_port) -> AsyncIterator[GatewayProcess]:
    env = {**environ, "BROADCAST_TOKEN": SERVICE_TOKEN, "LOG_LEVEL": "warning", **STORM_ENV}
    gateway = await GatewayProcess(env, free_port()).start()
    yield gateway
    await gateway.stop()


async def settled(gateway: GatewayProcess, rooms: dict[str, int]) -> dict:
    """/status once only what the test holds is left (one socket in `rooms`) and the task
    count stopped falling (three equal looks in a row)."""
    tasks: list[int] = []

    async def look():
        _, figures = await get_json(gateway, "/status")
        held = (figures["transports"], figures["connections"], figures["rooms"]) == (1, 1, rooms)
        tasks[:] = [*tasks[-2:], figures["tasks"]] if held else []
        return figures if len(tasks) == 3 and len(set(tasks)) == 1 else None

    return await until(look)


async def js_cycles(connect_js, count: int) -> None:
    """`count` cycles of one socket.io-client (one Node process): each a new socket."""
    client = connect_js()
    for n in range(count):
        client.disconnected.clear()
        await client.connect({"token": token_for(f"storm-js-{n}")})
        await client.next_event("auth_success")
        joined = await client.call("join_room", {"roomId": f"availability-s{n % 50}"})
        assert joined["ok"], joined
        await client.disconnect()
        await client.wait_disconnected()


def token_for(sub: str) -> str:
    from bench.storm import token

    return token(SECRET, sub)


async def test_a_storm_of_connections_leaves_nothing_behind(storm_gateway, clients_on):
    gateway = storm_gateway
    sentinel = clients_on(gateway, "py-websocket")  # held through it all: it keeps receiving
    await sentinel.connect({"token": token_for("sentinel")})
    await sentinel.next_event("auth_success")
    assert (await sentinel.call("join_room", {"roomId": SENTINEL_ROOM}))["ok"]
    held = {"user-sentinel": 1, SENTINEL_ROOM: 1}

    warm = await storm(gateway.url, SECRET, WARM_UP_CYCLES, CONCURRENCY)
    assert warm.failures == []
    baseline = await settled(gateway, held)
    rss_warm = gateway.memory_kb("VmRSS")

    began = time.perf_counter()
    notes = asyncio.create_task(during_the_storm(gateway))
    result, *_ = await asyncio.gather(
        storm(gateway.url, SECRET, CYCLES, CONCURRENCY, first=WARM_UP_CYCLES),
        js_cycles(lambda: clients_on(gateway, "js-websocket"), JS_CYCLES),
        js_cycles(lambda: clients_on(gateway, "js-upgrade"), JS_CYCLES),
    )
    await notes
    seconds = time.perf_counter() - began
    assert result.failures == [], result.failures[:5]
    assert result.cycles == CYCLES

    after = await settled(gateway, held)
    rss_after = gateway.memory_kb("VmRSS")
    print(
        f"\nstorm: {CYCLES:,} cycles + {2 * JS_CYCLES} socket.io-client cycles in {seconds:.1f}"
        f" s ({result.per_s:,.0f} cycles/s); RSS KB after warm-up {rss_warm:,}, after the storm"
        f" {rss_after:,} ({(rss_after / rss_warm - 1) * 100:+.1f}%); tasks {baseline['tasks']}"
        f" -> {after['tasks']}"
    )
    assert after["roomCount"] == 2 and after["roomMembers"] == 2
    assert after["authenticated"] == after["users"] == 1
    assert after["tasks"] <= baseline["tasks"]
    assert rss_after <= rss_warm * (1 + RSS_GROWTH_MAX)
    got = await received(sentinel, "notification", 20)  # the storm held up no one
    assert [note["n"] for note in got] == list(range(20))


async def during_the_storm(gateway: GatewayProcess) -> None:
    for n in range(20):
        body = {"event": "notification", "data": {"n": n}, "rooms": [SENTINEL_ROOM]}
        assert await post(gateway, body) == 202


@pytest.fixture
async def clients_on() -> AsyncIterator:
    """clients_on(gateway, kind) -> an unconnected client of that gateway; closed afterwards."""
    from tests.clients import make_client

    made = []

    def make(gateway: GatewayProcess, kind: str):
        client = make_client(kind, gateway.url)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


# -- /status at scale ------------------------------------------------------------------------
@pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
@pytest.mark.parametrize(
    "listed", [None, pytest.param(5, marks=pytest.mark.env(STATUS_ROOMS_MAX="5"))]
)
async def test_status_stays_small_with_20000_rooms_and_lists_the_largest(
    http, gateway, connect, listed
):
    customer = await connect(sub="c1")
    assert (await customer.call("join_room", {"roomId": "availability-s1"}))["ok"]
    # 20,000 rooms of this instance's membership, one to 120 sockets each
    members = gateway.engine.sio.manager.rooms["/"]
    for n in range(20_000):
        members[f"availability-x{n}"] = {f"sid-{n}-{k}": "e" for k in range(1 + n % 120 // 100)}
    for n in range(150):  # the largest: 150 rooms of 10 to 159 members
        members[f"shop-big{n}"] = {f"sid-big-{k}": "e" for k in range(10 + n)}
    answer = await http.get("/status", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    text = await answer.text()
    status = json.loads(text)

    limit = listed if listed is not None else 100
    assert len(text) < 4096 + 40 * limit  # not a line per room
    assert status["roomCount"] == 20_000 + 150 + 2  # user-c1, availability-s1
    named = [m for room, m in members.items() if room is not None and room not in members[None]]
    assert status["roomMembers"] == sum(len(m) for m in named)
    expected = [f"shop-big{n}" for n in range(149, 149 - limit, -1)]
    assert list(status["rooms"]) == expected  # the largest, largest first
    assert status["rooms"][expected[0]] == 159
    assert status["tasks"] >= 1
