"""Long-polling's lane attacked after it began reading a head's header fields once for every
request that repeats them (`http11._heads`, `LaneRequest.derived`), working out its CORS
answers once per server, and keeping one timer per connection for its idle limit and its
waiting poll's deadline. Each answer must be what the request alone would get (what aiohttp's
own runner answers, or what a fresh reading gives); what is kept must stay bounded; a poll
must wait its own whole ping interval and timeout, no less and not for ever."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import weakref

import pytest
import socketio

from realtime.config import load_settings
from realtime.engine import http11, lane
from realtime.engine.answers import cors_environ
from realtime.gateway import GATEWAY
from server.app import create_app
from tests.conftest import LaneTestServer
from tests.test_hostile_lane import NOPE, answer_heads, raw_get, raw_post
from tests.test_hostile_lane_2 import acks, acks_until
from tests.test_lane import PATH, WAIT_S, Http, authenticated, get, handshake, lane_of, post
from tests.test_transport import eventually

A, B = "https://a.example", "https://b.example"


def fields_of(data: bytes) -> bytes:
    """A request's header field lines, as `_heads` keys them."""
    line_end, end = data.find(b"\r\n"), data.find(b"\r\n\r\n")
    return data[line_end + 2 : end + 2]


# --- a head read once: variants that must not be taken for one another -----------------------

# one Origin written many ways: each is its own head, read as aiohttp reads it
ORIGIN_VARIANTS = {
    "as usual": b"Origin: " + A.encode(),
    "name lower-case": b"origin: " + A.encode(),
    "name upper-case": b"ORIGIN: " + A.encode(),
    "no blank": b"Origin:" + A.encode(),
    "trailing blank": b"Origin: " + A.encode() + b" ",
    "trailing tab": b"Origin: " + A.encode() + b"\t",
    "leading tabs": b"Origin:\t\t" + A.encode(),
    "value upper-case": b"Origin: " + A.upper().encode(),
    "a trailing slash": b"Origin: " + A.encode() + b"/",
    "another origin": b"Origin: " + B.encode(),
    "empty": b"Origin: ",
}


@pytest.mark.env(CORS_ORIGINS=A)
async def test_an_origin_written_many_ways_is_answered_each_way_as_aiohttp_answers_it(
    server, plain
):
    """Each variant twice, in turn with the others (the second time read from `_heads`), as a
    handshake and as a POST: the lane's answer is aiohttp's, every time."""
    requests = []
    for line in ORIGIN_VARIANTS.values():
        requests.append(raw_get(PATH, b"Host: g", line))
        requests.append(raw_post(NOPE, b"40", b"Host: g", line, b"Content-Length: 2"))
    for _ in range(2):
        for data in requests:
            assert await answer_heads(server, data) == await answer_heads(plain, data), data


@pytest.mark.env(CORS_ORIGINS=A)
async def test_posts_sharing_one_head_each_deliver_their_own_body(server, token):
    """POSTs whose heads are the same bytes (the same length, other bodies), written at once
    with polls between them: each body's own packets handled, in order. Then a POST whose
    length differs only (another head) after them."""
    http = await Http.open(server)
    _, target = await authenticated(http, token)
    bodies = [f"42{n}" + json.dumps(["no_such_event", f"x{n}"]) for n in range(1, 10)]
    assert len({len(body) for body in bodies}) == 1  # (one head for all)
    await http.send("".join(post(target, body, "Origin: " + A) for body in bodies))
    for _ in bodies:
        status, headers, body = await http.answer()
        assert (status, body) == (200, b"ok")
        assert headers["access-control-allow-origin"] == A
    assert await acks_until(http, target, 9) == list(range(1, 10))
    longer = "4210" + json.dumps(["no_such_event", "x10"])
    await http.send(post(target, longer, "Origin: " + A))
    assert (await http.answer())[::2] == (200, b"ok")
    assert await acks_until(http, target, 10) == [10]
    http.close()


def test_a_get_and_a_post_never_share_a_head_and_their_requests_are_their_own():
    """A GET's fields with a Content-Length are aiohttp's: a lane's GET and POST cannot repeat
    each other's fields (so `derived` is never shared across methods); and every request read
    from one head is its own mapping (what the endpoint marks on it is not shared)."""
    lanes = {b"/socket.io/": type("E", (), {"max_body": 1000})()}
    fields = b"Host: g\r\nOrigin: " + A.encode() + b"\r\nContent-Length: 2\r\n"
    target = NOPE.encode()
    assert http11.read_request(b"GET " + target + b" HTTP/1.1\r\n" + fields + b"\r\nab", lanes) is (
        http11.AIOHTTPS
    )
    _, one, _ = http11.read_request(
        b"POST " + target + b" HTTP/1.1\r\n" + fields + b"\r\nab", lanes
    )
    _, two, _ = http11.read_request(
        b"POST " + target + b" HTTP/1.1\r\n" + fields + b"\r\ncd", lanes
    )
    assert one.headers is two.headers and one.derived is two.derived
    assert one.content is not two.content
    one["marked"] = True
    assert "marked" not in two


async def test_three_servers_answer_one_head_each_by_its_own_settings(aiohttp_server, environ):
    """The same bytes to a same-origin server (its Host is the Origin's), to one that allows
    only another origin, and to one that allows any: each its own answer, in any order."""
    same = await aiohttp_server(create_app(load_settings(environ)))
    other = await aiohttp_server(create_app(load_settings({**environ, "CORS_ORIGINS": B})))
    anyone = await aiohttp_server(create_app(load_settings({**environ, "CORS_ORIGINS": "*"})))
    data = raw_get(PATH, b"Host: a.example", b"Origin: " + A.encode(), b"X-Forwarded-Proto: https")
    expected = {same: 200, other: 400, anyone: 200}
    for order in ((same, other, anyone), (anyone, other, same), (other, same, other)):
        for served in order:
            status, headers, _ = await answer_heads(served, data)
            assert status == expected[served]
            assert (headers.get("access-control-allow-origin") == A) is (status == 200)


# --- what the server's settings say now -------------------------------------------------------


def flip_to_b(eio) -> None:
    eio.cors_allowed_origins = [B]


def flip_callable(eio) -> None:
    allowed = {A}
    eio.cors_allowed_origins = lambda origin: origin in allowed
    return allowed


@pytest.mark.env(CORS_ORIGINS=A)
@pytest.mark.parametrize("change", ["list replaced", "callable answering otherwise"])
async def test_an_origin_refused_after_a_change_of_settings_is_refused_by_the_lane_too(
    server, plain, change
):
    """python-engineio reads `cors_allowed_origins` on every request (a callable is asked every
    time): an origin it no longer allows is refused. The lane, having answered the same head
    before, must refuse it as aiohttp's own runner does."""
    data = raw_get(PATH, b"Host: g", b"Origin: " + A.encode(), b"X-Change: " + change.encode())
    lane_eio, plain_eio = server.app[GATEWAY].engine.sio.eio, plain.app[GATEWAY].engine.sio.eio
    if change == "callable answering otherwise":
        allowed = [flip_callable(eio) for eio in (lane_eio, plain_eio)]
    for served in (server, plain):
        assert (await answer_heads(served, data))[0] == 200
    if change == "list replaced":
        flip_to_b(lane_eio), flip_to_b(plain_eio)
    else:
        for origins in allowed:
            origins.clear()
    assert (await answer_heads(plain, data))[0] == 400  # aiohttp's: refused now
    assert await answer_heads(server, data) == await answer_heads(plain, data)


# --- what is kept, and for how long -----------------------------------------------------------


async def test_many_distinct_heads_keep_the_heads_kept_bounded(server, gateway):
    """A client sending each request with a head of its own (a counter in a header, a long
    value): `_heads` holds at most `HEADS_KEPT` of at most `HEAD_KEPT_LIMIT` bytes, each with
    what one server worked out (a handful of entries)."""
    http = await Http.open(server)
    pad = "p" * (http11.HEAD_KEPT_LIMIT - 60)
    count = http11.HEADS_KEPT * 2 + 10
    batch = 64
    for first in range(0, count, batch):
        sent = range(first, min(first + batch, count))
        await http.send("".join(get(NOPE, f"X-N: {n}", "X-Pad: " + pad) for n in sent))
        for _ in sent:
            assert (await http.answer())[0] == 400
    assert len(http11._heads) <= http11.HEADS_KEPT
    assert all(len(fields) <= http11.HEAD_KEPT_LIMIT for fields in http11._heads)
    assert all(len(head.derived) <= 1 for head in http11._heads.values())
    assert all(
        len(worked_out) <= 3
        for head in http11._heads.values()
        for _settings, worked_out in head.derived.values()
    )
    http.close()


async def test_servers_coming_and_going_leave_nothing_in_a_head_they_read(environ):
    """Servers made and closed one after the other in one process (a test suite, an app that
    restarts its gateway), each read the same head: what each worked out goes with it."""
    data = raw_get(PATH, b"Host: g", b"Origin: " + A.encode(), b"X-Coming-And-Going: 1")
    gone = []
    for _ in range(5):
        app = create_app(load_settings({**environ, "CORS_ORIGINS": A}))
        served = LaneTestServer(app)
        await served.start_server()
        assert (await answer_heads(served, data))[0] == 200
        await served.close()
        gone.append(weakref.ref(app[GATEWAY].engine.sio.eio))
        del app, served
    gc.collect()
    assert all(eio() is None for eio in gone)  # (the servers themselves are not kept)
    head = http11._heads[fields_of(data)]
    assert len(head.derived) == 0, head.derived


# --- shared things nobody may change ----------------------------------------------------------


@pytest.mark.env(CORS_ORIGINS=A)
async def test_a_compressed_answer_does_not_mark_the_shared_cors_headers(server, gateway, token):
    """Polls with one head: one answered with a large payload (compressed, its headers given
    a Content-Encoding), then one with a small payload. The second must not be marked as
    compressed, and what is worked out once for the head stays python-engineio's answer."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    origin, accept = "Origin: " + A, "Accept-Encoding: gzip"
    await eio.send(sid, "x" * 5000)
    await http.send(get(target, origin, accept))
    status, headers, body = await http.answer()
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"x" * 5000 in gzip.decompress(body)
    await eio.send(sid, "small")
    await http.send(get(target, origin, accept) * 2)  # (the second waits)
    status, headers, body = await http.answer()
    assert status == 200 and "content-encoding" not in headers and b"small" in body, headers
    assert headers["access-control-allow-origin"] == A
    data = get(target, origin, accept).encode()
    head = http11._heads[fields_of(data)]
    ((_settings, worked_out),) = head.derived.values()
    _, request, _ = http11.read_request(data, lane_of(server).lanes)
    assert worked_out["GET"] == dict(eio._cors_headers(cors_environ(request)))
    await eio.send(sid, "last")
    status, headers, body = await http.answer()
    assert status == 200 and "content-encoding" not in headers and b"last" in body
    http.close()


async def test_the_shared_empty_body_of_gets_stays_empty_whatever_gets_do(server, gateway, token):
    """Every GET's body is one `Body`: polls cut short, handshakes whose clients leave, GETs
    with bytes written behind them and GETs handed to aiohttp must leave it empty, not failed
    and waited on by nobody."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    await http.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    http.writer.transport.abort()  # a poll cut short
    leaving = await Http.open(server)
    await leaving.send(get(PATH) + "POST " + PATH)  # (a head cut short behind it)
    leaving.writer.transport.abort()
    behind = await Http.open(server)
    await behind.send(get(NOPE) + "garbage\r\n\r\n")
    assert (await behind.answer())[0] == 400
    assert (await behind.answer())[0] == 400  # (aiohttp's: a bad request line)
    behind.close()
    await eventually(lambda: not lane_of(server).live)
    body = http11._NO_BODY
    assert (body.left, body._chunks, body._failed, body._waiter) == (0, [], False, None)
    assert await body.read() == b""
    fresh = await Http.open(server)
    assert (await handshake(fresh)) and len(lane_of(server).live) == 1
    fresh.close()


# --- one timer: a poll's own deadline ---------------------------------------------------------


def short_deadline(monkeypatch, eio, interval: float = 0.3, timeout: float = 0.3) -> float:
    monkeypatch.setattr(eio, "ping_interval", interval)  # (its pings: the 25 s set at the open)
    monkeypatch.setattr(eio, "ping_timeout", timeout)
    return interval + timeout


async def waits_its_deadline(http: Http, target: str, deadline: float) -> None:
    """A poll sent now gets nothing: answered 400 (its session closed) after its whole
    deadline, and within WAIT_S."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    await http.send(get(target))
    status, _, body = await http.answer()
    assert status == 400, body
    assert loop.time() - began >= deadline - 0.01


@pytest.mark.parametrize("before", ["many polls", "polls answered at once", "a POST", "nothing"])
async def test_a_poll_waits_its_whole_deadline_whatever_came_before(
    server, gateway, token, monkeypatch, before
):
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    deadline = short_deadline(monkeypatch, eio)
    if before == "many polls":  # each waits a while, then is woken: the timer set for each
        for n in range(12):
            await http.send(get(target))
            await eventually(lambda: eio.sockets[sid].queue.waited_on())
            await asyncio.sleep(deadline / 4)  # (time passing: not a synchronisation)
            await eio.send(sid, f"n{n}")
            assert (await http.answer())[0] == 200
    elif before == "polls answered at once":
        for n in range(3):
            await eio.send(sid, f"n{n}")
            await http.send(get(target))
            assert (await http.answer())[0] == 200
    elif before == "a POST":
        await http.send(get(target))
        await eventually(lambda: eio.sockets[sid].queue.waited_on())
        await asyncio.sleep(deadline / 2)
        await eio.send(sid, "wake")
        assert (await http.answer())[0] == 200
        await http.send(post(target, "421" + json.dumps(["no_such_event"])))
        assert (await http.answer())[::2] == (200, b"ok")
        await http.send(get(target))
        assert acks((await http.answer())[2]) == [1]
    await waits_its_deadline(http, target, deadline)
    assert sid not in eio.sockets or eio.sockets[sid].closed
    http.close()


async def test_a_poll_pipelined_behind_one_answered_at_once_waits_its_whole_deadline(
    server, gateway, token, monkeypatch
):
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    deadline = short_deadline(monkeypatch, eio)
    await eio.send(sid, "waiting")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await http.send(get(target) * 2)
    assert (await http.answer())[0] == 200
    status, _, body = await http.answer()
    assert status == 400, body
    assert loop.time() - began >= deadline - 0.01
    http.close()


async def test_a_poll_longer_than_the_idle_limit_is_not_cut_by_it(
    server, gateway, token, monkeypatch
):
    """The idle limit shorter than a poll's deadline: the one timer rings at the idle limit
    while the poll waits, and must wait on (the poll is a request under way), then answer it
    at its deadline; the connection, idle after that, is closed by the idle limit."""
    eio = gateway.engine.sio.eio
    monkeypatch.setattr(lane, "IDLE_S", 0.5)  # (from the connection's start: its timer's)
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    (connection,) = lane_of(server).live
    deadline = short_deadline(monkeypatch, eio, 0.8, 0.8)
    assert connection._due < asyncio.get_running_loop().time() + lane.IDLE_S
    await waits_its_deadline(http, target, deadline)
    assert sid not in eio.sockets or eio.sockets[sid].closed
    assert await http.ended()


async def test_a_poll_after_the_connection_went_to_aiohttp_waits_its_deadline(
    server, gateway, token, monkeypatch
):
    """Handed to aiohttp (another route), the lane's timer is gone: the poll is aiohttp's and
    the socket's own wait answers it, after the whole deadline."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    (connection,) = lane_of(server).live
    await http.send(get("/health"))
    assert (await http.answer())[0] == 200
    assert not lane_of(server).live and connection._timer is None
    deadline = short_deadline(monkeypatch, eio)
    await waits_its_deadline(http, target, deadline)
    assert sid not in eio.sockets or eio.sockets[sid].closed
    http.close()


@pytest.mark.parametrize(
    "turns",
    [
        0,
        1,
        "1, behind many closes",
    ],
)
async def test_a_deadline_ringing_as_the_connection_is_lost_closes_the_session(
    server, gateway, token, turns
):
    """The poll's deadline rings and its connection is lost in the same turn of the loop, or
    the next: the poll is answered nowhere, and its session is closed whole (not left for its
    pings to find its client gone, 45 s on, nor left closing)."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    await http.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    socket = eio.sockets[sid]
    (connection,) = lane_of(server).live
    connection._since -= eio.ping_interval + eio.ping_timeout  # (its deadline: past)
    connection._timer.cancel()
    others = []
    if turns == "1, behind many closes":  # (its close waits some turns for its own)
        others = [asyncio.ensure_future(eio.closing_turns.take()) for _ in range(20_000)]
    connection._ring()  # the deadline rings...
    for _ in range(0 if turns == 0 else 1):
        await asyncio.sleep(0)
    connection.abort()  # ...and the connection is lost, its loss handled next
    await asyncio.gather(*others)
    await eventually(lambda: socket.closed, within=5)
    assert connection._timer is None and not lane_of(server).live
    http.close()


async def test_a_poll_waiting_at_shutdown_is_answered_and_no_timer_rings_after(
    aiohttp_server, app, token
):
    served = await aiohttp_server(app, shutdown_timeout=2.0)
    eio = app[GATEWAY].engine.sio.eio
    http = await Http.open(served)
    sid, target = await authenticated(http, token)
    await http.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    (connection,) = lane_of(served).live
    await asyncio.wait_for(served.close(), WAIT_S)
    assert (await http.answer())[0] in (200, 400)
    assert await http.ended()
    assert connection._timer is None and connection._polled is None


# --- real clients -----------------------------------------------------------------------------


@pytest.mark.env(CORS_ORIGINS=A)
async def test_real_clients_polling_from_an_allowed_origin_another_and_none(
    server, clients, connect, token, base_url
):
    """python-socketio over long-polling with an allowed Origin, one with another Origin (its
    handshake refused, then the same head again), and the JS client (Node sends no Origin),
    side by side: each their own answers, poll after poll from the same heads."""
    js = await connect("js-polling")
    allowed, refused = clients("py-polling"), clients("py-polling")
    await allowed.sio.connect(
        base_url,
        transports=["polling"],
        headers={"Origin": A},
        auth={"token": token("u2")},
        wait_timeout=WAIT_S,
    )
    await allowed.next_event("auth_success")
    for _ in range(2):
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.sio.connect(
                base_url,
                transports=["polling"],
                headers={"Origin": B},
                auth={"token": token("u3")},
                wait_timeout=WAIT_S,
            )
    for n in range(20):
        for client in (allowed, js):
            answer = await client.call("no_such_event", {"n": n})
            assert "unknown event" in json.dumps(answer), answer


async def test_a_head_refused_is_never_kept_and_is_refused_each_time(server, plain):
    """A head the lane may not read (a second Host line): aiohttp's every time, as aiohttp
    answers it; it is not kept, so no later request can be read from it."""
    data = raw_get(NOPE, b"Host: g", b"Origin: " + A.encode(), b"Host: again")
    for _ in range(2):
        assert await answer_heads(server, data) == await answer_heads(plain, data)
    assert fields_of(data) not in http11._heads


@pytest.mark.env(CORS_ORIGINS=A)
@pytest.mark.parametrize("size", [10, 5000])
async def test_a_polls_answer_written_from_its_body_and_headers_is_aiohttps(
    server, plain, token, size
):
    """A poll's 200, written by the lane from its body and headers (no `web.Response`): the
    same status, headers and body as aiohttp's own runner writes, compressed or not."""
    answers = []
    for served in (server, plain):
        http = await Http.open(served)
        sid, target = await authenticated(http, token)
        await served.app[GATEWAY].engine.sio.eio.send(sid, "x" * size)
        await http.send(get(target, "Origin: " + A, "Accept-Encoding: gzip, deflate"))
        status, headers, body = await http.answer()
        headers.pop("date")
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
            headers.pop("content-length")
        answers.append((status, headers, body))
        http.close()
    assert answers[0] == answers[1]
