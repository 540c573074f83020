"""The transport adjustments hold against the installed python-engineio and aiohttp.

These fail if the library internals `realtime/transport.py` relies on move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import aiohttp
import engineio.async_drivers.aiohttp as engineio_aiohttp
import pytest

from realtime.config import load_settings
from realtime.tasks import TaskKeeper
from realtime.transport import create_socketio_server
from tests.raw import RawSocket, stalled_websocket


async def negotiated_compression(base_url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"{base_url}/socket.io/?EIO=4&transport=websocket", compress=15
        ) as ws:
            opening = await ws.receive_str()
            assert opening.startswith("0{")  # engine.io OPEN packet
            return ws.compress


def test_the_driver_is_the_one_we_adjust(tmp_path):
    settings = load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32})
    sio, _ = create_socketio_server(settings, TaskKeeper())
    assert issubclass(sio.eio._async["websocket"], engineio_aiohttp.WebSocket)
    assert sio.eio._async["websocket"] is not engineio_aiohttp.WebSocket
    assert engineio_aiohttp._async["websocket"] is engineio_aiohttp.WebSocket  # not patched


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
    assert gateway.transports.slow_clients_closed == 1
    assert gateway.sessions.counts()["connections"] == 1


async def test_a_poll_carries_no_more_packets_than_python_clients_accept(settings):
    import engineio.async_socket
    import engineio.packet
    import engineio.payload

    sio, _ = create_socketio_server(settings, TaskKeeper())
    socket_ = engineio.async_socket.AsyncSocket(sio.eio, "sid")
    for n in range(40):
        await socket_.send(engineio.packet.Packet(engineio.packet.MESSAGE, f"m{n}"))
    limit = engineio.payload.Payload.max_decode_packets
    first, second = await socket_.poll(), await socket_.poll()
    assert len(first) == len(second) == limit
    assert [p.data for p in first + second] == [f"m{n}" for n in range(2 * limit)]
    encoded = engineio.payload.Payload(packets=first).encode()
    assert len(engineio.payload.Payload(encoded_payload=encoded).packets) == limit  # decodes


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
        assert gateway.transports.slow_clients_closed == 1
    finally:
        stalled_writer.close()


async def test_the_library_calls_we_adjust_are_still_there(settings):
    import socketio.async_server

    sio, _ = create_socketio_server(settings, TaskKeeper())
    # client events enter python-socketio through `_handle_event` (GatewayServer's override)...
    assert "_handle_event" in vars(socketio.async_server.AsyncServer)
    assert "_handle_event" in vars(type(sio))
    # ...its own lifecycle through these, which must not
    for name in ("_handle_connect", "_handle_disconnect"):
        assert name not in vars(type(sio))
    # Engine.IO's connection events are wrapped for the transport lifecycle
    assert set(sio.eio.handlers) >= {"connect", "disconnect", "message"}


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
        assert not gateway.sio._binary_packet
    finally:
        await raw.close()
