"""The gateway as a process: SIGTERM shuts it down cleanly and clients come back by
themselves; kill -9 in the middle of a stream loses nothing and repeats nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys

import aiohttp
import pytest

from realtime.changes.watcher import dead_on_this_host
from tests.clients import ROOT, make_client
from tests.gateways import GatewayProcess, run_cli

SERVICE_TOKEN = "lifecycle-service-token-0123456789"
SLOT = {"startsAt": "2026-11-21T10:00:00.000Z", "durationMinutes": 60}


@pytest.fixture
def env(environ) -> dict[str, str]:
    return {
        "STORE_PATH": environ["STORE_PATH"],
        "JWT_SECRET": environ["JWT_SECRET"],
        "BROADCAST_TOKEN": SERVICE_TOKEN,
    }


@pytest.fixture
async def gateways(env, free_port):
    """gateways() -> a started gateway process; every process is killed in teardown."""
    started: list[GatewayProcess] = []
    port = free_port()

    async def start() -> GatewayProcess:
        gateway = await GatewayProcess(env, port).start()  # the same port each time
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


async def test_sigterm_exits_cleanly_and_clients_reconnect_and_catch_up(
    env, gateways, token, client_kind
):
    first = await gateways()
    client = make_client(client_kind, first.url, reconnect=True)
    try:
        await client.connect({"token": token("c1")})
        await client.next_event("auth_success")
        async with aiohttp.ClientSession(first.url) as http:
            answer = await http.post(
                "/broadcast",
                json={"event": "notification", "data": {"title": "before"}, "users": ["c1"]},
                headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            )
            assert answer.status == 202
        await client.next_event("notification")

        first.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.process.wait(), 30) == 0
        await client.wait_disconnected()  # its transport was closed; it was not told to stay away

        booking = await run_cli(
            env,
            "store",
            "insert",
            "bookings",
            json.dumps({"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}),
        )
        await gateways()  # back on the same port and store
        again = await client.next_event("auth_success", timeout=30)  # reconnected by itself
        assert again["replayed"] == 1 and again["gap"] is False
        missed = await client.next_event("reservation_update")
        assert missed["reservationId"] == booking and missed["updateType"] == "created"
    finally:
        await client.close()


WRITER = """
import asyncio, sys
from storage.sqlite.store import SqliteStore

async def main(path, count):
    store = SqliteStore(path)
    await store.open()
    for n in range(count):
        await store.insert_document("bookings", {"_id": f"b{n:04d}", "customerId": "c1",
            "shopId": "s1", "status": "pending", "durationMinutes": 60,
            "startsAt": "2026-11-21T10:00:00.000Z"})
        await asyncio.sleep(0.004)  # the writer's own pace: about 250 bookings a second
    await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_kill_9_mid_stream_loses_nothing_and_repeats_nothing(env, gateways, token):
    count = 300
    first = await gateways()
    client = make_client("py-websocket", first.url, reconnect=True)
    writer = None
    try:
        await client.connect({"token": token("c1")})
        await client.next_event("auth_success")
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            env["STORE_PATH"],
            str(count),
            cwd=ROOT,
            env={"PYTHONPATH": ROOT},
        )
        for _ in range(30):  # well into the stream
            await client.next_event("reservation_update")
        first.process.kill()
        await first.process.wait()
        await client.wait_disconnected()
        await gateways()

        got = 30
        while got < count:  # everything, live or replayed after the reconnection
            await client.next_event("reservation_update", timeout=30)
            got += 1
        assert await writer.wait() == 0
    finally:
        await client.close()
        if writer is not None and writer.returncode is None:
            writer.kill()
    updates = [p for name, p in client.log if name == "reservation_update"]
    assert sorted(u["reservationId"] for u in updates) == [f"b{n:04d}" for n in range(count)]
    ids = [u["eventId"] for u in updates]
    assert len(set(ids)) == len(ids) == count and ids == sorted(ids)
    with sqlite3.connect(env["STORE_PATH"]) as db:
        logged = db.execute("SELECT COUNT(*), COUNT(DISTINCT source) FROM events").fetchone()
    assert logged == (2 * count, 2 * count)  # a reservation and an availability event each


def test_only_a_gone_process_of_this_host_counts_as_a_dead_holder():
    host = socket.gethostname()
    assert dead_on_this_host(f"{host}:{os.getpid()}:abc")  # a restart that got the same pid
    assert not dead_on_this_host(f"{host}:1:abc")  # pid 1 lives: not known dead
    assert not dead_on_this_host(f"other-{host}:{os.getpid()}:abc")  # another host: unknown
    assert not dead_on_this_host("not an instance id")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert dead_on_this_host(f"{host}:{gone.pid}:abc")
