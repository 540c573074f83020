"""A hostile review of `websocket.py` (`detach`, `release_http`) and the endpoint's use of it:
real servers, raw clients."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from tests.gateways import until
from tests.raw import _masked_text_frame, read_text_frames, websocket_upgrade

WAIT_S = 20.0  # past aiohttp's lingering time (10 s)


async def _upgrade(base_url: str, extra_headers: str = "", body: bytes = b""):
    """A raw WebSocket handshake; (reader, writer) once the 101 is read."""
    reader, writer, status = await websocket_upgrade(base_url, "", extra_headers, body)
    assert status == 101, status
    return reader, writer


async def _ack(reader, writer, ack_id: int, event: str, data: dict) -> str:
    writer.write(_masked_text_frame(f"42{ack_id}{json.dumps([event, data])}".encode()))
    while True:
        (frame,) = await asyncio.wait_for(read_text_frames(reader, 1), WAIT_S)
        if frame.startswith(f"43{ack_id}["):
            return frame


# (was a defect, fixed in `detach`: an upgrade request that declares a body (`Content-Length`,
# or chunked) left its payload unread for ever once detached (the WebSocket's reader takes the
# bytes): aiohttp's connection task, ending, lingered `lingering_time` (10 s) on it, then
# called `protocol.close()`, and from then on `data_received` dropped every byte: the
# WebSocket went deaf (still open, pings sent, pongs dropped, until the ping timeout).
# Undetached, the handler never returned while the WebSocket was open, so nothing lingered.)
async def test_a_websocket_whose_upgrade_request_declares_a_body_still_hears_its_client(
    server, base_url, token
):
    reader, writer = await _upgrade(base_url, "Content-Length: 5\r\n")
    try:
        (opening,) = await read_text_frames(reader, 1)
        assert opening.startswith("0{")
        writer.write(_masked_text_frame(("40" + json.dumps({"token": token()})).encode()))
        assert await _ack(reader, writer, 1, "join_room", {"roomId": "availability-1"})
        # aiohttp's handling of the upgrade request ends (its connection task)
        protocol = next(iter(server.runner.server._connections))
        connection_task = protocol._task_handler
        if connection_task is not None:
            await asyncio.wait_for(asyncio.shield(connection_task), WAIT_S)
        assert await _ack(reader, writer, 2, "join_room", {"roomId": "availability-2"})
    finally:
        writer.close()


# (was a defect, minor, of endpoint.py `_open_websocket`: a client that resets its connection
# before the 101 is written (`prepare` raises) leaves its closed socket in `eio.sockets` (counted in
# `realtime_transports`, its outbox held) until the sweep passes, up to a ping timeout later,
# where `route`'s upgrade path and `_end_websocket` forget a closed socket at once. (The
# library's `_handle_connect` did no better: the exception skipped its own `del`.)
async def test_a_websocket_reset_before_its_101_is_forgotten_at_once(server, base_url, gateway):
    host, port = base_url.removeprefix("http://").split(":")
    eio = gateway.engine.sio.eio
    for _ in range(10):
        with socket.create_connection((host, int(port))) as client:
            client.sendall(
                b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def handled() -> bool:  # aiohttp took each request, let each connection go
        aio = server.runner.server
        return (
            aio.requests_count >= 10
            and not aio._connections
            and not any(
                task.get_coro().__qualname__.startswith("RequestHandler.")
                for task in asyncio.all_tasks()
            )
        )

    await until(handled)
    assert not eio.sockets, [(s.sid, s.closed) for s in eio.sockets.values()]
