"""docs/clients.md's JS code is the code that runs: its catch-up module is cut out of the
document and run by Node (tests/js/clients-doc-catchup.mjs) on socket.io-client against a real
gateway, through a first connection that catches up from a cursor, live events, a network
loss during which events are written and the first token is revoked, and a reconnection
that must send a fresh token and the cursor; and on sample input of its ordering function."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

import pytest

from tests.clients import ROOT
from tests.tools import require

DOC = os.path.join(ROOT, "docs", "clients.md")
DRIVER = os.path.join(ROOT, "tests", "js", "clients-doc-catchup.mjs")
MODULE = "gateway-connection.mjs"  # the first line of the block names it
WAIT_S = 10.0


def documented_module() -> str:
    with open(DOC) as doc:
        blocks = re.findall(r"```js\n(.*?)```", doc.read(), flags=re.DOTALL)
    [module] = [block for block in blocks if block.startswith(f"// {MODULE}")]
    return module


class DocumentedClient:
    """The documented module in a Node process: commands in, reports out."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, directory) -> DocumentedClient:
        module = directory / MODULE
        module.write_text(documented_module())
        # the module imports "socket.io-client": Node finds it by walking up from the module
        (directory / "node_modules").symlink_to(os.path.join(ROOT, "node_modules"))
        process = await asyncio.create_subprocess_exec(
            "node",
            DRIVER,
            str(module),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        client = cls(process)
        await client.next("ready")
        return client

    async def _read(self) -> None:
        async for line in self.process.stdout:
            self.reports.put_nowait(json.loads(line))

    def send(self, op: str, **fields: Any) -> None:
        self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())

    async def next(self, kind: str) -> dict[str, Any]:
        """The next report, which must be of this kind (an error, a refused handshake or an
        event out of turn fails the test at once)."""
        report = await asyncio.wait_for(self.reports.get(), WAIT_S)
        assert report["type"] == kind, report
        return report

    async def events(self, count: int) -> list[str]:
        return [(await self.next("event"))["eventId"] for _ in range(count)]

    async def close(self) -> None:
        if self.process.returncode is None:
            self.send("exit")
            try:
                await asyncio.wait_for(self.process.wait(), WAIT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()


@pytest.fixture
def node() -> str:
    return require("node")  # or skip, naming what to install


@pytest.fixture
async def documented_client(node, tmp_path):
    client = await DocumentedClient.start(tmp_path)
    yield client
    await client.close()


async def test_the_documented_ordering_sorts_dedupes_and_skips_what_was_delivered(
    documented_client,
):
    ids = [f"{n:016d}" for n in range(10)]
    held = [ids[5], ids[2], ids[7], ids[2], ids[3], ids[5], ids[9]]
    documented_client.send("order", held=held, seen=[ids[3]])
    answer = await documented_client.next("ordered")
    assert answer["ids"] == [ids[2], ids[5], ids[7], ids[9]]
    assert sorted(answer["seen"]) == [ids[2], ids[3], ids[5], ids[7], ids[9]]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_documented_catch_up_against_a_real_gateway(
    documented_client, gateway, base_url, token, transport
):
    async def post(event: str = "notification", **targets) -> str:
        body = {"event": event, "data": {}, **targets}
        return (await gateway.broadcaster.broadcast(body, None))["eventId"]

    # written before the client connects, from a cursor older than all of them
    earlier = [
        await post(users=["st1"]),
        await post(rooms=["shop-s1"]),
        await post(rooms=["shop-s1"], users=["st1"]),  # two rooms: replayed by both
        await post(rooms=["availability-s1"]),
        await post(users=["st1"]),
    ]
    elsewhere = await post(rooms=["shop-s2"])  # a room the client does not join
    client = documented_client
    client.send(
        "connect",
        url=base_url,
        rooms=["shop-s1", "availability-s1"],
        cursor="0",
        transports=[transport],
        token=token("st1", "staff", ["s1"], jti="first"),
    )
    await client.next("connected")
    assert await client.events(len(earlier)) == earlier  # in eventId order, each once
    caught_up = await client.next("caught_up")
    # the user room's replay, then each room's, all held: two replays of one event among them
    assert caught_up["held"] > len(earlier)
    # past every event of its rooms; auth_success may name a newer id, of a room not joined
    assert caught_up["cursor"] in (earlier[-1], elsewhere)

    live = await post(rooms=["shop-s1"])
    assert await client.events(1) == [live]

    client.send("drop")
    assert (await client.next("disconnected"))["reason"] == "forced close"  # the engine closed
    # while the client is away: its first token is revoked, and events are written
    await gateway.revoker.revoke({"jti": "first", "until": time.time() + 3600})
    missed = [
        await post(rooms=["shop-s1"], users=["st1"]),
        await post(rooms=["availability-s1"]),
        await post(users=["st1"]),
    ]
    client.send("token", token=token("st1", "staff", ["s1"], jti="second"))
    client.send("resume")
    await client.next("connected")  # with the fresh token: the first is refused now
    assert await client.events(len(missed)) == missed  # replayed from the cursor, each once
    assert (await client.next("caught_up"))["held"] > len(missed)  # one event, two rooms
    after = await post(rooms=["shop-s1"], users=["st1"])
    assert await client.events(1) == [after]
    client.send("cursor")
    assert (await client.next("cursor"))["cursor"] == after
    assert client.reports.empty()  # nothing more: no repeat, no error


async def test_the_documented_first_connection_gets_a_cursor_before_any_event(
    documented_client, gateway, base_url, token
):
    async def post(**targets) -> str:
        body = {"event": "notification", "data": {}, **targets}
        return (await gateway.broadcaster.broadcast(body, None))["eventId"]

    before = await post(rooms=["shop-s1"])
    client = documented_client
    client.send(
        "connect",
        url=base_url,
        rooms=["shop-s1"],
        cursor=None,  # nothing seen yet: the app loads its state, nothing is replayed
        transports=["websocket"],
        token=token("st1", "staff", ["s1"]),
    )
    await client.next("connected")
    # nothing replayed, yet the joins' answers and auth_success name the newest id: a cursor
    assert await client.next("caught_up") == {"type": "caught_up", "cursor": before, "held": 0}
    live = await post(rooms=["shop-s1"])
    assert await client.events(1) == [live]
    client.send("cursor")
    assert (await client.next("cursor"))["cursor"] == live
