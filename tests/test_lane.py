"""Long-polling's lane (`realtime/engine/lane.py`): requests read and answered in front of
aiohttp, and everything it does not read plainly handed to aiohttp with nothing lost or
answered differently. Raw HTTP/1.1 over one TCP connection, to see what the wire carries."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestServer

from realtime.engine import lane
from realtime.engine.runner import LaneServer
from realtime.gateway import GATEWAY
from server.app import create_app
from tests.test_transport import eventually

WAIT_S = 10.0
PATH = "/socket.io/?EIO=4&transport=polling"


class Http:
    """One keep-alive HTTP/1.1 connection, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server) -> Http:
        return cls(*await asyncio.open_connection(server.host, server.port))

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def answer(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names) and body (none for a HEAD)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only:
            body = b""
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(await self.reader.readuntil(b"\r\n"), 16):
                body += await self.reader.readexactly(size + 2)
                body = body[:-2]
            await self.reader.readexactly(2)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        return int(status_line.split()[1]), headers, body

    async def ended(self) -> bool:
        """Whether the server closes the connection (within WAIT_S)."""
        return await asyncio.wait_for(self.reader.read(), WAIT_S) == b""

    def close(self) -> None:
        self.writer.close()


def get(target: str, *headers: str) -> str:
    return (
        f"GET {target} HTTP/1.1\r\nHost: gateway\r\n"
        + "".join(h + "\r\n" for h in headers)
        + "\r\n"
    )


def post(target: str, body: str, *headers: str) -> str:
    data = body.encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain;charset=UTF-8\r\n"
        f"Content-Length: {len(data)}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n" + body
    )


async def handshake(http: Http) -> str:
    await http.send(get(PATH))
    status, _, body = await http.answer()
    assert status == 200 and body.startswith(b"0{"), body
    return json.loads(body[1:])["sid"]


async def poll_until(http: Http, target: str, wanted: str) -> list[str]:
    """Poll on `http` until a packet holding `wanted` arrives; every packet received."""
    packets: list[str] = []
    while not any(wanted in packet for packet in packets):
        await http.send(get(target))
        status, _, body = await http.answer()
        assert status == 200, body
        packets += body.decode().split("\x1e")
    return packets


async def authenticated(http: Http, token) -> tuple[str, str]:
    """A session opened and authenticated on `http`: its id and poll target."""
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    await http.send(post(target, "40" + json.dumps({"token": token("u1")})))
    assert (await http.answer())[2] == b"ok"
    await poll_until(http, target, '"auth_success"')
    return sid, target


def lane_of(server) -> LaneServer:
    return server.runner.server


async def test_a_keep_alive_connection_serves_its_session_in_the_lane(server, token):
    http = await Http.open(server)
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    await http.send(post(target, "40" + json.dumps({"token": token("u1")})))
    status, headers, body = await http.answer()
    assert (status, body) == (200, b"ok")
    packets = await poll_until(http, target, '"auth_success"')
    assert packets[0].startswith("40{")
    assert len(lane_of(server).live) == 1  # every request so far: the lane's
    await http.send(post(target, "421" + json.dumps(["no_such_event"])))
    assert (await http.answer())[2] == b"ok"
    await http.send(get(target + "&t=x"))  # its refusal waits: answered at once
    status, headers, body = await http.answer()
    assert status == 200 and b"unknown event" in body, body
    assert "date" in headers and "server" in headers
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert len(lane_of(server).live) == 1
    http.close()


async def test_another_route_hands_the_connection_to_aiohttp_and_polls_go_on(server, token):
    http = await Http.open(server)
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    await http.send(get("/health"))
    status, headers, body = await http.answer()
    assert status == 200 and headers["content-type"].startswith("application/json"), body
    assert not lane_of(server).live  # aiohttp's now
    await http.send(post(target, "40" + json.dumps({"token": token("u1")})))
    assert (await http.answer())[0] == 200
    await poll_until(http, target, '"auth_success"')  # served by aiohttp, the same
    http.close()


async def test_requests_written_at_once_are_answered_in_order(server, token):
    http = await Http.open(server)
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    await http.send(post(target, "40" + json.dumps({"token": token("u1")})) + get(target))
    assert (await http.answer())[2] == b"ok"
    status, _, body = await http.answer()
    assert status == 200 and body.startswith(b"40{"), body
    http.close()


async def test_a_request_arriving_a_byte_at_a_time_is_served(server, token):
    http = await Http.open(server)
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    for byte in post(target, "40" + json.dumps({"token": token("u1")})).encode():
        await http.send(bytes([byte]))
    assert (await http.answer())[2] == b"ok"
    await poll_until(http, target, '"auth_success"')
    http.close()


async def test_a_chunked_post_is_read_by_aiohttp_and_its_packets_handled(server, token):
    http = await Http.open(server)
    sid = await handshake(http)
    target = f"{PATH}&sid={sid}"
    body = ("40" + json.dumps({"token": token("u1")})).encode()
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    await http.send(
        f"POST {target} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
        + b"0\r\n\r\n"
    )
    assert (await http.answer())[2] == b"ok"
    await poll_until(http, target, '"auth_success"')
    http.close()


async def test_connection_close_is_answered_and_the_connection_closed(server):
    http = await Http.open(server)
    await http.send(get(PATH, "Connection: close"))
    status, headers, body = await http.answer()
    assert status == 200 and body.startswith(b"0{")
    assert headers["connection"] == "close"
    assert await http.ended()


async def test_a_poll_cut_short_by_its_client_closes_its_session(server, gateway, token):
    http = await Http.open(server)
    sid, target = await authenticated(http, token)
    sockets = gateway.engine.sio.eio.sockets
    await http.send(get(target))  # waits: nothing more comes
    await eventually(lambda: sockets[sid].queue.waited_on())
    http.close()
    await eventually(lambda: sid not in sockets or sockets[sid].closed)  # (kept a moment)


async def test_a_connection_idle_too_long_is_closed(server, monkeypatch):
    monkeypatch.setattr(lane, "IDLE_S", 0.2)
    silent, half = await Http.open(server), await Http.open(server)
    await half.send("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: ")
    assert await silent.ended()
    assert await half.ended()


# Heads the lane does not read: each must be answered as aiohttp alone answers it.
ODD_REQUESTS = {
    "folded header": get(PATH, "X-A: 1", " folded"),
    "two lengths": f"POST {PATH}&sid=x HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\n"
    "Content-Length: 2\r\n\r\nab",
    "NUL in a value": get(PATH, "X-A: a\x00b"),
    "bare LF": f"GET {PATH} HTTP/1.1\nHost: g\n\n",
    "HTTP/1.0": f"GET {PATH}&sid=nope HTTP/1.0\r\nHost: g\r\n\r\n",
    "absolute form": f"GET http://g{PATH}&sid=nope HTTP/1.1\r\nHost: g\r\n\r\n",
    "a head of 20 KB": get(PATH + "&sid=nope", "X-Big: " + "a" * 20_000),
    "a GET with a body": f"GET {PATH}&sid=nope HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n\r\nab",
    "upgrade refused": get(PATH + "&sid=nope", "Upgrade: websocket", "Connection: Upgrade"),
    "unknown session": get(PATH + "&sid=nope"),
    "no transport": get("/socket.io/?EIO=4"),
    "Engine.IO 3": get("/socket.io/?EIO=3&transport=polling&sid=nope"),
    "JSONP": get("/socket.io/?EIO=4&transport=polling&j=0&sid=nope"),
    "a POST too large": f"POST {PATH}&sid=nope HTTP/1.1\r\nHost: g\r\n"
    f"Content-Length: {10**9}\r\n\r\n",
    "HEAD": f"HEAD {PATH} HTTP/1.1\r\nHost: g\r\n\r\n",
    "percent-encoded path": get("/socket%2Eio/?EIO=4&transport=polling&sid=nope"),
}


@pytest.mark.parametrize("name", ODD_REQUESTS)
async def test_odd_requests_are_answered_as_aiohttp_answers_them(server, settings, name):
    plain = TestServer(create_app(settings))  # aiohttp's own runner: no lane
    await plain.start_server()
    try:
        answers = []
        for served in (server, plain):
            http = await Http.open(served)
            await http.send(ODD_REQUESTS[name])
            try:
                answers.append((await http.answer(head_only=name == "HEAD"))[::2])
            except (asyncio.IncompleteReadError, ConnectionError):
                answers.append("closed")
            http.close()
    finally:
        await plain.close()
    assert answers[0] == answers[1]


async def test_a_server_shutting_down_answers_a_waiting_poll_then_closes(
    aiohttp_server, app, token
):
    served = await aiohttp_server(app)
    http = await Http.open(served)
    sid, target = await authenticated(http, token)
    await http.send(get(target))
    sockets = app[GATEWAY].engine.sio.eio.sockets
    await eventually(lambda: sockets[sid].queue.waited_on())
    closing = asyncio.ensure_future(served.close())
    status, _, body = await http.answer()
    assert status in (200, 400), body
    assert await http.ended()
    await asyncio.wait_for(closing, WAIT_S)
