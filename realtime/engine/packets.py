"""Packets and frames, encoded once.

Replaces python-socketio's JSON module (`FastJson`, handed to it as the packet class's) and,
on the emit path, its `Packet.encode` and python-engineio's per-recipient encoding: an event
is one Socket.IO packet, one Engine.IO packet (`SharedPacket`) and, for WebSocket recipients,
one frame (server frames are unmasked: the same bytes for everyone).

Library internals touched: `engineio.json._safe_int` (how python-engineio reads integers),
`socketio.packet.Packet.json` (the JSON it is given) and `engineio.packet.Packet`'s fields
(`SharedPacket` sets them without its `__init__`; `encode_cache`: an encoding kept for every
recipient); the standard library's `JSONDecoder.scan_once` (JSON read in place).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import engineio.json
import engineio.packet
import orjson
import socketio


class FastJson:
    """The JSON of Socket.IO packets (python-socketio takes a module with these two calls).
    Written by orjson, about ten times faster, or by the standard library where orjson
    refuses (integers beyond 64 bits, keys that are not strings). Read as python-engineio
    reads it: orjson would read a 30-digit integer as a float."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def loads(text: str, **_: Any) -> Any:
        return _DECODER.decode(text)

    @staticmethod
    def loads_from(text: str, start: int) -> Any:
        """`loads(text[start:])` for JSON that starts at `start` with no whitespace before it,
        read in place by the decoder's scanner; what it cannot read whole, `loads` reads (and
        raises what it raises)."""
        try:
            value, end = _SCAN(text, start)
        except (StopIteration, ValueError):
            end = -1
        return value if end == len(text) else _DECODER.decode(text[start:])


# python-engineio's `json.loads` (integers of at most 100 digits), made once rather than per call
_DECODER = json.JSONDecoder(parse_int=engineio.json._safe_int)
_SCAN = _DECODER.scan_once  # (the C scanner forgets what it read after each call)


class GatewayPacket(socketio.packet.Packet):
    json = FastJson


def encode_event(event: str, payload: Any) -> str:
    """A Socket.IO EVENT packet on namespace `/`, as python-socketio's `Packet.encode` spells
    it (without its search for binary attachments, which data events never carry)."""
    return "2" + FastJson.dumps([event, payload])


def websocket_frame(encoded: str | bytes) -> bytes:
    """One unmasked WebSocket frame (FIN set, no extension bits): text for str, binary for
    bytes; what a server sends, the same bytes for every recipient."""
    if isinstance(encoded, str):
        head, body = 0x81, encoded.encode()
    else:
        head, body = 0x82, bytes(encoded)
    size = len(body)
    if size < 126:
        return bytes((head, size)) + body
    if size < 65536:
        return struct.pack("!BBH", head, 126, size) + body
    return struct.pack("!BBQ", head, 127, size) + body


class SharedPacket(engineio.packet.Packet):
    """One Engine.IO MESSAGE encoded once and handed to every recipient: its text goes into
    long-polling answers, its frame (built at the first WebSocket recipient) onto WebSockets."""

    def __init__(self, socketio_packet: str):
        # python-engineio's fields of a text MESSAGE, set without its checks of the data
        self.packet_type = engineio.packet.MESSAGE
        self.data = socketio_packet
        self.binary = False
        self.encode_cache = "4" + socketio_packet
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = websocket_frame(self.encode_cache)
        return self._frame


def ack_packet(ack_id: int, answer: Any) -> SharedPacket:
    """The ACK on namespace `/` of an event with this id, carrying `answer` as its one
    argument (None: none), as python-socketio's `_handle_event_internal` sends it."""
    return SharedPacket(f"3{ack_id}" + FastJson.dumps([] if answer is None else [answer]))


def weight(item: Any) -> int:
    """About what an Engine.IO packet weighs on the wire: its encoded data (text or binary)."""
    data = item.data
    return len(data) + 1 if isinstance(data, (str, bytes, bytearray)) else 1


PING = engineio.packet.Packet(engineio.packet.PING)
NOOP = engineio.packet.Packet(engineio.packet.NOOP)
CLOSE = engineio.packet.Packet(engineio.packet.CLOSE)


class Traffic:
    """The bytes one endpoint's transports carried each way while an Admin UI is on (its stats
    read them): WebSocket frames as on the wire (headers in, before per-message compression)
    and long-polling bodies (HTTP headers out). An integer add per frame, where the engine
    writes or reads it: the library's counts (`sio.instrument()`) see none of those paths."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = self.sent = 0

    def frame_sent(self, data: str | bytes) -> None:
        self.sent += _frame_size(data)

    def frame_received(self, data: str | bytes) -> None:
        self.received += _frame_size(data) + 4  # a client's frames carry a mask


def _frame_size(data: str | bytes) -> int:
    # a str of ASCII (what a str knows of itself) weighs its length: no encoding made
    size = len(data) if type(data) is not str or data.isascii() else len(data.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)
