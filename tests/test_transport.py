"""The engine (`realtime/engine/`): its transports, its emit path and its flow control, with
real clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import weakref

import aiohttp
import engineio.async_socket
import engineio.packet
import engineio.payload
import pytest
import socketio

from realtime.engine import create_engine
from realtime.engine.outbox import DIRECT_WRITE_LIMIT, Outbox
from realtime.engine.packets import FastJson, encode_event, websocket_frame
from realtime.engine.socket import GatewaySocket
from realtime.tasks import TaskKeeper
from tests.raw import RawSocket, read_text_frames, stalled_websocket


async def eventually(check, within: float = 10.0) -> None:
    """Wait, bounded, until `check()` about the server's own state holds: this process runs
    the server, and there is nothing to subscribe to, so it looks again a little later."""

    async def look() -> None:
        while not check():  # noqa: ASYNC110 - a state to look at, not an event to wait on
            await asyncio.sleep(0.02)

    await asyncio.wait_for(look(), within)


async def negotiated_compression(base_url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"{base_url}/socket.io/?EIO=4&transport=websocket", compress=15
        ) as ws:
            opening = await ws.receive_str()
            assert opening.startswith("0{")  # engine.io OPEN packet
            return ws.compress


async def test_compression_is_not_negotiated_by_default(base_url):
    assert await negotiated_compression(base_url) == 0


@pytest.mark.env(WS_COMPRESSION="true")
async def test_compression_is_negotiated_when_enabled(base_url):
    assert await negotiated_compression(base_url) == 15


async def test_a_polling_client_that_closes_is_answered_at_once(connect):
    # Without the CLOSE answer, disconnect() waits for the pending long-poll (25 s).
    client = await connect("py-polling")
    await asyncio.wait_for(client.sio.disconnect(), 10)
    assert not client.sio.connected


def holds_connection(server_port: int, client_port: int) -> bool:
    """Whether this process (the server under test) still has a socket open for the TCP
    connection from `client_port`: a closed one may linger in the kernel, not in the process."""
    open_sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                open_sockets.add(int(target[8:-1]))
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port, remote_port = (int(f.split(":")[1], 16) for f in fields[1:3])
            if (local_port, remote_port) == (server_port, client_port) and int(
                fields[9]
            ) in open_sockets:
                return True
    return False


@pytest.mark.env(CLIENT_BACKLOG_MAX="50")
async def test_a_stalled_client_is_cut_off_without_delaying_the_others(
    base_url, gateway, connect, token
):
    healthy = await connect(sub="healthy")
    stalled, stalled_writer = await stalled_websocket(base_url, token("stalled"))
    server_port = int(base_url.rsplit(":", 1)[1])
    client_port = stalled_writer.get_extra_info("sockname")[1]
    assert holds_connection(server_port, client_port)
    big = "x" * 4000
    count = 3000
    for n in range(count):
        await gateway.broadcaster.broadcast(
            {
                "event": "notification",
                "data": {"n": n, "pad": big},
                "users": ["stalled", "healthy"],
            },
            None,
        )
    got = [(await healthy.next_event("notification"))["n"] for _ in range(count)]
    assert got == list(range(count))  # everything, in order, while the other one stalled
    # cut at once although it still reads nothing: a graceful close would wait for it to read
    # what the server's transport still holds, keeping the connection (and that data) open
    assert not holds_connection(server_port, client_port)

    async def drained() -> int:  # what the stalled client had been sent, then the cut
        size = 0
        try:
            while chunk := await stalled.read(65536):
                size += len(chunk)
        except ConnectionResetError:
            pass
        return size

    delivered = await asyncio.wait_for(drained(), 30)
    stalled_writer.close()
    assert delivered < count * len(big) / 2  # it was cut off long before the end
    assert gateway.engine.slow_clients_closed == 1
    assert gateway.sessions.counts()["connections"] == 1


@pytest.mark.parametrize("socket_class", [GatewaySocket, engineio.async_socket.AsyncSocket])
async def test_a_poll_carries_no_more_packets_than_python_clients_accept(settings, socket_class):
    sio = create_engine(settings, TaskKeeper()).sio
    socket_ = socket_class(sio.eio, "sid")
    assert isinstance(socket_.queue, Outbox)
    for n in range(40):
        await socket_.send(engineio.packet.Packet(engineio.packet.MESSAGE, f"m{n}"))
    limit = engineio.payload.Payload.max_decode_packets
    first, second = await socket_.poll(), await socket_.poll()
    assert len(first) == len(second) == limit
    assert [p.data for p in first + second] == [f"m{n}" for n in range(2 * limit)]
    encoded = engineio.payload.Payload(packets=first).encode()
    assert len(engineio.payload.Payload(encoded_payload=encoded).packets) == limit  # decodes


@pytest.mark.env(RATE_LIMIT_EVENTS="1000")
@pytest.mark.parametrize("kind", ["js-polling", "py-polling"])
async def test_a_burst_of_events_over_long_polling_is_answered_in_full(connect, kind):
    """A JS client sends what it emitted during one POST's round trip in the next POST: a
    burst of emits makes a payload of more than the 16 packets python-engineio reads (it
    dropped the whole payload)."""
    client = await connect(kind)
    rooms = [f"availability-burst-{n}" for n in range(60)]
    answers = await asyncio.gather(*(client.call("join_room", {"roomId": r}) for r in rooms))
    assert [answer["roomId"] for answer in answers] == rooms
    assert all(answer["ok"] is True for answer in answers)


@pytest.mark.env(CLIENT_BACKLOG_MAX_BYTES="300000", MAX_PAYLOAD_BYTES="200000")
async def test_a_stalled_client_is_cut_off_by_bytes_long_before_its_packet_bound(
    base_url, gateway, connect, token
):
    healthy = await connect(sub="healthy")
    _, stalled_writer = await stalled_websocket(base_url, token("stalled"))
    count, pad = 60, "x" * 200_000  # 12 MB, 60 packets: far below CLIENT_BACKLOG_MAX
    try:
        for n in range(count):
            await gateway.broadcaster.broadcast(
                {
                    "event": "notification",
                    "data": {"n": n, "pad": pad},
                    "users": ["stalled", "healthy"],
                },
                None,
            )
        got = [(await healthy.next_event("notification"))["n"] for _ in range(count)]
        assert got == list(range(count))
        assert gateway.engine.slow_clients_closed == 1
    finally:
        stalled_writer.close()


async def test_a_binary_event_is_refused_and_its_attachments_never_kept(base_url, gateway, token):
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect()).startswith("40{")  # not even authenticated
        await raw.send('451-5["authenticate",{"_placeholder":true,"num":0}]')
        answer = await raw.next_frame(lambda frame: frame.startswith("435["))
        assert json.loads(answer[3:])[0]["error"]["code"] == "invalid_payload"
        await raw.send('45999999999-["authenticate"]')  # announces a billion attachments
        chunk = b"z" * 100_000
        for _ in range(50):
            await raw.send_bytes(chunk)
        assert (await raw.call(1, "authenticate", {"token": token("c1")}))["ok"] is True
        # python-socketio keeps a binary packet's attachments here until it is complete
        assert not gateway.engine.sio._binary_packet
    finally:
        await raw.close()


@pytest.mark.parametrize(
    "payload",
    [
        {"eventId": "0000000000000001", "text": "caf\u00e9 \u2603 \U0001f600", "n": [1, 2.5, None]},
        {"nested": {"deep": [{"a": True}, "</script>", "\u0000\x1e"]}},
        "a string",
        [],
    ],
)
def test_events_are_encoded_as_python_socketio_encodes_them(payload):
    library = socketio.packet.Packet(
        socketio.packet.EVENT, namespace="/", data=["notification", payload]
    ).encode()
    ours = encode_event("notification", payload)
    # the same packet; orjson writes non-ASCII characters as UTF-8, not as \u escapes
    assert ours[0] == library[0] == "2"
    assert json.loads(ours[1:]) == json.loads(library[1:])


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70, "n": -(2**64)},  # beyond what orjson holds
        {1: "a key that is not a string"},
        ["\ud800 a lone surrogate"],
        {"deep": [[[[[[["x"]]]]]]]},
    ],
)
def test_packet_json_falls_back_to_the_standard_library(value):
    text = FastJson.dumps(value)
    assert json.loads(text) == json.loads(json.dumps(value))


class _Capture:
    """Stands for a transport: keeps what aiohttp's WebSocket writer writes."""

    def __init__(self):
        self.written = b""

    def write(self, data) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
async def test_frames_are_the_bytes_aiohttp_writes(size):
    from aiohttp._websocket.writer import WebSocketWriter

    text = "4" + "\u00e9" * (size // 2) + "x" * (size % 2)  # multi-byte characters
    capture = _Capture()
    writer = WebSocketWriter(object(), capture, use_mask=False)
    await writer.send_frame(text.encode(), aiohttp.WSMsgType.TEXT)
    assert websocket_frame(text) == capture.written
    capture.written = b""
    await writer.send_frame(b"\x00" * size, aiohttp.WSMsgType.BINARY)
    assert websocket_frame(b"\x00" * size) == capture.written


async def test_every_engineio_socket_becomes_a_gateway_socket(gateway, connect, client_kind):
    await connect(client_kind)
    [socket_] = gateway.engine.sio.eio.sockets.values()
    # python-engineio creates its own class; the gateway's replaces it as the socket opens
    assert type(socket_) is GatewaySocket
    assert isinstance(socket_.queue, Outbox)


async def test_entering_a_room_does_not_suspend(gateway, connect):
    # Emitter.enter_with_replay relies on it: nothing is delivered between the entering and
    # the reading of the room's newest id
    await connect("py-websocket")
    [sid] = gateway.sessions._sessions
    entering = gateway.engine.sio.enter_room(sid, "availability-s9")
    with pytest.raises(StopIteration):
        entering.send(None)
    assert "availability-s9" in gateway.engine.sio.rooms(sid)


def _tasks_by_kind() -> collections.Counter:
    """The running tasks, by where their coroutine is defined: the test's own clients apart."""
    here = os.path.dirname(__file__)
    kinds = collections.Counter()
    for task in asyncio.all_tasks():
        code = task.get_coro().cr_code
        if code.co_filename.startswith(here) or "aiohttp/client" in code.co_filename:
            continue  # the clients'
        kinds[code.co_qualname] += 1
    return kinds


async def test_an_idle_websocket_connection_costs_one_task_its_reader(base_url, token):
    before = _tasks_by_kind()
    sockets = []
    try:
        for n in range(20):
            raw = await RawSocket(base_url).open()
            assert (await raw.connect({"token": token(f"u{n}")})).startswith("40{")
            await raw.next_event("auth_success")
            assert (await raw.call(1, "join_room", {"roomId": "availability-s1"}))["ok"]
            sockets.append(raw)
        grown = _tasks_by_kind() - before
        # one task reads; nothing writes, pings or waits apart, and aiohttp's connection and
        # request tasks have ended (python-engineio's service task starts with the first)
        per_connection = {kind for kind, count in grown.items() if count > 1}
        assert per_connection == {"GatewaySocket.run_websocket"}
        assert grown["GatewaySocket.run_websocket"] == len(sockets), grown
    finally:
        for raw in sockets:
            await raw.close()


@pytest.mark.parametrize("kind", ["py-websocket", "py-upgrade"])
async def test_a_websocket_connection_keeps_nothing_of_its_http_request(server, connect, kind):
    client = await connect(kind)
    # aiohttp's handler of the WebSocket's connection (an upgraded client's polls had others)
    (handler,) = [h for h in server.runner.server.connections if h._payload_parser is not None]
    # its request parser and queue, for requests an upgraded connection never takes
    assert handler._parser is None and not handler._messages and handler._cache == {}
    # its request handled, its task ended, and nothing keeps the request
    assert handler._current_request is None and handler._task_handler is None
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, aiohttp.web.BaseRequest)]
    assert [request for request in kept if request.protocol is handler] == []
    # ...and what it reads still arrives: an event after that, answered
    assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"]


async def test_pings_keep_a_connection_and_a_silent_client_is_closed(gateway, base_url):
    gateway.engine.sio.eio.ping_interval, gateway.engine.sio.eio.ping_timeout = 0.2, 0.3
    answering = await RawSocket(base_url).open()  # answers every ping
    silent = await RawSocket(base_url).open()
    silent._reader.cancel()  # reads nothing more: no pong
    try:
        while answering.pings < 5:  # a ping every 0.2 s, each answered
            answering.pinged.clear()
            await asyncio.wait_for(answering.pinged.wait(), 5)
        assert not answering.closed.is_set()
        sockets = gateway.engine.sio.eio.sockets
        await eventually(lambda: len(sockets) == 1)  # the silent one let go, the other kept
        assert gateway.sessions.counts()["transports"] == 1
    finally:
        await answering.close()
        await silent._http.close()  # its reader is gone: only its session is left to close


@pytest.mark.env(PING_INTERVAL="0.2", PING_TIMEOUT="0.3", AUTH_TIMEOUT="60")
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_ping_settings_are_what_clients_are_told_and_held_to(http, base_url, transport):
    async with (
        http.get(f"/socket.io/?EIO=4&transport={transport}")
        if transport == ("polling")
        else contextlib.nullcontext() as handshake
    ):
        if transport == "polling":
            opening = json.loads((await handshake.text())[1:])
        else:
            raw = await RawSocket(base_url).open()
            opening = json.loads(raw.opening[1:])
    assert (opening["pingInterval"], opening["pingTimeout"]) == (200, 300)
    if transport == "polling":
        url = f"/socket.io/?EIO=4&transport=polling&sid={opening['sid']}"
        async with http.get(url) as ping:
            assert await ping.text() == "2"  # a ping, after the interval

        # not answered: closed past the timeout (a poll then is 400)
        async def until_closed() -> None:
            while True:
                async with http.get(url) as polled:
                    if polled.status == 400:
                        return

        await asyncio.wait_for(until_closed(), 5)
    else:
        raw._reader.cancel()  # reads nothing more: no pong
        try:
            while True:  # the server closes it: a read gets the close, not a frame
                message = await asyncio.wait_for(raw._ws.receive(), 5)
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        finally:
            await raw._http.close()


@pytest.mark.env(PING_INTERVAL="1", PING_TIMEOUT="0.2", AUTH_TIMEOUT="60")
async def test_a_poll_waiting_when_its_client_misses_a_pong_takes_the_close(http):
    """python-engineio's `send` drops the CLOSE of a socket whose ping is overdue: the poll
    waiting then ended empty, which a JS client reads as a server error."""
    opening = await (await http.get("/socket.io/?EIO=4&transport=polling")).text()
    url = f"/socket.io/?EIO=4&transport=polling&sid={json.loads(opening[1:])['sid']}"
    async with http.get(url) as ping:
        assert await ping.text() == "2"
    async with http.get(url) as waiting:  # no pong: the ping check closes it meanwhile
        assert (waiting.status, await waiting.text()) == (200, "1")
    async with http.get(url) as after:
        assert after.status == 400


@pytest.mark.env(CONNECT_TIMEOUT="0.5", AUTH_TIMEOUT="60", PING_TIMEOUT="0.5")
async def test_a_connection_that_connects_no_namespace_is_closed_at_the_connect_timeout(
    base_url,
):
    """(The ping check's sweep, which visits every connection once per PING_TIMEOUT, closes
    it: within CONNECT_TIMEOUT + PING_TIMEOUT.)"""
    idle = await RawSocket(base_url).open()
    connected = await RawSocket(base_url).open()
    try:
        assert (await connected.connect()).startswith("40{")  # unauthenticated, but connected
        await idle.wait_closed()
        # opened at the same time, not closed with it: it still answers
        answer = await connected.call(1, "join_room", {"roomId": "availability-1"})
        assert answer["error"]["code"] == "unauthenticated"
    finally:
        await idle.close()
        await connected.close()


@pytest.mark.env(CLIENT_BACKLOG_MAX="5000", CLIENT_BACKLOG_MAX_BYTES="50000000")
async def test_order_holds_when_a_connection_pushes_back(gateway, base_url, token):
    reader, writer = await stalled_websocket(base_url, token("slow"))
    try:
        frames = await read_text_frames(reader, 3)  # OPEN, CONNECT, auth_success
        assert frames[1].startswith("40{") and '"auth_success"' in frames[2]
        [session] = gateway.sessions._sessions.values()
        outbox = gateway.engine.sio.eio.sockets[session.connection].queue
        pad = "x" * 8000
        expected, queued = [], 0
        for n in range(400):
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"n": n, "pad": pad}, "users": ["slow"]}, None
            )
            expected.append(("notification", n))
            if n % 7 == 0:  # a control event between data events, as sessions send them
                gateway.emitter.send_control(session.sid, "error", {"n": n})
                expected.append(("error", n))
            queued = max(queued, outbox.qsize())
        # the connection pushed back: what followed waited in the outbox, not in a buffer
        assert queued > 0 and DIRECT_WRITE_LIMIT < 400 * len(pad)
        frames = await asyncio.wait_for(read_text_frames(reader, len(expected)), 30)
        got = [(json.loads(f[2:])[0], json.loads(f[2:])[1]["n"]) for f in frames]
        assert got == expected
        assert gateway.engine.slow_clients_closed == 0
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["py-upgrade", "js-upgrade"])
async def test_what_is_sent_while_a_client_upgrades_arrives_once_in_order(gateway, connect, kind):
    client = await connect(kind, sub="c1")
    count = 300
    for n in range(count):
        gateway.emitter.send_control(client_sid(gateway), "notification", {"n": n})
        if n % 50 == 0:
            await asyncio.sleep(0)  # let the upgrade's requests in between
    got = [(await client.next_event("notification"))["n"] for _ in range(count)]
    assert got == list(range(count))
    [socket_] = gateway.engine.sio.eio.sockets.values()
    await eventually(lambda: socket_.upgraded)  # the upgrade is the client's to finish


def client_sid(gateway) -> str:
    [sid] = gateway.sessions._sessions
    return sid


async def test_a_websocket_opens_with_what_python_engineio_sends(base_url, http):
    # long-polling handshakes are python-engineio's own; WebSocket ones the gateway's route
    polling = await (await http.get("/socket.io/?EIO=4&transport=polling")).text()
    raw = await RawSocket(base_url).open()
    await raw.close()
    library, ours = json.loads(polling[1:]), json.loads(raw.opening[1:])
    assert set(library) == set(ours)
    assert library["upgrades"] == ["websocket"] and ours["upgrades"] == []
    for key in set(library) - {"sid", "upgrades"}:
        assert library[key] == ours[key], key


@pytest.mark.parametrize(
    "origin, accepted", [("http://elsewhere.example", False), (None, True), ("same", True)]
)
async def test_a_websocket_from_another_origin_is_refused(base_url, origin, accepted):
    headers = {"Origin": base_url if origin == "same" else origin} if origin else {}
    async with aiohttp.ClientSession() as session:
        url = f"{base_url}/socket.io/?EIO=4&transport=websocket"
        if not accepted:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, headers=headers)
            assert refused.value.status == 400
            return
        async with session.ws_connect(url, headers=headers) as ws:
            assert (await ws.receive_str()).startswith("0{")


@pytest.mark.env(CORS_ORIGINS="https://app.example,https://admin.example")
@pytest.mark.parametrize(
    "origin, accepted",
    [
        ("https://app.example", True),
        ("https://admin.example", True),
        ("https://evil.example", False),
        ("https://app.example.evil.example", False),
        ("http://app.example", False),  # another scheme is another origin
        ("null", False),  # a sandboxed frame, a file: page
    ],
)
async def test_with_cors_origins_a_websocket_from_another_origin_is_refused(
    base_url, origin, accepted
):
    """Cross-site WebSocket hijacking: a page elsewhere opening a WebSocket with its visitor's
    cookies. Refused at the handshake, opened directly or as an upgrade of a session."""
    headers = {"Origin": origin}
    async with aiohttp.ClientSession() as session:
        direct = f"{base_url}/socket.io/?EIO=4&transport=websocket"
        polling = await session.get(
            f"{base_url}/socket.io/?EIO=4&transport=polling",
            headers={"Origin": "https://app.example"},
        )
        sid = json.loads((await polling.text())[1:])["sid"]
        upgrade = f"{direct}&sid={sid}"
        for url in (direct, upgrade):
            if accepted:
                async with session.ws_connect(url, headers=headers) as ws:
                    if url == direct:
                        assert (await ws.receive_str()).startswith("0{")
                    else:
                        await ws.send_str("2probe")
                        assert await ws.receive_str() == "3probe"
            else:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url, headers=headers)
                assert refused.value.status == 400, url


@pytest.mark.env(CORS_ORIGINS="https://app.example")
async def test_polls_answer_as_python_engineio_answers(http):
    app = {"Origin": "https://app.example"}
    handshake = await http.get("/socket.io/?EIO=4&transport=polling", headers=app)  # library
    sid = json.loads((await handshake.text())[1:])["sid"]
    url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert (await http.post(url, data="40", headers=app)).status == 200
    poll = await http.get(url, headers=app)  # the gateway's own answer
    assert poll.status == 200 and (await poll.text()).startswith("40{")
    for header in ("Content-Type", "Access-Control-Allow-Origin"):
        assert poll.headers[header] == handshake.headers[header], header
    assert poll.headers.get("Access-Control-Allow-Credentials") == handshake.headers.get(
        "Access-Control-Allow-Credentials"
    )
    elsewhere = await http.get(url, headers={"Origin": "https://evil.example"})
    assert elsewhere.status == 400
    unknown = await http.get("/socket.io/?EIO=4&transport=polling&sid=nope")
    assert unknown.status == 400


async def test_a_head_request_takes_no_packet_from_a_poll(http, gateway):
    handshake = await http.get("/socket.io/?EIO=4&transport=polling")
    sid = json.loads((await handshake.text())[1:])["sid"]
    url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert (await http.post(url, data="40")).status == 200
    await http.head(url)  # whatever it answers, the CONNECT packet stays for the next poll
    assert (await (await http.get(url)).text()).startswith("40{")


# -- what a cold review found: each of these failed before its fix ------------------------------
def _namespace_members(gateway) -> int:
    return len(gateway.engine.sio.manager.rooms.get("/", {}).get(None, {}))


async def test_a_connect_read_after_the_transport_closed_leaves_no_session(gateway, base_url):
    from tests.raw import RawPolling

    for _ in range(5):
        raw = await RawSocket(base_url).open()
        await raw.send("1")  # Engine.IO CLOSE...
        await raw.send("40")  # ...then a namespace CONNECT the server still reads
        await raw.close()
        raw = await RawPolling(base_url).open()
        await raw.post("1", "40")  # the same over long-polling, in one payload
        await raw.close()
    # every frame read: the server has closed them all (a closed one may linger in the table)
    await eventually(lambda: all(s.closed for s in gateway.engine.sio.eio.sockets.values()))
    assert _namespace_members(gateway) == 0
    assert not gateway.engine.sio.manager.pending_connect.get("/")


@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_an_upgrade_that_never_probes_is_cut_when_its_session_closes(gateway, http, base_url):
    opening = await (await http.get("/socket.io/?EIO=4&transport=polling")).text()
    sid = json.loads(opening[1:])["sid"]
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(
        (
            f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: {host}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    try:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        # no probe ever: the auth deadline closes the session, and its upgrade with it
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert sid not in gateway.engine.sio.eio.sockets
    finally:
        writer.close()


async def test_a_closed_websocket_whose_client_reads_nothing_is_cut(
    gateway, base_url, token, monkeypatch
):
    import realtime.engine.outbox
    import realtime.engine.socket

    monkeypatch.setattr(realtime.engine.outbox, "CLOSE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(realtime.engine.socket, "CLOSE_TIMEOUT_S", 0.5)
    reader, writer = await stalled_websocket(base_url, token("slow"))
    try:
        await read_text_frames(reader, 3)  # OPEN, CONNECT, auth_success; then reads nothing
        [session] = gateway.sessions._sessions.values()
        socket_ = gateway.engine.sio.eio.sockets[session.connection]
        while gateway.engine._endpoint.connections[socket_].get_write_buffer_size() == 0:
            gateway.emitter.send_control(session.sid, "notification", {"pad": "x" * 100_000})
            await asyncio.sleep(0)
        await socket_.close(wait=False, abort=False)  # as the ping check closes one
        server_port = int(base_url.rsplit(":", 1)[1])
        client_port = writer.get_extra_info("sockname")[1]
        await eventually(lambda: not holds_connection(server_port, client_port))
    finally:
        writer.close()


@pytest.mark.env(CLIENT_BACKLOG_MAX_BYTES="20000")
async def test_after_a_dropped_packet_nothing_smaller_slips_through(gateway, base_url, token):
    from storage.base import NewEvent
    from tests.raw import RawPolling

    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40" + json.dumps({"token": token("slow")})) == 200
        await raw.poll_until(lambda packet: '"auth_success"' in packet)
        raw.received.clear()
        pending = asyncio.create_task(raw.poll())  # the client's long-poll, waiting
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.queue._getters)  # the poll waits in the outbox
        await gateway.emitter.publish(  # delivered in one pass
            [
                NewEvent("notification", {"n": 1, "pad": "x" * 12_000}, ("user-slow",), "t:1"),
                NewEvent("notification", {"n": 2, "pad": "x" * 12_000}, ("user-slow",), "t:2"),
                NewEvent("notification", {"n": 3}, ("user-slow",), "t:3"),
            ]
        )
        await pending
        got = [json.loads(p[2:])[1]["n"] for p in raw.received if p.startswith("42")]
        assert got == [1]  # 2 did not fit: the client is cut, and 3 never overtakes it
        assert gateway.engine.slow_clients_closed == 1
    finally:
        await raw.close()


@contextlib.asynccontextmanager
async def polling_socket(base_url: str, gateway):
    """A raw long-polling client with namespace `/` connected (not authenticated), and the
    sid of its socket; closed afterwards."""
    from tests.raw import RawPolling

    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40") == 200
        await raw.poll()
        [sid] = gateway.sessions._sessions
        yield raw, sid
    finally:
        await raw.close()


async def test_a_second_poll_while_one_waits_closes_the_session(gateway, base_url):
    """As Node's engine.io does (and the Engine.IO protocol's test suite checks): the waiting
    poll takes the CLOSE, the second is 400, and so is any poll after (it answered both, and
    a session's packets went to whichever poll took them)."""
    async with polling_socket(base_url, gateway) as (raw, _):
        first = asyncio.create_task(raw._http.get(raw._url))
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.queue.waited_on())
        second = await raw._http.get(raw._url)
        assert second.status == 400
        answer = await first
        assert (answer.status, await answer.text()) == (200, "1")
        assert await raw.poll() == 400


async def test_large_polls_are_compressed_as_python_engineio_compresses_them(gateway, base_url):
    async with polling_socket(base_url, gateway) as (raw, sid):
        for n in range(10):
            gateway.emitter.send_control(sid, "notification", {"n": n, "pad": "y" * 300})
        async with aiohttp.ClientSession() as session:
            answer = await session.get(raw._url, headers={"Accept-Encoding": "gzip"})
            assert answer.headers["Content-Encoding"] == "gzip"
            assert (await answer.text()).count('"notification"') == 10


async def test_a_malformed_frame_ends_the_connection(base_url):
    raw = await RawSocket(base_url).open()
    await raw.send("x")  # not an Engine.IO packet
    await raw.wait_closed()
    await raw.close()


async def test_room_cursors_stay_bounded(gateway, connect, monkeypatch):
    import realtime.delivery.emitter

    monkeypatch.setattr(realtime.delivery.emitter, "ROOM_CURSORS_MAX", 5)
    client = await connect("py-websocket")
    for n in range(20):
        assert (await client.call("join_room", {"roomId": f"availability-x{n}"}))["ok"]
    assert len(gateway.emitter._room_cursors) <= 5


async def test_a_client_that_disconnects_is_forgotten_at_once(gateway, connect, client_kind):
    """aiohttp cancels a WebSocket's handler when its client goes: the socket must still be
    closed and forgotten then, not when its pings go unanswered (45 s later)."""
    client = await connect(client_kind, sub="c1")
    await client.disconnect()
    await client.wait_disconnected()
    counts = gateway.sessions.counts
    await eventually(lambda: counts()["connections"] == counts()["transports"] == 0, within=5.0)
    assert gateway.engine.room_figures(1) == (0, 0, {})
    if client_kind.endswith("websocket"):
        # (a closed long-polling socket is kept for one more poll, as python-engineio does,
        # until its service task sweeps it)
        await eventually(lambda: not gateway.engine.sio.eio.sockets, within=5.0)


@pytest.mark.parametrize("kind", ["py-websocket", "js-websocket", "py-upgrade"])
async def test_nothing_keeps_a_closed_websocket_in_memory(gateway, connect, kind):
    """Not its next ping's timer, nor a task: what a connection cost is given back when it
    ends, not 25 s later (a storm of connections would pile them up)."""
    client = await connect(kind, sub="c1")
    await eventually(lambda: any(s.upgraded for s in gateway.engine.sio.eio.sockets.values()))
    (socket,) = gateway.engine.sio.eio.sockets.values()
    gone = weakref.ref(socket)
    del socket
    await client.disconnect()
    await client.wait_disconnected()
    await eventually(lambda: gc.collect() >= 0 and gone() is None, within=5.0)
