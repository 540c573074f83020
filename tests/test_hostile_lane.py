"""Long-polling's lane (`realtime/engine/lane.py`) attacked as a client would: heads aiohttp
refuses, requests split or run together on the wire, clients that close at every point, and
what a connection leaves behind. Each answer is compared with what aiohttp alone answers
(the same app on aiohttp's own runner), or with what the protocol says."""

from __future__ import annotations

import asyncio
import gc
import json
import time

import aiohttp
import engineio.packet
import pytest

from realtime.engine import lane
from realtime.engine.http11 import HEAD_LIMIT, INCOMPLETE, read_request
from realtime.engine.lane import LaneConnection
from realtime.gateway import GATEWAY
from tests.test_lane import PATH, Http, authenticated, get, handshake, lane_of
from tests.test_transport import eventually

NOPE = PATH + "&sid=nope"  # a session that does not exist: the lane answers it 400 itself


async def exchange(served, data: bytes, answers: int) -> list:
    """What `served` answers to `data`, written at once: `answers` (status, body, Connection
    header), "closed" in place of those the connection ends before."""
    return await exchange_pieces(served, [data], answers, whole=True)


def raw_get(target: str, *lines: bytes) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\n".encode()
        + b"".join(line + b"\r\n" for line in lines)
        + (b"\r\n")
    )


def raw_post(target: str, body: bytes, *lines: bytes) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\n".encode()
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
        + body
    )


# Heads that read plainly to the lane but that aiohttp's parser has rules for.
ODD_HEADS = {
    "two Host headers": raw_get(NOPE, b"Host: a", b"Host: b"),
    "two User-Agent headers": raw_get(NOPE, b"Host: g", b"User-Agent: a", b"User-Agent: b"),
    "two Content-Type headers on a POST": raw_post(
        NOPE, b"ab", b"Host: g", b"Content-Type: a", b"Content-Type: b", b"Content-Length: 2"
    ),
    "129 headers": raw_get(NOPE, b"Host: g", *(b"X-%d: v" % i for i in range(128))),
    "a header of 9000 bytes": raw_get(NOPE, b"Host: g", b"X-Big: " + b"a" * 9000),
    "a request line of 9000 bytes": raw_get(NOPE + "&t=" + "a" * 9000, b"Host: g"),
    "obs-text in a value": raw_get(NOPE, b"Host: g", b"X-A: caf\xc3\xa9 \xff"),
    "a length with leading zeros": raw_post(NOPE, b"ab", b"Host: g", b"Content-Length: 002"),
    "a length of 5000 digits": raw_post(NOPE, b"ab", b"Host: g", b"Content-Length: " + b"9" * 5000),
    "a length with a sign": raw_post(NOPE, b"ab", b"Host: g", b"Content-Length: +2"),
    "Transfer-Encoding with a space before its colon": raw_post(
        NOPE, b"2\r\nab\r\n0\r\n\r\n", b"Host: g", b"Transfer-Encoding : chunked"
    ),
    "Transfer-Encoding beside a length": raw_post(
        NOPE,
        b"2\r\nab\r\n0\r\n\r\n",
        b"Host: g",
        b"Content-Length: 2",
        b"transfer-encoding: chunked",
    ),
    "a tab before a value": raw_get(NOPE, b"Host:\tg"),
    "DEL in a value": raw_get(NOPE, b"Host: g", b"X-A: a\x7fb"),
    "an empty header name": raw_get(NOPE, b"Host: g", b": v"),
    "a bare CR in a value": raw_get(NOPE, b"Host: g", b"X-A: a\rb"),
    "a lower-case method": f"get {NOPE} HTTP/1.1\r\nHost: g\r\n\r\n".encode(),
    "an empty line first": b"\r\n" + raw_get(NOPE, b"Host: g"),
    "a POST of no body": raw_post(NOPE, b"", b"Host: g", b"Content-Length: 0"),
    "a POST without a length": raw_post(NOPE, b"", b"Host: g"),
    "Connection: keep-alive, close": raw_get(NOPE, b"Host: g", b"Connection: keep-alive, close"),
    "close in a second Connection header": raw_get(
        NOPE, b"Host: g", b"Connection: keep-alive", b"Connection: close"
    ),
    "Connection: Close, spelt so": raw_get(NOPE, b"Host: g", b"Connection:  Close "),
}


@pytest.mark.parametrize("name", ODD_HEADS)
async def test_heads_are_read_as_aiohttp_reads_them(server, plain, name):
    data = ODD_HEADS[name]
    assert await exchange(server, data, 1) == await exchange(plain, data, 1)


async def test_a_handshake_whose_client_left_leaves_no_session_unattended(server, gateway):
    sockets = gateway.engine.sio.eio.sockets
    for _ in range(20):
        http = await Http.open(server)
        await http.send(raw_get(PATH, b"Host: g"))
        http.writer.transport.abort()  # gone before its answer
    await eventually(lambda: not lane_of(server).live)
    await eventually(lambda: all(s.closed or s.ping_timer is not None for s in sockets.values()))


async def exchange_pieces(served, pieces: list[bytes], answers: int, whole: bool = False) -> list:
    """`exchange`, the bytes written in `pieces` one after the other (each drained first); of a
    200's body only its first byte unless `whole` (a handshake's sid differs between servers)."""
    http = await Http.open(served)
    got: list = []
    try:
        for piece in pieces:
            await http.send(piece)
        for _ in range(answers):
            try:
                status, headers, body = await http.answer()
            except (asyncio.IncompleteReadError, ConnectionError):
                got.append("closed")
                break
            kept = body if whole or status != 200 else body[:1]
            got.append((status, kept, headers.get("connection")))
    finally:
        http.close()
    return got


NOPE_POST = raw_post(NOPE, b"40", b"Host: g", b"Content-Length: 2")
HEALTH = raw_get("/socket.io/?EIO=4", b"Host: g")  # not the lane's: no transport
SEQUENCES = {
    "a lane POST, then another route": ([NOPE_POST + HEALTH], 2),
    "another route, then a lane POST": ([HEALTH + NOPE_POST], 2),
    "a body in pieces, the next request with its last": (
        [NOPE_POST[:-2], b"4", b"0" + raw_get(NOPE, b"Host: g")],
        2,
    ),
    "a body that reads as a request": (
        [
            raw_post(NOPE, b"GET /health HTTP/1.1\r\n\r\n", b"Host: g", b"Content-Length: 24")
            + raw_get(NOPE, b"Host: g")
        ],
        2,
    ),
    "a head in pieces across its CRLFs": (
        [NOPE_POST[:40], NOPE_POST[40:-5] + b"\r", b"\n" + NOPE_POST[-4:]],
        1,
    ),
    "a bare LF in a later piece of a head": (
        [raw_get(NOPE, b"Host: g")[:-20], raw_get(NOPE, b"Host: g")[-20:].replace(b"\r\n", b"\n")],
        1,
    ),
    "a CRLF split between two pieces": (
        [NOPE_POST[: NOPE_POST.index(b"\r\n") + 1], NOPE_POST[NOPE_POST.index(b"\r\n") + 1 :]],
        1,
    ),
    "three lane requests, then a WebSocket refused": (
        [NOPE_POST * 3 + raw_get(NOPE, b"Host: g", b"Upgrade: websocket", b"Connection: Upgrade")],
        4,
    ),
}


@pytest.mark.parametrize("name", SEQUENCES)
async def test_requests_run_together_are_answered_as_aiohttp_answers_them(server, plain, name):
    pieces, answers = SEQUENCES[name]
    assert await exchange_pieces(server, pieces, answers) == await exchange_pieces(
        plain, pieces, answers
    )


# where a client may close: what it has written by then (`target`: its session's polls)
CUT_AT = {
    "mid-head": lambda target, auth: raw_get(target, b"Host: g")[:30],
    "after a POST's head": lambda target, auth: raw_post(
        target, b"", b"Host: g", b"Content-Length: 200"
    ),
    "mid-body": lambda target, auth: raw_post(
        target, auth[:5], b"Host: g", b"Content-Length: %d" % len(auth)
    ),
    "while its packets are handled": lambda target, auth: raw_post(
        target, auth, b"Host: g", b"Content-Length: %d" % len(auth)
    ),
    "while a poll waits": lambda target, auth: raw_get(target, b"Host: g"),
    "handed over to aiohttp": lambda target, auth: raw_get("/health", b"Host: g"),
}


@pytest.mark.parametrize("point", CUT_AT)
async def test_a_client_closing_at_any_point_leaves_nothing_behind(server, token, point):
    http = await Http.open(server)
    target = f"{PATH}&sid={await handshake(http)}"
    assert len(lane_of(server).live) == 1
    auth = ("40" + json.dumps({"token": token("u1")})).encode()
    await http.send(CUT_AT[point](target, auth))
    http.writer.transport.abort()
    await eventually(lambda: not lane_of(server).live)
    await eventually(lambda: not lane_connections())


def lane_connections() -> list[LaneConnection]:
    """Every `LaneConnection` still in memory (those kept only by a cycle collected first)."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is LaneConnection]


async def test_a_poll_whose_connection_is_lost_as_its_packet_comes_closes_its_session(
    server, gateway, token
):
    """The connection is lost, and a packet comes for its waiting poll, in the same turn of
    the loop (the loss is handled first): the packet went nowhere, so the session closes, as
    it does for any poll cut short (its client catches up on reconnecting)."""
    sockets = gateway.engine.sio.eio.sockets
    http = await Http.open(server)
    sid, target = await authenticated(http, token)  # (a session that stays)
    await http.send(get(target))
    await eventually(lambda: sockets[sid].queue.waited_on())
    (connection,) = lane_of(server).live
    connection.abort()  # (what a reset read in this turn does: its loss is handled next)
    sockets[sid].queue.put_nowait(engineio.packet.Packet(engineio.packet.MESSAGE, "lost"))
    await eventually(lambda: sid not in sockets or sockets[sid].closed)
    http.close()


async def test_a_request_whose_client_leaves_while_it_closes_a_session_closes_it_whole(
    server, gateway, token
):
    """An overlapping poll closes its session (the first poll takes the CLOSE); its client
    leaving while that close waits its turn (`closing_turns`, many sessions closing at once)
    must not cut the close short: a session left closing, never closed, is never swept."""
    eio = gateway.engine.sio.eio
    first = await Http.open(server)
    sid, target = await authenticated(first, token)
    await first.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    # many closes before this one: it waits some turns of the loop for its own
    others = [asyncio.ensure_future(eio.closing_turns.take()) for _ in range(20_000)]
    second = await Http.open(server)
    await second.send(get(target))
    await eventually(lambda: eio.sockets[sid].closing or eio.sockets[sid].closed)
    second.writer.transport.abort()  # gone while its request closes the session
    await asyncio.gather(*others)
    await eventually(lambda: sid not in eio.sockets or eio.sockets[sid].closed)
    status, _, body = await first.answer()  # the waiting poll took the CLOSE
    assert status == 200 and body.endswith(b"1"), body
    first.close()


async def answer_heads(served, data: bytes) -> tuple:
    """The status and headers `served` answers `data` with (Date and the session's own
    bytes aside), and the body of a refusal."""
    http = await Http.open(served)
    try:
        await http.send(data)
        status, headers, body = await http.answer()
    finally:
        http.close()
    headers.pop("date", None)
    return status, headers, body if status != 200 else body[:1]


ORIGIN = "https://app.example"
CORS_REQUESTS = {
    "a handshake from an allowed origin": raw_get(PATH, b"Host: g", b"Origin: " + ORIGIN.encode()),
    "a handshake from another origin": raw_get(PATH, b"Host: g", b"Origin: https://evil.example"),
    "a POST from an allowed origin": raw_post(
        NOPE, b"40", b"Host: g", b"Origin: " + ORIGIN.encode(), b"Content-Length: 2"
    ),
    "a POST from another origin": raw_post(
        NOPE, b"40", b"Host: g", b"Origin: https://evil.example", b"Content-Length: 2"
    ),
    "an origin of bytes past ASCII": raw_get(PATH, b"Host: g", b"Origin: https://\xc3\xa9.example"),
    "two origins": raw_get(
        PATH, b"Host: g", b"Origin: " + ORIGIN.encode(), b"Origin: https://evil.example"
    ),
    "a forwarded scheme": raw_get(
        PATH, b"Host: g", b"Origin: " + ORIGIN.encode(), b"X-Forwarded-Proto: https"
    ),
}


@pytest.mark.env(CORS_ORIGINS=ORIGIN)
@pytest.mark.parametrize("name", CORS_REQUESTS)
async def test_cors_answers_are_aiohttps(server, plain, name):
    data = CORS_REQUESTS[name]
    assert await answer_heads(server, data) == await answer_heads(plain, data)


@pytest.mark.parametrize("name", CORS_REQUESTS)
async def test_same_origin_answers_are_aiohttps(server, plain, name):
    data = CORS_REQUESTS[name]
    assert await answer_heads(server, data) == await answer_heads(plain, data)


async def test_shutdown_waits_its_timeout_once_for_lane_and_aiohttp_connections_alike(
    aiohttp_server, app
):
    """A request under way in the lane and one under way in aiohttp (each a POST whose body
    never comes) are waited for side by side: the shutdown takes its timeout, not twice it."""
    within = 2.0
    served = await aiohttp_server(app, shutdown_timeout=within)
    lane_post, aiohttp_post = await Http.open(served), await Http.open(served)
    sid = await handshake(lane_post)
    await lane_post.send(raw_post(f"{PATH}&sid={sid}", b"4", b"Host: g", b"Content-Length: 100"))
    await aiohttp_post.send(
        raw_post(
            "/broadcast",
            b"{",
            b"Host: g",
            b"Content-Type: application/json",
            b"Content-Length: 100",
        )
    )
    await eventually(lambda: len(lane_of(served).live) == 1)  # (the other one is aiohttp's)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(served.close(), 4 * within)
    assert loop.time() - started < 1.5 * within
    assert await lane_post.ended()
    await asyncio.wait_for(aiohttp_post.reader.read(), 10.0)  # (aiohttp may answer first)


async def test_a_post_pipelined_behind_a_waiting_poll_gets_its_whole_body(server, gateway, token):
    """What a client writes ahead of a waiting poll past `AHEAD_LIMIT` pauses reading; a POST
    in it, once its turn comes, must have the rest of its body read."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    await http.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    payload = ("42" + json.dumps(["no_such_event", "x" * 100_000])).encode()
    ahead = raw_post(target, payload, b"Host: g", b"Content-Length: %d" % len(payload))
    await http.send(ahead[:70_000])
    (connection,) = lane_of(server).live
    await eventually(lambda: not connection._transport.is_reading())  # paused
    await http.send(ahead[70_000:])
    await eio.send(sid, "wake")  # the waiting poll is answered
    assert (await http.answer())[0] == 200
    assert (await http.answer())[:3:2] == (200, b"ok")
    http.close()


async def test_a_client_that_pipelines_polls_and_never_reads_is_not_written_to_without_end(
    server, gateway, token
):
    """A poll's answer is not written while the connection's write buffer is past its high
    mark (the client does not read): the packets wait in the outbox, bounded, which cuts the
    client off as a slow one once past its bounds. Writing the answers of its polls one after
    the other would hold everything sent to it in the server's memory."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    (connection,) = lane_of(server).live
    http.writer.write(get(target).encode() * 1000)  # (never read from here on)
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    for _ in range(2000):  # 20 MB, each packet sent once the last has been taken by a poll
        await eio.send(sid, "x" * 10_000)
        try:
            await asyncio.wait_for(eio.sockets[sid].queue.wait_for_room(0, 0), 2.0)
        except TimeoutError:
            break  # polls no longer take them
    assert connection._transport.get_write_buffer_size() < 1_000_000
    http.writer.transport.abort()


def test_a_head_trickled_a_byte_at_a_time_is_not_searched_from_its_start_for_each():
    """A slowloris's head: each piece costs what it brings, not what came before it (16 KB a
    byte at a time took 0.35 s of CPU; every such connection at once takes a core)."""
    head = get(PATH, "X-Pad: " + "a" * (HEAD_LIMIT - 200)).encode()[:-2]  # (never ends)
    lanes = {b"/socket.io/": object()}
    started = time.process_time()
    ahead = b""
    for i in range(len(head)):
        scanned, ahead = len(ahead), ahead + head[i : i + 1]
        assert read_request(ahead, lanes, scanned) is INCOMPLETE
    assert time.process_time() - started < 0.15


async def test_a_head_trickled_a_byte_at_a_time_is_still_the_lanes(server):
    http = await Http.open(server)
    for byte in raw_get(NOPE, b"Host: g", b"X-A: b"):
        await http.send(bytes([byte]))
    assert (await http.answer())[::2] == (400, b'"unknown session"')
    assert len(lane_of(server).live) == 1  # (not handed over)
    http.close()


def masked_text_frame(text: str) -> bytes:
    data, mask = text.encode(), b"\x01\x02\x03\x04"
    return (
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )


@pytest.mark.parametrize("runner", ["lane", "aiohttp"])
async def test_a_websocket_upgrade_and_its_probe_written_behind_a_lane_request(
    server, plain, runner
):
    """A POST, the session's WebSocket upgrade and its first frame, in one write: the POST is
    answered, then aiohttp takes the upgrade with the frame behind it."""
    served = server if runner == "lane" else plain
    http = await Http.open(served)
    sid = await handshake(http)
    upgrade = raw_get(
        f"/socket.io/?EIO=4&transport=websocket&sid={sid}",
        b"Host: g",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    )
    await http.send(NOPE_POST + upgrade + masked_text_frame("2probe"))
    assert (await http.answer())[::2] == (400, b'"unknown session"')
    assert (await http.answer(head_only=True))[0] == 101
    frame = await asyncio.wait_for(http.reader.readexactly(8), 10.0)
    assert frame == b"\x81\x063probe"
    http.close()


@pytest.mark.parametrize("runner", ["lane", "aiohttp"])
async def test_a_waiting_poll_is_answered_when_its_session_upgrades_or_another_poll_comes(
    server, plain, token, runner
):
    served = server if runner == "lane" else plain
    eio = served.app[GATEWAY].engine.sio.eio
    first, second = await Http.open(served), await Http.open(served)
    sid, target = await authenticated(first, token)
    await first.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    ws = await aiohttp.ClientSession().__aenter__()
    try:
        upgrade = await ws.ws_connect(
            f"http://{served.host}:{served.port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        )
        await upgrade.send_str("2probe")
        assert (await upgrade.receive_str()) == "3probe"
        assert (await first.answer())[::2] == (200, b"6")  # the waiting poll: a NOOP
        await upgrade.send_str("5")
        await first.send(get(target))  # upgraded: no more polls
        assert (await first.answer())[0] == 400
        await upgrade.close()
    finally:
        await ws.close()
    sid, target = await authenticated(second, token)
    await first.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    await second.send(get(target))  # overlapping: refused, the session closed
    assert (await second.answer())[::2] == (400, b'"overlapping poll"')
    status, _, body = await first.answer()
    assert status == 200 and body.endswith(b"1"), body
    first.close(), second.close()


async def test_a_server_shutting_down_ends_lane_connections_in_every_state(
    aiohttp_server, app, token
):
    within = 2.0
    served = await aiohttp_server(app, shutdown_timeout=within)
    eio = app[GATEWAY].engine.sio.eio
    idle, mid_head, mid_body, polling, handed, not_reading = [
        await Http.open(served) for _ in range(6)
    ]
    await handshake(idle)
    await mid_head.send(raw_get(NOPE, b"Host: g")[:20])
    sid = await handshake(mid_body)
    await mid_body.send(raw_post(f"{PATH}&sid={sid}", b"4", b"Host: g", b"Content-Length: 9"))
    sid, target = await authenticated(polling, token)
    await polling.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    await handed.send(raw_get("/health", b"Host: g"))
    await handed.answer()
    await not_reading.send(NOPE_POST * 20_000)  # (its answers never read)
    await eventually(lambda: len(lane_of(served).live) == 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(served.close(), 4 * within)
    assert loop.time() - started < 1.5 * within
    for http in (idle, mid_head, mid_body, handed):
        assert await http.ended()
    assert (await polling.answer())[0] in (200, 400)
    assert await polling.ended()
    not_reading.close()


async def test_a_connection_whose_client_never_reads_is_cut_once_idle(server, monkeypatch):
    """Answers it never reads: closing it waits for them to be written, for ever; once idle
    for `IDLE_S` it is cut instead."""
    monkeypatch.setattr(lane, "IDLE_S", 0.5)
    http = await Http.open(server)
    http.writer.write(NOPE_POST * 50_000)  # (its answers never read)
    await eventually(lambda: len(lane_of(server).live) == 1)
    await eventually(lambda: not lane_of(server).live)  # (not kept: cut)
    http.writer.transport.abort()


def test_a_header_value_full_of_blanks_is_read_in_linear_time():
    """Blanks inside a value, each tried as the start of its trailing ones: 8000 of them
    took 0.12 s of CPU to read (two such lines a request, a core for a few a second)."""
    lanes = {b"/socket.io/": object()}
    for value in (b"x" + b" " * 8000 + b"y", b"x" + b" \t" * 4000 + b"y"):
        head = raw_get(NOPE, b"Host: g", b"X-A: " + value, b"X-B: " + value)
        started = time.process_time()
        _, request, ends = read_request(head, lanes)
        assert time.process_time() - started < 0.03
        assert request.headers["X-A"] == value.decode() and ends == len(head)


@pytest.mark.env(CLIENT_BACKLOG_MAX="40000", CLIENT_BACKLOG_MAX_BYTES="50000000")
async def test_pipelined_polls_each_answered_at_once_are_all_answered(server, gateway, token):
    """Polls written at once, each finding packets waiting: answered one after the other,
    however many (not each from within the last one's answer: a stack as deep as they are)."""
    eio = gateway.engine.sio.eio
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    for _ in range(32_000):
        await eio.send(sid, "x")
    polls = 32_000 // 16
    await http.send(get(target) * polls)
    for _ in range(polls):
        status, _, body = await http.answer()
        assert status == 200 and body.count(b"\x1e") == 15, body
    http.close()
