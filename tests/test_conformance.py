"""The Engine.IO and Socket.IO protocols, case by case, as the Socket.IO project's own test
suites check a server (`test-suite/` in socketio/engine.io-protocol and
socketio/socket.io-protocol): the 24 Engine.IO cases and the 32 Socket.IO cases, written here
again in our words, against the conformance app (`python -m server.conformance PORT`, a real
process: the gateway's own engine and dispatch with the suites' reference configuration).
The Socket.IO cases the suite checks over WebSocket only are also checked over long-polling.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from server.conformance import SERVERS, create_conformance_app
from tests.clients import ROOT
from tests.test_transport import eventually

PING_INTERVAL_MS = 300
PING_TIMEOUT_MS = 200
WAIT_S = 5.0


@pytest.fixture
def conformance() -> web.Application:
    return create_conformance_app()


@pytest.fixture
async def conformance_app(aiohttp_server, conformance) -> str:
    """The conformance app, served on a free port: its base URL."""
    server = await aiohttp_server(conformance)
    return str(server.make_url("")).rstrip("/")


def engine_socket(app: web.Application, path: str):
    """The one Engine.IO socket the app at `path` holds."""
    [socket_] = app[SERVERS][path].eio.sockets.values()
    return socket_


def test_the_conformance_app_runs_as_its_own_process(free_port):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.conformance", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line == f"conformance app listening on http://127.0.0.1:{port}\n", line
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/engine.io/?EIO=4&transport=polling"
        ) as answer:
            handshake_of(answer.read().decode(), ["websocket"])
    finally:
        process.terminate()
        assert process.wait(10) == 0


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session


def url(base: str, app: str, transport: str | None = "polling", **query: str) -> str:
    parts = ["EIO=4"] + ([f"transport={transport}"] if transport else [])
    parts += [f"{key}={value}" for key, value in query.items()]
    return f"{base}/{app}/?" + "&".join(parts)


def ws_url(base: str, app: str, **query: str) -> str:
    return url(base, app, "websocket", **query)


async def polling_session(http, base: str, app: str) -> str:
    async with http.get(url(base, app)) as answer:
        return json.loads((await answer.text())[1:])["sid"]


async def next_message(ws, answer_pings: bool = True) -> str | bytes:
    """The next frame's data (pings answered and skipped, unless `answer_pings` is False)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), WAIT_S)
        if message.type == aiohttp.WSMsgType.TEXT:
            if message.data == "2" and answer_pings:
                await ws.send_str("3")
                continue
            return message.data
        if message.type == aiohttp.WSMsgType.BINARY:
            return message.data
        raise ConnectionError(f"closed: {message.type}")


async def closed(ws) -> None:
    """Wait (bounded) for the server to close the WebSocket."""
    while True:
        message = await asyncio.wait_for(ws.receive(), WAIT_S)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return
        if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
            continue  # (a ping is no answer: it is not answered)


def handshake_of(text: str, upgrades: list[str]) -> None:
    assert text.startswith("0"), text
    value = json.loads(text[1:])
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert isinstance(value["sid"], str)
    assert value["upgrades"] == upgrades
    assert (value["pingInterval"], value["pingTimeout"]) == (PING_INTERVAL_MS, PING_TIMEOUT_MS)
    assert value["maxPayload"] == 1_000_000


BOTH_APPS = pytest.mark.parametrize("app", ["engine.io", "socket.io"])


# -- Engine.IO: handshake ---------------------------------------------------------------------
@BOTH_APPS
async def test_a_polling_handshake_opens_a_session(conformance_app, http, app):
    async with http.get(url(conformance_app, app)) as answer:
        assert answer.status == 200
        handshake_of(await answer.text(), ["websocket"])


@BOTH_APPS
@pytest.mark.parametrize("eio", [None, "abc", "3", "5"])
async def test_a_polling_handshake_without_protocol_version_4_is_400(
    conformance_app, http, app, eio
):
    query = f"EIO={eio}&" if eio else ""
    async with http.get(f"{conformance_app}/{app}/?{query}transport=polling") as answer:
        assert answer.status == 400


@BOTH_APPS
@pytest.mark.parametrize("transport", [None, "abc"])
async def test_a_polling_handshake_without_a_known_transport_is_400(
    conformance_app, http, app, transport
):
    async with http.get(url(conformance_app, app, transport)) as answer:
        assert answer.status == 400


@BOTH_APPS
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_a_handshake_by_another_method_than_get_is_400(conformance_app, http, app, method):
    async with http.request(method, url(conformance_app, app)) as answer:
        assert answer.status == 400


@BOTH_APPS
async def test_a_websocket_handshake_opens_a_session(conformance_app, http, app):
    async with http.ws_connect(ws_url(conformance_app, app)) as ws:
        handshake_of(await next_message(ws), [])


@BOTH_APPS
@pytest.mark.parametrize("query", ["transport=websocket", "EIO=abc&transport=websocket"])
async def test_a_websocket_handshake_without_protocol_version_4_is_refused(
    conformance_app, http, app, query
):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{conformance_app}/{app}/?{query}")
    assert refused.value.status == 400


@BOTH_APPS
@pytest.mark.parametrize("query", ["EIO=4", "EIO=4&transport=abc"])
async def test_a_websocket_handshake_without_a_known_transport_is_refused(
    conformance_app, http, app, query
):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{conformance_app}/{app}/?{query}")
    assert refused.value.status == 400


# -- Engine.IO: messages --------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    ["4hello", "4test1\x1e4test2\x1e4test3", "4hello\x1ebAQIDBA=="],
    ids=["one text packet", "several text packets", "text and binary packets"],
)
async def test_a_polling_payload_is_echoed(conformance_app, http, payload):
    sid = await polling_session(http, conformance_app, "engine.io")
    session = url(conformance_app, "engine.io", sid=sid)
    async with http.post(session, data=payload) as pushed:
        assert (pushed.status, await pushed.text()) == (200, "ok")
    async with http.get(session) as polled:
        assert (polled.status, await polled.text()) == (200, payload)


async def test_an_invalid_polling_packet_closes_the_session(conformance_app, http):
    sid = await polling_session(http, conformance_app, "engine.io")
    session = url(conformance_app, "engine.io", sid=sid)
    async with http.post(session, data="abc") as pushed:
        assert pushed.status == 400
    async with http.get(session) as polled:
        assert polled.status == 400


async def test_a_duplicate_poll_closes_the_session(conformance_app, http):
    sid = await polling_session(http, conformance_app, "engine.io")
    session = url(conformance_app, "engine.io", sid=sid)
    first = asyncio.create_task(http.get(session))
    # the suite's 5 ms: the second poll comes while the first waits (for the ping, 300 ms)
    await asyncio.sleep(0.005)
    async with http.get(session + "&t=burst") as second:
        assert second.status in (400, 500)
    answer = await first
    assert (answer.status, await answer.text()) == (200, "1")
    async with http.get(session) as polled:
        assert polled.status == 400


async def test_a_websocket_text_packet_is_echoed(conformance_app, http):
    async with http.ws_connect(ws_url(conformance_app, "engine.io")) as ws:
        await next_message(ws)  # the handshake
        await ws.send_str("4hello")
        assert await next_message(ws) == "4hello"


async def test_a_websocket_binary_packet_is_echoed(conformance_app, http):
    async with http.ws_connect(ws_url(conformance_app, "engine.io")) as ws:
        await next_message(ws)
        await ws.send_bytes(bytes([1, 2, 3, 4]))
        assert await next_message(ws) == bytes([1, 2, 3, 4])


async def test_an_invalid_websocket_packet_closes_the_session(conformance_app, http):
    async with http.ws_connect(ws_url(conformance_app, "engine.io")) as ws:
        await next_message(ws)
        await ws.send_str("abc")
        await closed(ws)


# -- Engine.IO: heartbeat ---------------------------------------------------------------------
@BOTH_APPS
async def test_polling_pings_come_every_interval_and_pongs_keep_the_session(
    conformance_app, http, app
):
    sid = await polling_session(http, conformance_app, app)
    session = url(conformance_app, app, sid=sid)
    for _ in range(3):
        async with http.get(session) as polled:
            assert (polled.status, await polled.text()) == (200, "2")
        async with http.post(session, data="3") as ponged:
            assert ponged.status == 200


@BOTH_APPS
async def test_a_polling_session_that_misses_a_pong_is_closed(conformance_app, http, app):
    sid = await polling_session(http, conformance_app, app)
    # what is tested is a deadline: a ping after the interval, unanswered past the timeout
    await asyncio.sleep((PING_INTERVAL_MS + PING_TIMEOUT_MS) / 1000)
    async with http.get(url(conformance_app, app, sid=sid)) as polled:
        assert polled.status == 400


@BOTH_APPS
async def test_a_ping_held_back_by_a_stall_is_timed_from_when_it_was_sent(
    conformance_app, http, app
):
    """A server stalled past a ping's due time does not charge the stall to its client: one
    that answers the ping as soon as it gets it stays connected."""
    sid = await polling_session(http, conformance_app, app)
    session = url(conformance_app, app, sid=sid)
    # the fault: this process's loop (the server's) blocked across the ping's due time, for
    # longer than the client has to answer
    stall_s = PING_TIMEOUT_MS / 1000 + 0.07
    asyncio.get_running_loop().call_later(PING_INTERVAL_MS / 1000 - 0.05, time.sleep, stall_s)
    # the scenario's timing, not a wait for something: the client polls shortly before the
    # ping is due (a poll begun at the open would reach its own deadline during the stall)
    await asyncio.sleep(PING_INTERVAL_MS / 1000 - 0.1)
    async with http.get(session) as polled:  # answered by the ping, once it is sent
        assert (polled.status, await polled.text()) == (200, "2")
    async with http.post(session, data="3") as ponged:
        assert ponged.status == 200
    async with http.get(session) as polled:  # and the session goes on: the next ping
        assert (polled.status, await polled.text()) == (200, "2")


@BOTH_APPS
async def test_websocket_pings_come_every_interval(conformance_app, http, app):
    async with http.ws_connect(ws_url(conformance_app, app)) as ws:
        await next_message(ws)
        for _ in range(3):
            assert await next_message(ws, answer_pings=False) == "2"
            await ws.send_str("3")


@BOTH_APPS
async def test_a_websocket_that_misses_a_pong_is_closed(conformance_app, http, app):
    async with http.ws_connect(ws_url(conformance_app, app)) as ws:
        await closed(ws)


# -- Engine.IO: close -------------------------------------------------------------------------
@BOTH_APPS
async def test_a_polling_client_closes_its_session(conformance_app, conformance, http, app):
    sid = await polling_session(http, conformance_app, app)
    session = url(conformance_app, app, sid=sid)
    polling = asyncio.create_task(http.get(session))
    await eventually(lambda: engine_socket(conformance, app).queue.waited_on())
    async with http.post(session, data="1") as pushed:
        assert pushed.status == 200
    answer = await polling
    assert (answer.status, await answer.text()) == (200, "6")  # its poll ends with a NOOP
    async with http.get(session) as polled:
        assert polled.status == 400


@BOTH_APPS
async def test_a_websocket_client_closes_its_session(conformance_app, http, app):
    async with http.ws_connect(ws_url(conformance_app, app)) as ws:
        await next_message(ws)
        await ws.send_str("1")
        await closed(ws)


# -- Engine.IO: upgrade -----------------------------------------------------------------------
@BOTH_APPS
async def test_a_polling_session_upgrades_to_websocket(conformance_app, http, app):
    sid = await polling_session(http, conformance_app, app)
    async with http.ws_connect(ws_url(conformance_app, app, sid=sid)) as ws:
        await ws.send_str("2probe")
        assert await next_message(ws) == "3probe"
        async with http.get(url(conformance_app, app, sid=sid)) as polled:
            assert (polled.status, await polled.text()) == (200, "6")  # a NOOP ends it
        await ws.send_str("5")
        if app == "engine.io":
            await ws.send_str("4hello")
            assert await next_message(ws) == "4hello"


async def upgraded(
    http, base: str, conformance: web.Application, app: str
) -> tuple[str, aiohttp.ClientWebSocketResponse]:
    sid = await polling_session(http, base, app)
    ws = await http.ws_connect(ws_url(base, app, sid=sid))
    await ws.send_str("2probe")
    assert await next_message(ws) == "3probe"
    await ws.send_str("5")
    await eventually(lambda: engine_socket(conformance, app).upgraded)
    return sid, ws


@BOTH_APPS
async def test_an_upgraded_session_takes_no_more_polls(conformance_app, conformance, http, app):
    sid, ws = await upgraded(http, conformance_app, conformance, app)
    try:
        async with http.get(url(conformance_app, app, sid=sid)) as polled:
            assert polled.status == 400
        async with http.post(url(conformance_app, app, sid=sid), data="4x") as pushed:
            assert pushed.status == 400
        if app == "engine.io":
            await ws.send_str("4hello")
            assert await next_message(ws) == "4hello"
    finally:
        await ws.close()


@BOTH_APPS
async def test_an_upgraded_session_takes_no_second_websocket(
    conformance_app, conformance, http, app
):
    sid, ws = await upgraded(http, conformance_app, conformance, app)
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(conformance_app, app, sid=sid))
        assert refused.value.status == 400
        if app == "engine.io":
            await ws.send_str("4hello")
            assert await next_message(ws) == "4hello"
    finally:
        await ws.close()


# -- Socket.IO, over both transports ----------------------------------------------------------
class Connection:
    """One Engine.IO connection to the Socket.IO app, over WebSocket or long-polling, read
    and written packet by packet (Engine.IO pings answered)."""

    def __init__(self, http, base: str, transport: str):
        self.http, self.base, self.transport = http, base, transport
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session = ""
        self.waiting: list[str | bytes] = []

    async def open(self) -> Connection:
        if self.transport == "websocket":
            self.ws = await self.http.ws_connect(ws_url(self.base, "socket.io"))
            handshake_of(await next_message(self.ws), [])
        else:
            sid = await polling_session(self.http, self.base, "socket.io")
            self.session = url(self.base, "socket.io", sid=sid)
        return self

    async def send(self, *packets: str | bytes) -> None:
        if self.ws is not None:
            for packet in packets:
                if isinstance(packet, bytes):
                    await self.ws.send_bytes(packet)
                else:
                    await self.ws.send_str(packet)
            return
        body = "\x1e".join(
            "b" + base64.b64encode(p).decode() if isinstance(p, bytes) else p for p in packets
        )
        async with self.http.post(self.session, data=body) as pushed:
            assert pushed.status == 200, await pushed.text()

    async def receive(self) -> str | bytes:
        if self.ws is not None:
            return await next_message(self.ws)
        while not self.waiting:
            async with self.http.get(self.session) as polled:
                if polled.status != 200:
                    raise ConnectionError(f"session closed: {polled.status}")
                for packet in (await polled.text()).split("\x1e"):
                    if packet == "2":
                        await self.send("3")
                    elif packet.startswith("b"):
                        self.waiting.append(base64.b64decode(packet[1:]))
                    elif packet != "6":
                        self.waiting.append(packet)
        return self.waiting.pop(0)

    async def closed(self) -> None:
        """Wait (bounded) for the server to close the connection."""
        if self.ws is not None:
            await closed(self.ws)
            return

        async def until() -> None:
            while True:
                await self.receive()

        with pytest.raises(ConnectionError):
            await asyncio.wait_for(until(), WAIT_S)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


@pytest.fixture(params=["websocket", "polling"])
async def connection(request, conformance_app, http):
    connection = await Connection(http, conformance_app, request.param).open()
    yield connection
    await connection.close()


async def connected(connection: Connection) -> Connection:
    """The main namespace connected (its CONNECT answer and its `auth` packet read)."""
    await connection.send("40")
    assert (await connection.receive()).startswith("40{")
    assert await connection.receive() == '42["auth",{}]'
    return connection


@pytest.mark.parametrize(
    ("packet", "prefix", "auth"),
    [
        ("40", "40", '42["auth",{}]'),
        ('40{"token":"123"}', "40", '42["auth",{"token":"123"}]'),
        ("40/custom,", "40/custom,", '42/custom,["auth",{}]'),
        ('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]'),
    ],
    ids=["main", "main with a payload", "custom", "custom with a payload"],
)
async def test_a_namespace_connects_and_hears_its_handshake_payload(
    connection, packet, prefix, auth
):
    await connection.send(packet)
    answer = await connection.receive()
    assert answer.startswith(prefix)
    handshake = json.loads(answer[len(prefix) :])
    assert list(handshake) == ["sid"] and isinstance(handshake["sid"], str)
    assert await connection.receive() == auth


async def test_an_unknown_namespace_is_refused(connection):
    await connection.send("40/random")
    assert await connection.receive() == '44/random,{"message":"Invalid namespace"}'


async def test_an_invalid_handshake_closes_the_connection(connection):
    if connection.ws is not None:
        await connection.ws.send_str("4abc")
    else:
        async with connection.http.post(connection.session, data="4abc") as pushed:
            assert pushed.status == 400
    await connection.closed()


async def test_a_connection_that_connects_no_namespace_is_closed(conformance_app, http):
    async with http.ws_connect(ws_url(conformance_app, "socket.io")) as ws:
        await closed(ws)  # within the connect timeout (1 s), pongs or not


async def test_leaving_the_main_namespace_keeps_the_connection(connection):
    await connected(connection)
    await connection.send("41")
    if connection.ws is not None:
        assert await next_message(connection.ws, answer_pings=False) == "2"
    else:
        async with connection.http.get(connection.session) as polled:
            assert (polled.status, await polled.text()) == (200, "2")


async def test_leaving_a_custom_namespace_keeps_the_main_one(connection):
    await connected(connection)
    await connection.send("40/custom")
    assert (await connection.receive()).startswith("40/custom,")
    assert await connection.receive() == '42/custom,["auth",{}]'
    await connection.send("41/custom", '42["message","message to main namespace"]')
    assert await connection.receive() == '42["message-back","message to main namespace"]'


async def test_an_event_is_echoed(connection):
    await connected(connection)
    await connection.send('42["message",1,"2",{"3":[true]}]')
    assert await connection.receive() == '42["message-back",1,"2",{"3":[true]}]'


async def test_an_event_with_binary_attachments_is_echoed(connection):
    await connected(connection)
    placeholders = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'
    await connection.send(f'452-["message",{placeholders}]', b"\x01\x02\x03", b"\x04\x05\x06")
    assert await connection.receive() == f'452-["message-back",{placeholders}]'
    assert await connection.receive() == b"\x01\x02\x03"
    assert await connection.receive() == b"\x04\x05\x06"


async def test_an_event_is_acknowledged(connection):
    await connected(connection)
    await connection.send('42456["message-with-ack",1,"2",{"3":[false]}]')
    assert await connection.receive() == '43456[1,"2",{"3":[false]}]'


async def test_an_event_with_binary_attachments_is_acknowledged_with_them(connection):
    await connected(connection)
    placeholders = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'
    await connection.send(
        f'452-789["message-with-ack",{placeholders}]', b"\x01\x02\x03", b"\x04\x05\x06"
    )
    assert await connection.receive() == f"462-789[{placeholders}]"
    assert await connection.receive() == b"\x01\x02\x03"
    assert await connection.receive() == b"\x04\x05\x06"


@pytest.mark.parametrize(
    "packet",
    ["4abc", "42{}", '42abc["message-with-ack",1,"2",{"3":[false]}]'],
    ids=["unknown packet type", "invalid payload format", "invalid ack id"],
)
async def test_an_invalid_packet_closes_the_connection(connection, packet):
    await connected(connection)
    if connection.ws is not None:
        await connection.ws.send_str(packet)
    else:
        async with connection.http.post(connection.session, data=packet) as pushed:
            assert pushed.status == 400
    await connection.closed()
