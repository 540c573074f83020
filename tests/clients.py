"""Real Socket.IO clients behind one small interface, so a scenario runs on all of them:
python-socketio's `AsyncClient` and the official JS `socket.io-client` (driven by Node), each
over WebSocket only or long-polling only.

Waiting is always on an event with a timeout, never a sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import defaultdict
from typing import Any

import socketio

from tests.tools import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JS_DRIVER = os.path.join(ROOT, "tests", "js", "driver.mjs")
WAIT_S = 10.0
# "upgrade": long-polling first, then WebSocket (what the libraries do when not told otherwise)
KINDS = ("py-websocket", "py-polling", "py-upgrade", "js-websocket", "js-polling", "js-upgrade")


class Refused(Exception):
    """The server refused the connection; `data` is the connect_error's `{code, message}`."""

    def __init__(self, message: str, data: Any):
        super().__init__(message)
        self.message = message
        self.data = data


class Client:
    """What every test client offers."""

    kind: str

    def __init__(self, url: str, path: str, transport: str, reconnect: bool = False):
        self.url = url
        self.path = path
        self.transport = transport
        self.transports = ["polling", "websocket"] if transport == "upgrade" else [transport]
        self.reconnect = reconnect  # reconnect by itself, handing over the last event id
        self.last_event_id: str | None = None
        self.log: list[tuple[str, Any]] = []  # every event received, in order
        self._queues: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.disconnected = asyncio.Event()
        self.disconnect_reason: str | None = None

    def _received(self, event: str, payload: Any) -> None:
        if isinstance(payload, dict) and "eventId" in payload:
            self.last_event_id = payload["eventId"]
        self.log.append((event, payload))
        self._queues[event].put_nowait(payload)

    async def next_event(self, event: str, timeout: float = WAIT_S) -> Any:
        """The next not yet taken `event`, in arrival order."""
        try:
            return await asyncio.wait_for(self._queues[event].get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.kind}: no {event!r} within {timeout}s; got {[e for e, _ in self.log]}"
            ) from None

    def pending(self, event: str) -> int:
        """How many `event`s arrived and were not taken yet."""
        return self._queues[event].qsize()

    def names(self) -> list[str]:
        return [event for event, _ in self.log]

    async def wait_disconnected(self, timeout: float = WAIT_S) -> str | None:
        try:
            await asyncio.wait_for(self.disconnected.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.kind}: still connected after {timeout}s") from None
        return self.disconnect_reason

    async def connect(self, auth: dict | None = None) -> None:
        raise NotImplementedError

    async def call(self, event: str, data: Any = None, timeout: float = WAIT_S) -> Any:
        raise NotImplementedError

    async def emit(self, event: str, *args: Any) -> None:
        raise NotImplementedError

    async def disconnect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.disconnect()


class PyClient(Client):
    def __init__(self, url: str, path: str, transport: str, reconnect: bool = False):
        super().__init__(url, path, transport, reconnect)
        self.kind = f"py-{transport}"
        self.sio = socketio.AsyncClient(
            reconnection=reconnect, reconnection_delay=0.1, reconnection_delay_max=0.5
        )
        self._connect_error: Any = None
        self.sio.on("*", self._on_any)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    def _on_any(self, event: str, *args: Any) -> None:
        self._received(event, args[0] if len(args) == 1 else list(args) or None)

    async def _on_connect_error(self, data: Any) -> None:
        self._connect_error = data

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnect_reason = str(reason)
        self.disconnected.set()

    async def connect(self, auth: dict | None = None) -> None:
        handshake = auth
        if self.reconnect:

            def handshake():  # called again on each reconnection
                return {
                    **(auth or {}),
                    **({"lastEventId": self.last_event_id} if self.last_event_id else {}),
                }

        try:
            await self.sio.connect(
                self.url,
                transports=self.transports,
                socketio_path=self.path,
                auth=handshake,
                wait_timeout=WAIT_S,
            )
        except socketio.exceptions.ConnectionError as exc:
            error = self._connect_error or {}
            raise Refused(error.get("message", str(exc)), error.get("data")) from None

    async def call(self, event: str, data: Any = None, timeout: float = WAIT_S) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, *args: Any) -> None:
        await self.sio.emit(event, args if len(args) != 1 else args[0])

    async def disconnect(self) -> None:
        if self.reconnect:
            await self.sio.shutdown()  # also ends reconnection attempts
        elif self.sio.connected:
            await self.sio.disconnect()


class JsClient(Client):
    def __init__(self, url: str, path: str, transport: str, reconnect: bool = False):
        super().__init__(url, path, transport, reconnect)
        self.kind = f"js-{transport}"
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._acks: dict[int, asyncio.Future] = {}
        self._connected: asyncio.Future | None = None
        self._ready: asyncio.Future | None = None
        self.driver_errors: list[str] = []

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._process = await asyncio.create_subprocess_exec(
            require("node"),
            JS_DRIVER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._ready, WAIT_S)

    async def _read(self) -> None:
        assert self._process and self._process.stdout
        async for line in self._process.stdout:
            message = json.loads(line)
            kind = message["type"]
            if kind == "ready":
                self._ready.set_result(None)
            elif kind == "connected":
                self._settle(self._connected, None)
            elif kind == "connect_error":
                self._settle(self._connected, Refused(message["message"], message["data"]))
            elif kind == "event":
                args = message["args"]
                self._received(message["event"], args[0] if len(args) == 1 else args or None)
            elif kind in ("ack", "ack_timeout"):
                future = self._acks.pop(message["id"])
                if kind == "ack":
                    args = message["args"]
                    future.set_result(args[0] if len(args) == 1 else args or None)
                else:
                    future.set_exception(TimeoutError("no ack"))
            elif kind == "disconnect":
                self.disconnect_reason = message["reason"]
                self.disconnected.set()
            elif kind == "driver_error":
                self.driver_errors.append(message["message"])

    @staticmethod
    def _settle(future: asyncio.Future | None, outcome: Exception | None) -> None:
        if future is None or future.done():
            return
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)

    def _send(self, command: dict[str, Any]) -> None:
        assert self._process and self._process.stdin
        self._process.stdin.write((json.dumps(command) + "\n").encode())

    async def connect(self, auth: dict | None = None) -> None:
        if self._process is None:
            await self._start()
        self._connected = asyncio.get_running_loop().create_future()
        self._send(
            {
                "op": "connect",
                "url": self.url,
                "path": self.path,
                "transports": self.transports,
                "auth": auth or {},
                "reconnect": self.reconnect,
            }
        )
        await asyncio.wait_for(self._connected, WAIT_S)

    async def call(self, event: str, data: Any = None, timeout: float = WAIT_S) -> Any:
        ack_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        self._send(
            {
                "op": "emit",
                "id": ack_id,
                "event": event,
                "args": [] if data is None else [data],
                "ack": True,
            }
        )
        return await asyncio.wait_for(future, timeout)

    async def emit(self, event: str, *args: Any) -> None:
        self._send({"op": "emit", "id": 0, "event": event, "args": list(args), "ack": False})

    async def disconnect(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._send({"op": "disconnect"})

    async def close(self) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            self._send({"op": "exit"})
            try:
                await asyncio.wait_for(self._process.wait(), WAIT_S)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            await self._reader
        assert not self.driver_errors, self.driver_errors


def make_client(kind: str, url: str, path: str = "/socket.io/", reconnect: bool = False) -> Client:
    language, transport = kind.split("-")
    return (PyClient if language == "py" else JsClient)(url, path, transport, reconnect)
