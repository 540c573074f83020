"""The runner that puts long-polling's lane (`lane.py`) in front of an app's Engine.IO endpoints.

`LaneRunner` is aiohttp's `AppRunner` whose server makes a `LaneConnection` for each connection
(one the lane hands over gets aiohttp's own handler), and on shutdown closes the lane's
connections as aiohttp closes its own: idle ones at once, the others after their answer.

Library internals touched: aiohttp's `AppRunner._make_server` (wrapped) and the `Server` it
makes (its `__call__`, `pre_shutdown` and `shutdown`; the rest passed through).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from realtime.engine.lane import LaneConnection

# the endpoints a lane serves, by path (`Endpoint.attach` adds each): b"/socket.io/" -> endpoint
LANES = web.AppKey("engine_lanes", dict)


class LaneServer:
    """aiohttp's `Server` (a connection's protocol factory) with the lane in front of it."""

    def __init__(self, server: Any, lanes: dict[str, Any]):
        self._server = server
        self.lanes = {path.encode(): endpoint for path, endpoint in lanes.items()}
        self.live: set[LaneConnection] = set()  # connections in the lane
        self.closing = False
        self._emptied: asyncio.Event | None = None

    def __call__(self) -> LaneConnection:
        return LaneConnection(self)

    def handler(self) -> asyncio.Protocol:
        return self._server()

    def left(self, connection: LaneConnection) -> None:
        self.live.discard(connection)
        if not self.live and self._emptied is not None:
            self._emptied.set()

    def pre_shutdown(self) -> None:
        """Stop taking requests: idle connections close now, the others after their answer."""
        self._server.pre_shutdown()
        self.closing = True
        for connection in list(self.live):
            connection.close_when_idle()

    async def shutdown(self, within: float | None = None) -> None:
        """Wait for the answers under way, aiohttp's and the lane's side by side (`within`
        bounds the whole shutdown), then cut the lane's connections still open."""
        await asyncio.gather(self._server.shutdown(within), self._drained(within))
        for connection in list(self.live):
            connection.abort()

    async def _drained(self, within: float | None) -> None:
        if self.live:  # (the app's shutdown has closed the sessions: their polls answer)
            self._emptied = asyncio.Event()
            try:
                async with asyncio.timeout(within):
                    await self._emptied.wait()
            except TimeoutError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class LaneRunner(web.AppRunner):
    """aiohttp's runner, with a lane in front of the app's Engine.IO endpoints."""

    async def _make_server(self) -> Any:
        server = await super()._make_server()
        lanes = self.app.get(LANES)
        return LaneServer(server, lanes) if lanes else server
