"""The lane's HTTP/1.1 (`lane.py`): a request's head read strictly, an answer written whole.

A request is the lane's only when its head reads plainly: the request line `GET` or `POST`,
an endpoint's path, `HTTP/1.1`; every header line `name: value` (no folding, no control
characters) within aiohttp's bounds (8190 bytes a line, 128 headers), none of those that may
be there once (`SINGLETON_HEADERS`) twice; no Upgrade, Expect, Transfer-Encoding or
Content-Encoding; a body only on a POST, and then by exactly one Content-Length. Anything
else is aiohttp's to read (its parser, llhttp, refuses what it must): where a request ends is
never guessed here.

Library internals touched: aiohttp's `http_parser.SINGLETON_HEADERS` (read).
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

HEAD_LIMIT = 16 * 1024  # a head not ended by then is aiohttp's to refuse
INCOMPLETE, AIOHTTPS = True, False  # `read_request`: wait for more bytes; hand it over
# (aiohttp's parser refuses a target, a header line past 8190 bytes, more than 128 headers)
_REQUEST_LINE = re.compile(rb"(GET|POST) (/[\x21-\x7e]{0,8189}) HTTP/1\.1")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_LINES = re.compile(
    rb"(?:(?=[^\r]{0,8190}\r)" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n){0,128}"
)
# (a value's trailing blanks are stripped after: a lazy value before them read in n^2 steps)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
# what aiohttp reads itself (bodies it inflates or delimits by chunks, upgrades, 100-continue)
_AIOHTTP_HEADERS = ("Transfer-Encoding", "Content-Encoding", "Upgrade", "Expect")
_WRITTEN_HERE = frozenset({"content-length", "connection", "date", "server"})


class LaneRequest(dict):
    """What the endpoint reads of a request (aiohttp's `web.Request` has all of it, and costs
    more than the rest of a poll's answer); the mapping holds what the endpoint marks on it."""

    __slots__ = (
        "closes",  # whether it asked for the connection to close after its answer
        "content",
        "content_length",
        "derived",  # what is worked out from its header fields alone, shared by their likes
        "headers",
        "method",
        "path",
        "protocol",
        "query",
        "query_string",
        "remote",
        "transport",
    )


class Body:
    """A request's body (`request.content`), read as it arrives: `feed` takes its bytes, `read`
    gives them; it ends at its length, or with an error when the connection is lost first."""

    __slots__ = ("_chunks", "_failed", "_waiter", "left")

    def __init__(self, length: int):
        self._chunks: list[bytes] = []
        self.left = length  # bytes still to come
        self._waiter: asyncio.Future | None = None
        self._failed = False

    def feed(self, data: bytes) -> bytes:
        """Take what of `data` is the body's; the rest (what follows the request)."""
        part, rest = data[: self.left], data[self.left :]
        if part:
            self.left -= len(part)
            self._chunks.append(part)
            self._wake()
        return rest

    def fail(self) -> None:
        self._failed = True
        self._wake()

    async def read(self, n: int = -1) -> bytes:
        while not self._chunks and self.left and not self._failed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._chunks:
            chunks, self._chunks = self._chunks, []
            return b"".join(chunks)
        if self._failed and self.left:
            raise ConnectionResetError("the connection was lost before the body's end")
        return b""

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


_NO_BODY = Body(0)  # a GET's


def read_request(
    data: bytes, lanes: dict[bytes, Any], scanned: int = 0
) -> tuple[Any, LaneRequest, int] | bool:
    """The request `data` starts with, if it is a lane's: (the endpoint of its path, the
    request, where it ends in `data`: its body may be on its way, `request.content.left`);
    `INCOMPLETE` while its head has not all arrived; `AIOHTTPS` when it is not a lane's.
    `scanned`: how much of `data` was `INCOMPLETE` before (a head trickled in a byte at a
    time is not searched again from its start for each: that took 0.35 s of CPU for 16 KB)."""
    end = data.find(b"\r\n\r\n", max(0, scanned - 3), HEAD_LIMIT)
    if end == -1:
        if len(data) >= HEAD_LIMIT or data.count(b"\n", scanned) != data.count(
            b"\r\n", max(0, scanned - 1)
        ):
            return AIOHTTPS  # (a line ended by a bare LF: aiohttp refuses it at once)
        return INCOMPLETE
    line_end = data.find(b"\r\n", 0, end + 2)
    first = _REQUEST_LINE.fullmatch(data, 0, line_end)
    if first is None:
        return AIOHTTPS
    method, target = first.groups()
    path, _, query_string = target.partition(b"?")
    endpoint = lanes.get(path)
    if endpoint is None or b"#" in query_string:
        return AIOHTTPS
    fields = data[line_end + 2 : end + 2]
    head = _heads.get(fields) or _read_head(fields)
    if head is None:
        return AIOHTTPS
    lengths, length = head.lengths, 0
    if method == b"POST":
        if len(lengths) != 1 or not (lengths[0].isascii() and lengths[0].isdecimal()):
            return AIOHTTPS
        # (refused there, and the rest of it left unread; past 4300 digits `int` raises)
        if len(lengths[0]) > 18 or (length := int(lengths[0])) > endpoint.max_body:
            return AIOHTTPS
    elif lengths:
        return AIOHTTPS
    request = LaneRequest()
    request.method = method.decode()
    request.path = path.decode()
    request.query_string = query_string.decode()
    request.query = MultiDictProxy(MultiDict(_query(request.query_string)))
    request.headers = head.headers
    request.derived = head.derived
    request.closes = head.closes
    if method == b"POST":
        request.content_length = length
        request.content = Body(length)  # (the rest of it, if any, fed as it arrives)
        request.content.feed(data[end + 4 : end + 4 + length])
    else:
        request.content_length, request.content = None, _NO_BODY
    return endpoint, request, min(len(data), end + 4 + length)


class _Head:
    """A request's header fields as read, and what is worked out from them alone."""

    __slots__ = ("closes", "derived", "headers", "lengths")

    def __init__(self, headers: CIMultiDict[str]):
        self.headers = CIMultiDictProxy(headers)
        self.lengths = tuple(headers.getall("Content-Length", ()))
        self.closes = "Connection" in headers and "close" in [  # (in any of its lines)
            token.strip() for token in ",".join(headers.getall("Connection")).lower().split(",")
        ]
        # (`LaneRequest.derived`: by server, each forgotten with it)
        self.derived: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# A client's polls repeat their header fields byte for byte, and clients of one app much
# alike: each block is read once (a browser's took 10 us of a poll's ~80), kept while few.
_heads: dict[bytes, _Head] = {}
HEADS_KEPT, HEAD_KEPT_LIMIT = 512, 4096


def _read_head(fields: bytes) -> _Head | None:
    """The head of these header field lines (each ended by CRLF), or None when it is not a
    lane's."""
    if _FIELD_LINES.fullmatch(fields) is None:
        return None
    found = _FIELD.findall(fields)
    headers: CIMultiDict[str] = CIMultiDict(
        (name.decode(), value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
        for name, value in found
    )
    if len({name.lower() for name, _ in found}) < len(found) and any(
        len(headers.getall(name, ())) > 1 for name in SINGLETON_HEADERS
    ):
        return None  # (a header twice that may be there once: aiohttp refuses it)
    if any(name in headers for name in _AIOHTTP_HEADERS):
        return None
    head = _Head(headers)
    if len(fields) <= HEAD_KEPT_LIMIT:
        if len(_heads) >= HEADS_KEPT:
            del _heads[next(iter(_heads))]  # (the oldest)
        _heads[fields] = head
    return head


def answer_bytes(response: web.StreamResponse | tuple[bytes, dict[str, str]], close: bool) -> bytes:
    """An answer of the endpoint's (a `web.Response` whose body is bytes, or a poll's 200 as
    its body and headers) as it goes out: its status and headers, the ones aiohttp adds (Date,
    Server) and its body, in one piece."""
    if type(response) is tuple:
        (body, headers), head = response, ["HTTP/1.1 200 OK\r\n"]
    else:
        body, headers = response.body, response.headers  # type: ignore[union-attr]
        head = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]  # type: ignore[union-attr]
    for name, value in headers.items():
        if name.lower() not in _WRITTEN_HERE:
            head.append(f"{name}: {value}\r\n")
    head.append(
        f"Content-Length: {len(body)}\r\nDate: {_date()}\r\nServer: {SERVER_SOFTWARE}\r\n"
        + ("Connection: close\r\n\r\n" if close else "\r\n")
    )
    return "".join(head).encode("utf-8", "surrogateescape") + body


def failed() -> web.Response:
    """aiohttp's answer to a handler that failed (the connection is closed after it)."""
    return web.Response(status=500, text="500 Internal Server Error")


def _query(query_string: str) -> list[tuple[str, str]]:
    """The query's fields, as aiohttp (yarl) reads them: `+` a space, %-escapes decoded."""
    fields = []
    for field in query_string.split("&"):
        if field:
            name, _, value = field.partition("=")
            if "%" in field or "+" in field:
                name, value = unquote_plus(name), unquote_plus(value)
            fields.append((name, value))
    return fields


_dated = [0, ""]  # the Date header, made once a second


def _date() -> str:
    now = int(time.time())
    if _dated[0] != now:
        _dated[:] = [now, formatdate(now, usegmt=True)]
    return _dated[1]
