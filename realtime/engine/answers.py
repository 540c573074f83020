"""The endpoint's HTTP answers, in python-engineio's words, and the environ it keeps.

Replaces python-engineio's request environ (the whole WSGI-style translation of an aiohttp
request, kept for a connection's life) with the few fields that are read: `cors_environ` for
its CORS answers, `connect_environ` for the namespace's `connect`. Its 400s and 429s carry
its CORS headers.

Library internals touched: `AsyncServer._cors_headers`, `_cors_allowed_origins` and
`_unauthorized`.
"""

from __future__ import annotations

from typing import Any

import engineio
from aiohttp import web
from multidict import CIMultiDict

from realtime.engine.packets import FastJson
from realtime.errors import GatewayError
from realtime.limits import TOO_MANY_CONNECTIONS

# in a connection's environ when it opened past its address's rate (`Engine.watch`)
RATE_LIMITED = "gateway.rate_limited"
PAST_ITS_RATE = web.RequestKey("past_its_rate", bool)


def cors_headers(eio: engineio.AsyncServer, request: web.Request) -> dict[str, str]:
    """python-engineio's CORS headers for this request (not to be changed: a lane's request
    shares them with its likes)."""
    worked_out = _worked_out(eio, request)
    if worked_out is None:
        return dict(eio._cors_headers(cors_environ(request)))
    headers = worked_out.get(request.method)
    if headers is None:
        headers = worked_out[request.method] = dict(eio._cors_headers(cors_environ(request)))
    return headers


def bad_request(eio: engineio.AsyncServer, request: web.Request, message: str) -> web.Response:
    """python-engineio's 400 (`_bad_request`), with its CORS headers."""
    return web.Response(
        body=FastJson.dumps(message).encode(),
        status=400,
        headers={"Content-Type": "text/plain", **cors_headers(eio, request)},
    )


async def refuse_and_close(
    eio: engineio.AsyncServer, request: web.Request, message: str
) -> web.Response:
    """400, then the connection closed: what is left of a refused body is not read (aiohttp
    would read it on, and log a body that is not what its encoding says as its own error)."""
    refused = bad_request(eio, request, message)
    refused.force_close()
    if isinstance(request, web.BaseRequest):  # (the lane writes its answers itself)
        await refused.prepare(request)
        await refused.write_eof()
    request.protocol.force_close()
    return refused


def unauthorized(eio: engineio.AsyncServer, request: web.Request, refusal: Any) -> web.Response:
    """python-engineio's 401 for a handshake its connect handler refused (`_unauthorized`, as
    its `_make_response` answers it), with its CORS headers."""
    answer = eio._unauthorized(refusal or None)
    return web.Response(
        body=answer["response"],
        status=int(answer["status"].split()[0]),
        headers=CIMultiDict(answer["headers"] + list(cors_headers(eio, request).items())),
    )


def turned_away(eio: engineio.AsyncServer, request: web.Request) -> web.Response:
    """429 for a connection past twice its address's rate, before it opens."""
    error = GatewayError("rate_limited", TOO_MANY_CONNECTIONS)
    return web.json_response(
        {"error": error.to_dict()},
        status=429,
        headers={"Retry-After": "1", **cors_headers(eio, request)},
    )


def origin_allowed(eio: engineio.AsyncServer, request: web.Request) -> bool:
    """python-engineio's check of a browser's Origin (same origin only, by default)."""
    origin = request.headers.get("Origin")
    if not origin or eio.cors_allowed_origins == []:
        return True
    worked_out = _worked_out(eio, request)
    if worked_out is not None and (allowed := worked_out.get(ORIGIN_ALLOWED)) is not None:
        return allowed
    allowed = eio._cors_allowed_origins(cors_environ(request))
    allowed = allowed is None or origin in allowed
    if worked_out is not None:
        worked_out[ORIGIN_ALLOWED] = allowed
    return allowed


ORIGIN_ALLOWED = 0  # (`_worked_out`'s other keys are methods)


def _worked_out(eio: engineio.AsyncServer, request: web.Request) -> dict[Any, Any] | None:
    """What this server worked out from a lane request's header fields, for every request
    that repeats them (`LaneRequest.derived`, by a weak reference: the fields are kept
    process-wide, their servers may come and go); None for aiohttp's requests, and where the
    allowed origins are asked of a function (it may answer otherwise each time). Worked out
    afresh when the server is given other origins (a list changed in place goes unseen)."""
    derived = getattr(request, "derived", None)
    if derived is None or callable(origins := eio.cors_allowed_origins):
        return None
    settings = (origins, eio.cors_credentials)
    worked_out = derived.get(eio)
    if worked_out is None or worked_out[0][0] is not origins or worked_out[0] != settings:
        worked_out = derived[eio] = (settings, {})
    return worked_out[1]


def cors_environ(request: web.Request) -> dict[str, str]:
    """What python-engineio's CORS answer (`_cors_headers`) reads of a request's environ."""
    environ = {
        "REQUEST_METHOD": request.method,
        "wsgi.url_scheme": request.headers.get("X-Forwarded-Proto", "http"),
    }
    for header in (
        "Host",
        "Origin",
        "Access-Control-Request-Headers",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    ):
        values = request.headers.getall(header, ())
        if values:  # repeated headers joined, as python-engineio's driver joins them
            environ["HTTP_" + header.upper().replace("-", "_")] = ",".join(values)
    return environ


def connect_environ(request: web.Request) -> dict[str, str]:
    """The WSGI-style environ python-socketio keeps for each connection (and hands the
    namespace's `connect`): a few fields of the request that opened it, not the request (and
    its headers) itself. REMOTE_ADDR is the TCP peer (python-engineio's driver says
    127.0.0.1)."""
    environ = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query_string,
        "REMOTE_ADDR": request.remote or "",
    }
    for header in ("Origin", "User-Agent", "X-Forwarded-For"):
        values = request.headers.getall(header, None)
        if values:
            # every line: a proxy may add its own X-Forwarded-For beside the client's
            environ["HTTP_" + header.upper().replace("-", "_")] = ",".join(values)
    if request.get(PAST_ITS_RATE):
        environ[RATE_LIMITED] = "1"
    return environ
