"""The transport adjustments hold against the installed python-engineio and aiohttp.

These fail if the library internals `realtime/transport.py` relies on move.
"""

from __future__ import annotations

import asyncio

import aiohttp
import engineio.async_drivers.aiohttp as engineio_aiohttp
import pytest

from realtime.app import make_socketio_server
from realtime.config import load_settings


async def negotiated_compression(base_url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base_url}/socket.io/?EIO=4&transport=websocket",
                                      compress=15) as ws:
            opening = await ws.receive_str()
            assert opening.startswith("0{")  # engine.io OPEN packet
            return ws.compress


def test_the_driver_is_the_one_we_adjust(tmp_path):
    settings = load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32})
    sio = make_socketio_server(settings)
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
