"""The gateway's own engine (`realtime/engine/`) attacked as a hostile client would: what
python-engineio used to guarantee and is now the gateway's to keep. One upgrade per session;
a long-polling body read to its length, however it is split; one socket's events one at a
time whatever the transport (several POSTs of one session at once included); a POST to a
session that closes while its body arrives answered 400. Each failed before its fix."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import zlib

import pytest

from tests.raw import RawPolling, websocket_upgrade
from tests.test_fuzz_payloads import UNLIMITED
from tests.test_transport import eventually

WAIT_S = 10.0
# the network's pace between two pieces of one body: how a slow link delivers it, not a wait
# for the server (which answers nothing before the whole body is in)
PIECE_PAUSE_S = 0.05


async def authenticated_polling(base_url: str, token, sub: str = "raw") -> RawPolling:
    raw = await RawPolling(base_url).open()
    assert await raw.post("40" + json.dumps({"token": token(sub)})) == 200
    await raw.poll_until(lambda packet: '"auth_success"' in packet)
    return raw


def session_id(raw: RawPolling) -> str:
    return raw._url.rsplit("sid=", 1)[1]


async def raw_request(base_url: str, head: str, pieces: list[bytes]) -> tuple[int, bytes]:
    """An HTTP/1.1 request written by hand: `head` (request line and headers), then the body in
    `pieces`, each written and flushed on its own, a moment apart. Its status and body."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode())
        await writer.drain()
        for piece in pieces:
            await asyncio.sleep(PIECE_PAUSE_S)
            writer.write(piece)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answer = await asyncio.wait_for(reader.readexactly(length), WAIT_S)
        return int(head.split()[1]), answer
    finally:
        writer.close()


def post_head(base_url: str, sid: str, length: int) -> str:
    host = base_url.removeprefix("http://")
    return (
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    )


async def acks(raw: RawPolling, ids: set[int]) -> dict[int, dict]:
    """Poll until an ack has come for each of `ids`; each ack's first argument."""
    answers: dict[int, dict] = {}

    async def until() -> None:
        seen = 0
        while ids - answers.keys():
            for packet in raw.received[seen:]:
                if packet.startswith("43"):
                    ack_id, _, rest = packet[2:].partition("[")
                    answers[int(ack_id)] = json.loads("[" + rest)[0]
            seen = len(raw.received)
            if ids - answers.keys():
                assert await raw.poll() == 200, f"closed; got {raw.received[-5:]}"

    await asyncio.wait_for(until(), 30)
    return answers


def join(ack_id: int, room: str = "availability-split", **extra) -> str:
    return f"42{ack_id}" + json.dumps(["join_room", {"roomId": room, **extra}])


# -- a body read to its length ----------------------------------------------------------------
def split(body: bytes, where: str) -> list[bytes]:
    if where == "mid-packet":
        at = [len(body) // 2]
    elif where == "at a separator":
        at = [body.index(b"\x1e", len(body) // 2) + 1]
    elif where == "inside a character":
        at = [body.index("é".encode()) + 1]
    else:  # "byte by byte, the first ones"
        at = list(range(1, 12))
    bounds = [0, *at, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


@UNLIMITED
@pytest.mark.parametrize(
    "where", ["mid-packet", "at a separator", "inside a character", "byte by byte"]
)
async def test_a_post_whose_body_arrives_in_pieces_is_read_whole(base_url, token, where):
    raw = await authenticated_polling(base_url, token)
    try:
        packets = [join(n) for n in range(1, 21)]
        # an unknown event (answered with an error) with a character of two bytes
        packets.insert(10, "4221" + json.dumps(["nope", "café"], ensure_ascii=False))
        body = "\x1e".join(packets).encode()
        status, _ = await raw_request(
            base_url, post_head(base_url, session_id(raw), len(body)), split(body, where)
        )
        assert status == 200
        answers = await acks(raw, set(range(1, 22)))
        assert all(answers[n]["ok"] is True for n in range(1, 21))
        assert answers[21]["error"]["code"] == "invalid_payload"
    finally:
        await raw.close()


@UNLIMITED
@pytest.mark.parametrize("packets", [200, 1000])
async def test_a_large_post_written_at_once_is_read_whole(base_url, token, packets):
    """About 1 KB a packet: 200 KB and 1 MB arrive in many TCP segments."""
    raw = await authenticated_polling(base_url, token)
    try:
        body = "\x1e".join(join(n, pad="x" * 900) for n in range(1, packets + 1)).encode()
        assert len(body) < 1_000_000  # MAX_PAYLOAD_BYTES
        status, _ = await raw_request(
            base_url, post_head(base_url, session_id(raw), len(body)), [body]
        )
        assert status == 200
        answers = await acks(raw, set(range(1, packets + 1)))
        assert all(answer["ok"] is True for answer in answers.values())
    finally:
        await raw.close()


@UNLIMITED
@pytest.mark.parametrize("kind", ["js-polling", "py-polling"])
async def test_a_burst_of_large_emits_over_long_polling_is_answered_in_full(connect, kind):
    client = await connect(kind)
    pad = "x" * 1000
    answers = await asyncio.gather(
        *(
            client.call("join_room", {"roomId": f"availability-{n % 50}", "pad": pad})
            for n in range(300)
        )
    )
    assert [answer["roomId"] for answer in answers] == [
        f"availability-{n % 50}" for n in range(300)
    ]
    assert all(answer["ok"] is True for answer in answers)


async def test_a_chunked_post_is_read_to_its_end(base_url, token):
    raw = await authenticated_polling(base_url, token)
    try:
        body = "\x1e".join(join(n) for n in range(1, 11)).encode()
        host = base_url.removeprefix("http://")
        head = (
            f"POST /socket.io/?EIO=4&transport=polling&sid={session_id(raw)} HTTP/1.1\r\n"
            f"Host: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        chunks = [body[:40], body[40:]]
        pieces = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
        status, _ = await raw_request(base_url, head, pieces)
        assert status == 200
        assert len(await acks(raw, set(range(1, 11)))) == 10
    finally:
        await raw.close()


async def test_a_body_that_never_arrives_in_full_closes_its_session(
    base_url, token, gateway, monkeypatch, no_errors_logged
):
    """A client that announces more than it sends holds its POST until a ping interval and
    timeout have passed: then the POST is answered 400 and the session is closed (its events
    were never half read)."""
    monkeypatch.setattr(gateway.engine.sio.eio, "ping_interval", 0.5)
    monkeypatch.setattr(gateway.engine.sio.eio, "ping_timeout", 0.5)
    raw = await authenticated_polling(base_url, token)
    try:
        body = join(1).encode()
        status, _ = await raw_request(
            base_url, post_head(base_url, session_id(raw), len(body) + 100), [body]
        )
        assert status == 400
        assert await raw.poll_until_closed() == 400
        assert not [p for p in raw.received if p.startswith("431")]  # nothing of it handled
    finally:
        await raw.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_post_is_read_inflated(base_url, token, encoding):
    raw = await authenticated_polling(base_url, token)
    try:
        body = "\x1e".join(join(n) for n in range(1, 6)).encode()
        compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        head = post_head(base_url, session_id(raw), len(compressed)).replace(
            "\r\n\r\n", f"\r\nContent-Encoding: {encoding}\r\n\r\n"
        )
        status, _ = await raw_request(base_url, head, [compressed])
        assert status == 200
        assert len(await acks(raw, set(range(1, 6)))) == 5
    finally:
        await raw.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_encoding_says_is_400(
    base_url, token, encoding, no_errors_logged
):
    raw = await authenticated_polling(base_url, token)
    try:
        body = join(1).encode()  # not compressed at all
        head = post_head(base_url, session_id(raw), len(body)).replace(
            "\r\n\r\n", f"\r\nContent-Encoding: {encoding}\r\n\r\n"
        )
        status, _ = await raw_request(base_url, head, [body])
        assert status == 400
        assert await raw.poll_until_closed() == 400
    finally:
        await raw.close()


# -- a POST to a session that closes while its body arrives -----------------------------------
@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_a_post_whose_session_closes_while_its_body_arrives_is_400(
    base_url, no_errors_logged
):
    raw = await RawPolling(base_url).open()  # never authenticates: closed at its deadline
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = b"40"
        writer.write(post_head(base_url, session_id(raw), len(body)).encode() + body[:1])
        await writer.drain()
        assert await raw.poll_until_closed() == 400  # the auth deadline closed the session
        writer.write(body[1:])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), WAIT_S)
        assert int(status.split()[1]) == 400
    finally:
        writer.close()
        await raw.close()


# -- one POST at a time -------------------------------------------------------------------------
@pytest.mark.env(MAX_ROOMS_PER_SOCKET="5")
@UNLIMITED
async def test_concurrent_posts_of_one_session_never_run_its_events_at_once(
    base_url, token, gateway
):
    raw = await authenticated_polling(base_url, token)
    try:
        posts = [asyncio.create_task(raw.post(join(n, f"availability-c{n}"))) for n in range(1, 31)]
        statuses = await asyncio.gather(*posts)
        assert 400 in statuses  # a second POST while one is handled: refused, session closed
        # however they interleaved, no more rooms were joined than a socket may be in
        joined = [
            event
            for event in gateway.sessions._sessions.values()
            for event in event.rooms
            if event.startswith("availability-c")
        ]
        assert len(joined) <= 4  # five rooms, its user room one of them
        await raw.poll_until_closed()
    finally:
        await raw.close()


async def test_a_second_post_while_one_is_read_closes_the_session(base_url, token, gateway):
    raw = await authenticated_polling(base_url, token)
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = join(1).encode()
        writer.write(post_head(base_url, session_id(raw), len(body)).encode() + body[:5])
        await writer.drain()
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.receiving is not None)  # the first is being read
        assert await raw.post(join(2)) == 400
        writer.write(body[5:])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), WAIT_S)
        assert int(status.split()[1]) == 400  # its session closed meanwhile: nothing handled
        assert await raw.poll_until_closed() == 400
        assert not [p for p in raw.received if p.startswith("43")]
    finally:
        writer.close()
        await raw.close()


# -- one upgrade per session --------------------------------------------------------------------
async def upgrade_request(
    base_url: str, sid: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw WebSocket upgrade of a long-polling session: its reader, writer and status."""
    return await websocket_upgrade(base_url, f"&sid={sid}")


def masked(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def read_frame(reader: asyncio.StreamReader) -> str:
    _, size = await asyncio.wait_for(reader.readexactly(2), WAIT_S)
    return (await reader.readexactly(size & 0x7F)).decode()


@pytest.mark.parametrize("at_once", [2, 8])
async def test_concurrent_upgrades_of_one_session_give_one_websocket(
    base_url, token, gateway, at_once
):
    raw = await authenticated_polling(base_url, token)
    sid = session_id(raw)
    upgrades = await asyncio.gather(*(upgrade_request(base_url, sid) for _ in range(at_once)))
    try:
        assert sorted(status for *_, status in upgrades) == [101] + [400] * (at_once - 1)
        [(reader, writer, _)] = [u for u in upgrades if u[2] == 101]
        writer.write(masked("2probe"))
        assert await read_frame(reader) == "3probe"
        writer.write(masked("5"))
        await writer.drain()
        # the upgraded session still takes no other WebSocket
        *_, status = await upgrade_request(base_url, sid)
        assert status == 400
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.upgraded)
        # and when it closes, nothing of it stays open
        await gateway.engine.close_connection(sid)
        assert await asyncio.wait_for(reader.read(), WAIT_S) is not None
        await eventually(lambda: not gateway.engine.sio.eio.sockets)
        assert gateway.sessions.counts()["transports"] == 0
    finally:
        for _, writer, _ in upgrades:
            writer.close()
        await raw.close()


async def test_an_upgrade_while_another_waits_for_its_probe_is_refused(base_url, token, gateway):
    raw = await authenticated_polling(base_url, token)
    sid = session_id(raw)
    reader, writer, status = await upgrade_request(base_url, sid)
    try:
        assert status == 101  # its probe not sent yet
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.upgrading)
        *_, second = await upgrade_request(base_url, sid)
        assert second == 400
        writer.write(masked("2probe"))
        assert await read_frame(reader) == "3probe"  # the first goes on
    finally:
        writer.close()
        await raw.close()


async def test_a_post_under_way_when_its_session_upgrades_is_handled_first(
    base_url, token, gateway
):
    """The WebSocket that upgrades a session reads nothing before the POST under way is
    handled: the socket's events stay one at a time, in the order they were sent."""
    raw = await authenticated_polling(base_url, token)
    sid = session_id(raw)
    reader, writer, status = await upgrade_request(base_url, sid)
    host, port = base_url.removeprefix("http://").split(":")
    post_reader, post_writer = await asyncio.open_connection(host, int(port))
    try:
        assert status == 101
        writer.write(masked("2probe"))
        assert await read_frame(reader) == "3probe"
        body = join(2, "availability-first").encode()
        post_writer.write(post_head(base_url, sid, len(body)).encode() + body[:5])
        await post_writer.drain()
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.receiving is not None)
        writer.write(masked("5"))  # the upgrade completes while the POST is read
        writer.write(masked(join(1, "availability-second")))
        await writer.drain()
        await eventually(lambda: socket_.upgraded)
        post_writer.write(body[5:])
        await post_writer.drain()
        status_line = await asyncio.wait_for(post_reader.readline(), WAIT_S)
        assert int(status_line.split()[1]) == 200
        frames = []
        while len([f for f in frames if f.startswith("43")]) < 2:
            frame = await read_frame(reader)
            if frame != "6":  # the NOOP that ended the poll under way
                frames.append(frame)
        acked = [f[:3] for f in frames if f.startswith("43")]
        assert acked == ["432", "431"]  # the POST's event first, then the WebSocket's
    finally:
        writer.close()
        post_writer.close()
        await raw.close()


async def test_a_stale_session_id_is_400_and_no_operator_s_error(
    base_url, http, token, no_errors_logged
):
    """A client that comes back with the session id of a connection that is gone (after a
    restart, say), or polls one it upgraded: 400, as python-engineio answers, without the
    ERROR line the library logs the first time."""
    for method, transport in [("GET", "polling"), ("POST", "polling"), ("GET", "websocket")]:
        url = f"/socket.io/?EIO=4&transport={transport}&sid=gone-{method}-{transport}"
        async with http.request(method, url, data="40") as answer:
            assert answer.status == 400, (method, transport)
    raw = await authenticated_polling(base_url, token)
    sid = session_id(raw)
    reader, writer, _ = await upgrade_request(base_url, sid)
    try:
        writer.write(masked("2probe"))
        assert await read_frame(reader) == "3probe"
        writer.write(masked("5"))
        await writer.drain()
        assert await raw.poll() in (200, 400)  # the poll the upgrade ends (or a late one)
        assert await raw.poll() == 400  # upgraded: no more polls
        assert await raw.post(join(1)) == 400
    finally:
        writer.close()
        await raw.close()
