"""A minimal Socket.IO v5 client over one raw WebSocket (aiohttp), cheap enough to hold
thousands of connections in one process. It speaks just what the benchmarks need:
connect with auth, acknowledged emits, pongs, and a callback per received event frame."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import aiohttp


class RawClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        on_event: Callable[[str], None] | None = None,
        compress: int = 0,
    ):
        self.compress = compress
        self._session = session
        self._url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self._on_event = on_event  # gets each raw `42[...]` frame's text
        self._acks: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self.auth_success: asyncio.Future | None = None

    async def connect(self, auth: dict[str, Any]) -> dict[str, Any]:
        """Open, join namespace `/` with `auth`, and return the `auth_success` payload."""
        # per-message compression offered only when asked (`compress`): a stock server
        # negotiates whatever is offered
        self._ws = await self._session.ws_connect(self._url, compress=self.compress, autoping=False)
        opening = await self._ws.receive_str()
        assert opening.startswith("0"), opening
        await self._ws.send_str("40" + json.dumps(auth))
        connected = await self._ws.receive_str()
        if not connected.startswith("40"):
            raise ConnectionError(connected)
        self.auth_success = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return await self.auth_success

    async def call(self, event: str, data: Any) -> Any:
        ack_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self._ws.send_str(f"42{ack_id}" + json.dumps([event, data]))
        return await future

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            text = message.data
            if text.startswith("42"):
                if (
                    self.auth_success is not None
                    and not self.auth_success.done()
                    and '"auth_success"' in text[:20]
                ):
                    self.auth_success.set_result(json.loads(text[2:])[1])
                elif self._on_event is not None:
                    self._on_event(text)
            elif text.startswith("43"):
                ack_id, _, body = text[2:].partition("[")
                self._acks.pop(int(ack_id)).set_result(json.loads("[" + body)[0])
            elif text == "2":
                await self._ws.send_str("3")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
