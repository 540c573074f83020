"""Long-polling's lane (`realtime/engine/lane.py`) attacked as a client would: heads aiohttp
refuses, requests split or run together on the wire, clients that close at every point, and
what a connection leaves behind. Each answer is compared with what aiohttp alone answers
(the same app on aiohttp's own runner), or with what the protocol says."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from tests.test_lane import PATH, Http

NOPE = PATH + "&sid=nope"  # a session that does not exist: the lane answers it 400 itself


async def exchange(served, data: bytes, answers: int) -> list:
    """What `served` answers to `data`, written at once: `answers` (status, body, Connection
    header), "closed" in place of those the connection ends before."""
    http = await Http.open(served)
    got: list = []
    try:
        await http.send(data)
        for _ in range(answers):
            try:
                status, headers, body = await http.answer()
            except (asyncio.IncompleteReadError, ConnectionError):
                got.append("closed")
                break
            got.append((status, body, headers.get("connection")))
    finally:
        http.close()
    return got


@pytest.fixture
async def plain(settings):
    """The same app served by aiohttp's own runner: no lane."""
    served = TestServer(create_app(settings))
    await served.start_server()
    yield served
    await served.close()


def raw_get(target: str, *lines: bytes) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\n".encode()
        + b"".join(line + b"\r\n" for line in lines)
        + (b"\r\n")
    )


def raw_post(target: str, body: bytes, *lines: bytes) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\n".encode()
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
        + body
    )


# Heads that read plainly to the lane but that aiohttp's parser has rules for.
ODD_HEADS = {
    "two Host headers": raw_get(NOPE, b"Host: a", b"Host: b"),
    "two User-Agent headers": raw_get(NOPE, b"Host: g", b"User-Agent: a", b"User-Agent: b"),
    "two Content-Type headers on a POST": raw_post(
        NOPE, b"ab", b"Host: g", b"Content-Type: a", b"Content-Type: b", b"Content-Length: 2"
    ),
    "129 headers": raw_get(NOPE, b"Host: g", *(b"X-%d: v" % i for i in range(128))),
    "a header of 9000 bytes": raw_get(NOPE, b"Host: g", b"X-Big: " + b"a" * 9000),
    "a request line of 9000 bytes": raw_get(NOPE + "&t=" + "a" * 9000, b"Host: g"),
    "obs-text in a value": raw_get(NOPE, b"Host: g", b"X-A: caf\xc3\xa9 \xff"),
    "a length with leading zeros": raw_post(NOPE, b"ab", b"Host: g", b"Content-Length: 002"),
    "a length with a sign": raw_post(NOPE, b"ab", b"Host: g", b"Content-Length: +2"),
    "Transfer-Encoding with a space before its colon": raw_post(
        NOPE, b"2\r\nab\r\n0\r\n\r\n", b"Host: g", b"Transfer-Encoding : chunked"
    ),
    "Transfer-Encoding beside a length": raw_post(
        NOPE,
        b"2\r\nab\r\n0\r\n\r\n",
        b"Host: g",
        b"Content-Length: 2",
        b"transfer-encoding: chunked",
    ),
    "a tab before a value": raw_get(NOPE, b"Host:\tg"),
    "DEL in a value": raw_get(NOPE, b"Host: g", b"X-A: a\x7fb"),
    "an empty header name": raw_get(NOPE, b"Host: g", b": v"),
    "a bare CR in a value": raw_get(NOPE, b"Host: g", b"X-A: a\rb"),
    "a lower-case method": f"get {NOPE} HTTP/1.1\r\nHost: g\r\n\r\n".encode(),
    "an empty line first": b"\r\n" + raw_get(NOPE, b"Host: g"),
    "a POST of no body": raw_post(NOPE, b"", b"Host: g", b"Content-Length: 0"),
    "a POST without a length": raw_post(NOPE, b"", b"Host: g"),
    "Connection: keep-alive, close": raw_get(NOPE, b"Host: g", b"Connection: keep-alive, close"),
}


@pytest.mark.parametrize("name", ODD_HEADS)
async def test_heads_are_read_as_aiohttp_reads_them(server, plain, name):
    data = ODD_HEADS[name]
    assert await exchange(server, data, 1) == await exchange(plain, data, 1)
