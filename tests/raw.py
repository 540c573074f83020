"""Clients that speak Engine.IO v4 / Socket.IO v5 frame by frame, for what the official clients
will not send (reserved event names, a connection that never joins the namespace) and for a
client that stops reading."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

import aiohttp

WAIT_S = 10.0


class RawSocket:
    """A bare WebSocket client of the gateway: text frames in and out, pings answered."""

    def __init__(
        self,
        base_url: str,
        path: str = "/socket.io/",
        query: str = "",
        headers: dict[str, str] | None = None,
    ):
        self._url = f"{base_url}{path}?EIO=4&transport=websocket" + (f"&{query}" if query else "")
        self._headers = headers or {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.received: list[str] = []  # every frame but pings, in order
        self._taken: set[int] = set()  # indexes of the frames a lookup has taken
        self._arrived = asyncio.Event()
        self.opening = ""
        self.pings = 0  # Engine.IO pings received (and answered)
        self.pinged = asyncio.Event()

    async def open(self) -> RawSocket:
        """Open the Engine.IO connection (its OPEN packet read), no namespace yet."""
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self._url, headers=self._headers)
        self.opening = await self._ws.receive_str()  # the Engine.IO OPEN packet
        assert self.opening.startswith("0{"), self.opening
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            if message.data == "2":  # Engine.IO PING
                await self._ws.send_str("3")
                self.pings += 1
                self.pinged.set()
                continue
            self.received.append(message.data)
            self._arrived.set()
        self.closed.set()
        self._arrived.set()

    async def send(self, frame: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(frame)

    async def send_bytes(self, frame: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(frame)

    async def connect(self, auth: dict | None = None, namespace: str = "/") -> str:
        """Connect a namespace (`/`): the answer frame (`40{...}` or `44{...}`, with the
        namespace after the type when it is not `/`)."""
        prefix = "" if namespace == "/" else namespace + ","
        await self.send("40" + prefix + (json.dumps(auth) if auth else ""))
        return await self.next_frame(
            lambda frame: frame[:2] in ("40", "44") and frame[2:].startswith(prefix)
        )

    async def call(self, ack_id: int, event: Any, *args: Any) -> Any:
        """Send an event with an ack id; the ack's first argument."""
        await self.send(f"42{ack_id}" + json.dumps([event, *args]))
        prefix = f"43{ack_id}["
        frame = await self.next_frame(lambda frame: frame.startswith(prefix))
        return json.loads(frame[len(prefix) - 1 :])[0]

    async def next_event(self, name: str, timeout: float = WAIT_S) -> Any:
        frame = await self.next_frame(
            lambda frame: frame.startswith("42[") and json.loads(frame[2:])[0] == name, timeout
        )
        return json.loads(frame[2:])[1]

    async def next_frame(self, wanted, timeout: float = WAIT_S) -> str:
        """The first frame not taken yet that `wanted(frame)` accepts, in arrival order."""

        async def find() -> str:
            while True:
                for index, frame in enumerate(self.received):
                    if index not in self._taken and wanted(frame):
                        self._taken.add(index)
                        return frame
                if self.closed.is_set():
                    raise AssertionError(f"closed; got {self.received}")
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"no such frame within {timeout}s; got {self.received}") from None

    async def wait_closed(self, timeout: float = WAIT_S) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still open after {timeout}s") from None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        if self._http is not None:
            await self._http.close()


async def stalled_websocket(base_url: str, token: str, *frames: str):
    """A client that connects, authenticates, sends `frames`, then never reads again: tiny
    buffers, so the server's writes back up at once. Returns (reader, writer): keep the writer,
    a collected StreamWriter closes the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    for message in ("40" + json.dumps({"token": token}), *frames):
        writer.write(_masked_text_frame(message.encode()))
    await writer.drain()
    return reader, writer


async def websocket_upgrade(
    base_url: str, query: str = "", extra_headers: str = "", body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw WebSocket handshake on the Engine.IO endpoint (`query` after
    `transport=websocket`, headers and bytes of one's own after the request's): its reader,
    writer and status."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: {host}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        ).encode()
        + body
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    return reader, writer, int(head.split()[1])


async def read_text_frames(reader: asyncio.StreamReader, count: int) -> list[str]:
    """The next `count` text frames a server sent on a raw WebSocket stream (server frames are
    unmasked); Engine.IO pings are skipped."""
    frames: list[str] = []
    while len(frames) < count:
        head, size = await reader.readexactly(2)
        size &= 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
        body = await reader.readexactly(size)
        if head == 0x81 and body != b"2":
            frames.append(body.decode())
    return frames


def _masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    else:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawPolling:
    """A bare long-polling client of the gateway: packets out in POSTs (several may be in
    flight at once), in through GETs, pings answered."""

    def __init__(self, base_url: str, path: str = "/socket.io/"):
        self._url = f"{base_url}{path}?EIO=4&transport=polling"
        self._http = aiohttp.ClientSession()
        self.received: list[str] = []

    async def open(self) -> RawPolling:
        opening = await (await self._http.get(self._url)).text()
        assert opening.startswith("0{"), opening
        self._url += f"&sid={json.loads(opening[1:])['sid']}"
        return self

    async def post(self, *packets: str) -> int:
        answer = await self._http.post(self._url, data="\x1e".join(packets))
        return answer.status

    async def poll(self) -> int:
        """One long-poll: its packets go to `received`; the HTTP status."""
        answer = await self._http.get(self._url)
        if answer.status == 200:
            for packet in (await answer.text()).split("\x1e"):
                if packet == "2":
                    await self.post("3")
                elif packet:
                    self.received.append(packet)
        return answer.status

    async def poll_until(self, wanted, timeout: float = WAIT_S) -> str:
        """Poll until a packet `wanted(packet)` accepts has arrived; that packet."""

        async def until() -> str:
            seen = 0
            while True:
                for packet in self.received[seen:]:
                    if wanted(packet):
                        return packet
                seen = len(self.received)
                assert await self.poll() == 200, f"closed; got {self.received}"

        return await asyncio.wait_for(until(), timeout)

    async def poll_until_closed(self, timeout: float = WAIT_S) -> int:
        """Poll until the server no longer knows the session; that answer's status."""

        async def until() -> int:
            while (status := await self.poll()) == 200:
                pass
            return status

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"still open after {timeout}s; got {self.received}") from None

    async def close(self) -> None:
        await self._http.close()
