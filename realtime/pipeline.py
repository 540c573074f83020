"""The single path by which events leave the server."""

from __future__ import annotations

import logging
from typing import Any

import socketio

logger = logging.getLogger(__name__)


class Emitter:
    """Sends control events to one socket, and data events to rooms."""

    def __init__(self, sio: socketio.AsyncServer):
        self._sio = sio

    async def send_control(self, sid: str, event: str, payload: dict[str, Any]) -> None:
        """A control event (auth_*, error, rooms_revoked) to one socket; never logged for replay."""
        await self._sio.emit(event, payload, to=sid)
