"""What the lane works out once instead of for every poll: a head's header fields (and the
CORS answers drawn from them) read once for all the requests that repeat them byte for byte,
and one timer per connection for both its idle limit and its waiting poll's. Each must give
exactly the answers worked out afresh would."""

from __future__ import annotations

import asyncio
import gc
import weakref

from realtime.config import load_settings
from realtime.engine import http11, lane
from realtime.gateway import GATEWAY
from server.app import create_app
from tests.conftest import LaneTestServer
from tests.test_lane import PATH, Http, authenticated, get, post

A, B = "https://a.example", "https://b.example"


class Endpoint:
    max_body = 1_000_000


LANES = {b"/socket.io/": Endpoint()}


def head(*fields: str, target: str = PATH) -> bytes:
    return get(target, *fields).encode()


def test_a_head_read_again_gives_the_same_request_and_its_fields_are_shared():
    data = head("Origin: " + A, "X-Trace: 1", "Connection: keep-alive, close")
    first = http11.read_request(data, LANES)
    again = http11.read_request(data.replace(b"polling", b"polling&t=2", 1), LANES)
    assert first[1].headers is again[1].headers  # read once
    assert first[1].derived is again[1].derived
    assert again[1].query["t"] == "2" and "t" not in first[1].query  # the query read each time
    assert first[1].closes is again[1].closes is True
    other = http11.read_request(head("Origin: " + B, "X-Trace: 1"), LANES)
    assert other[1].headers["Origin"] == B and other[1].closes is False
    assert other[1].derived is not first[1].derived


def test_heads_kept_are_bounded_and_large_ones_are_read_each_time(monkeypatch):
    monkeypatch.setattr(http11, "_heads", {})
    for n in range(http11.HEADS_KEPT * 2):
        assert http11.read_request(head(f"X-N: {n}"), LANES)[1].headers["X-N"] == str(n)
    assert len(http11._heads) == http11.HEADS_KEPT
    assert b"X-N: 0\r\n" not in b"".join(http11._heads)  # the oldest went first
    large = head("X-Big: " + "a" * (http11.HEAD_KEPT_LIMIT + 1))
    assert http11.read_request(large, LANES)[1].headers["X-Big"].startswith("a")
    assert all(len(fields) <= http11.HEAD_KEPT_LIMIT for fields in http11._heads)


def test_a_head_refused_once_is_refused_again_and_a_post_needs_its_length():
    twice = head("Host: again")  # (a second Host line: aiohttp refuses it)
    assert http11.read_request(twice, LANES) is http11.AIOHTTPS
    assert http11.read_request(twice, LANES) is http11.AIOHTTPS
    fields = b"Host: gateway\r\nContent-Length: 2\r\n\r\n"
    assert http11.read_request(b"GET " + PATH.encode() + b" HTTP/1.1\r\n" + fields, LANES) is (
        http11.AIOHTTPS  # (a GET with a body: aiohttp's)
    )
    _, request, _ = http11.read_request(
        b"POST " + PATH.encode() + b" HTTP/1.1\r\n" + fields + b"ok", LANES
    )
    assert request.content_length == 2 and not request.content.left


async def test_servers_with_other_origins_answer_one_head_each_by_its_own(aiohttp_server, environ):
    """The fields of a head are shared by every server of the process; what is worked out
    from them for one server (whether the origin is allowed, its CORS headers) is not."""
    allows_a = await aiohttp_server(create_app(load_settings({**environ, "CORS_ORIGINS": A})))
    allows_b = await aiohttp_server(create_app(load_settings({**environ, "CORS_ORIGINS": B})))
    for _ in range(2):
        for server, allowed in ((allows_a, True), (allows_b, False), (allows_a, True)):
            http = await Http.open(server)
            await http.send(get(PATH, "Origin: " + A))
            status, headers, body = await http.answer()
            if allowed:
                assert status == 200 and body.startswith(b"0{"), body
                assert headers["access-control-allow-origin"] == A
            else:
                assert status == 400, body
                assert "access-control-allow-origin" not in headers
            http.close()


async def test_a_poll_waits_its_own_ping_interval_and_timeout_not_the_one_before(
    server, gateway, token, monkeypatch
):
    """The connection's one timer is set for the first poll's deadline; a later poll, begun
    after, is given its own full wait, and then answered as gone (its session closed)."""
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    eio = gateway.engine.sio.eio
    monkeypatch.setattr(eio, "ping_interval", 0.4)  # (its pings wait the 25 s set at the open)
    monkeypatch.setattr(eio, "ping_timeout", 0.4)
    loop = asyncio.get_running_loop()
    await http.send(get(target))  # the first poll waits...
    await asyncio.sleep(0.5)  # (...past half its deadline, which the timer is set for)
    asker = await Http.open(server)  # ...until a refused event's answer comes
    await asker.send(post(target, "421" + '["no_such_event"]'))
    assert (await asker.answer())[2] == b"ok"
    status, _, body = await http.answer()
    assert status == 200 and b"unknown event" in body, body
    began = loop.time()
    await http.send(get(target))  # the second waits for nothing, its whole deadline
    status, _, body = await http.answer()
    assert status == 400, body
    assert loop.time() - began >= 0.8 - 0.01  # (not cut at the first's deadline, 0.3 s in)
    assert sid not in eio.sockets or eio.sockets[sid].closed
    http.close()
    asker.close()


async def test_a_connection_idle_after_its_polls_is_closed_by_the_same_timer(
    server, token, monkeypatch
):
    monkeypatch.setattr(lane, "IDLE_S", 0.3)
    http = await Http.open(server)
    await authenticated(http, token)
    assert await http.ended()


async def test_a_server_gone_is_not_kept_by_the_heads_it_read(environ):
    """Heads are kept process-wide; what each server worked out from them must not keep the
    server (its store, its sessions) alive once it is gone."""
    app = create_app(load_settings({**environ, "CORS_ORIGINS": A}))
    server = LaneTestServer(app)
    await server.start_server()
    http = await Http.open(server)
    await http.send(get(PATH, "Origin: " + A, "X-Gone: 1"))
    assert (await http.answer())[0] == 200
    http.close()
    await server.close()
    gone = weakref.ref(app[GATEWAY].engine.sio.eio)
    assert any(fields.endswith(b"X-Gone: 1\r\n") for fields in http11._heads)
    del app, server
    gc.collect()
    assert gone() is None
