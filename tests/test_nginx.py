"""docs/nginx.conf, as shipped, in front of two gateway processes on one store and one Redis:
clients of both kinds over both transports connect through it, join, and get every broadcast
posted to either process (or through nginx) once, in order."""

from __future__ import annotations

import pytest

from tests.gateways import Nginx, post, received
from tests.tools import require


@pytest.fixture
async def nginx(gateways, tmp_path, free_port):
    require("nginx")  # before the gateways start
    first, second = await gateways(), await gateways()
    proxy = await Nginx(str(tmp_path / "nginx"), free_port(), [first.port, second.port]).start()
    yield proxy, first, second
    await proxy.stop()


async def test_clients_of_every_kind_through_nginx_get_broadcasts_posted_to_either_process(
    nginx, token, client_kind
):
    from tests.clients import make_client

    proxy, first, second = nginx
    client = make_client(client_kind, proxy.url)
    try:
        await client.connect({"token": token("st1", "staff", ["s1"])})
        await client.next_event("auth_success")
        assert (await client.call("join_room", {"roomId": "shop-s1"}))["ok"]
        for n, target in enumerate([first, second, proxy] * 4):
            body = {"event": "notification", "data": {"n": n}, "rooms": ["shop-s1"]}
            assert await post(target, body) == 202
        notes = await received(client, "notification", 12)
        assert [note["n"] for note in notes] == list(range(12))
        # long-polling needs every request of a session on one process: many polls later,
        # the session still answers (a request on the other process would be refused)
        assert (await client.call("leave_room", {"roomId": "shop-s1"}))["ok"]
    finally:
        await client.close()
