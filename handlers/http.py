"""HTTP routes and the error middleware: every error body is
`{error: {code, message, details?}}`."""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp_cors
from aiohttp import web
from prometheus_client import Counter

from realtime.errors import GatewayError, answer_for
from realtime.gateway import GATEWAY
from realtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from realtime.ops import health

logger = logging.getLogger(__name__)

# aiohttp's own refusals, in the catalogue's words (`GatewayError` refuses a code it lacks)
_STATUS_CODES = {
    400: "invalid_payload",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
IDEMPOTENCY_KEY_MAX = 200
# on an answer that an earlier call with the same Idempotency-Key got first (nothing emitted)
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
# the routes whose answers are counted by status (`setup_routes` says which)
COUNTED_BY_STATUS = web.AppKey("counted_by_status", dict[str, Counter])


def error_response(error: GatewayError) -> web.Response:
    return web.json_response({"error": error.to_dict()}, status=error.http_status)


@web.middleware
def error_middleware(request: web.Request, handler) -> Awaitable[web.StreamResponse]:
    # Not a coroutine: a Socket.IO request (a WebSocket lasts as long as its connection) is
    # handed on without a frame of this middleware kept for its life; python-engineio answers
    # its own errors.
    if request.path.startswith(request.app[GATEWAY].settings.socketio_path):
        return handler(request)
    return _answered(request, handler)


async def _answered(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _refusal(request, exc)
    except Exception as exc:
        response = error_response(answer_for(exc, "request", logger, path=request.path))
    counted = request.app.get(COUNTED_BY_STATUS, {}).get(request.path)
    if counted is not None:  # every answer, the refusals this middleware writes included
        counted.labels(str(response.status)).inc()
    logger.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return response


def _refusal(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (no such route, a method the route does not take, ...) as a
    catalogue error, with its status and its `Allow` header."""
    code = _STATUS_CODES.get(exc.status, "internal" if exc.status >= 500 else "invalid_payload")
    allow = exc.headers.get("Allow")
    if exc.status == 405 and allow:
        message = f"{request.method[:16]} is not allowed on {request.path}; use {allow}"
    else:
        message = (exc.reason or code).lower()
    error = GatewayError(code, message)
    return web.json_response(
        {"error": error.to_dict()},
        status=exc.status,
        headers={"Allow": allow} if allow is not None else None,
    )


def json_body(raw: bytes, charset: str | None) -> Any:
    """A request body as JSON: numbers finite (clients cannot read NaN or Infinity), nesting
    and digits within what Python reads; otherwise a coded refusal, never a crash."""
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError:
        raise GatewayError(
            "unsupported_media_type", f"unknown charset {str(charset)[:40]!r}"
        ) from None
    except UnicodeDecodeError as exc:
        raise GatewayError(
            "invalid_payload", f"the body is not {charset or 'utf-8'}: {exc}"
        ) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise GatewayError("invalid_payload", "the body is nested too deeply") from None
    except ValueError as exc:  # invalid JSON, NaN/Infinity, an integer of too many digits
        raise GatewayError("invalid_payload", f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON clients can read")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise ValueError(f"{text[:40]} is beyond what a JSON client can read")
    return value


def require_service_token(request: web.Request) -> None:
    """Bearer BROADCAST_TOKEN, compared in constant time; no token configured: 403 for all."""
    expected = request.app[GATEWAY].settings.broadcast_token
    if expected is None:
        raise GatewayError("forbidden", "no BROADCAST_TOKEN is configured on this gateway")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise GatewayError("unauthenticated", "a valid bearer token is required")


async def service_body(request: web.Request) -> Any:
    """A service's call: its bearer token checked, then its JSON body."""
    require_service_token(request)
    if request.content_type != "application/json":
        raise GatewayError("unsupported_media_type")
    return json_body(await request.read(), request.charset)


async def broadcast(request: web.Request) -> web.Response:
    """Push a service's event to rooms and users."""
    body = await service_body(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX and key.isprintable()):
        raise GatewayError(
            "invalid_payload",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters",
        )
    answer = await request.app[GATEWAY].broadcaster.answer(body, key)
    headers = {IDEMPOTENT_REPLAYED: "true"} if answer.replayed else None
    return web.json_response(answer.body, status=202, headers=headers)


async def disconnect(request: web.Request) -> web.Response:
    """Cut users' and sockets' connections, on every instance."""
    result = await request.app[GATEWAY].revoker.disconnect(await service_body(request))
    return web.json_response(result, status=202)


async def revoke(request: web.Request) -> web.Response:
    """Refuse a token (jti) or a user's tokens (sub) until a time, on every instance."""
    result = await request.app[GATEWAY].revoker.revoke(await service_body(request))
    return web.json_response(result, status=202)


async def health_check(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the store, the change watcher and Redis (when used) all answer."""
    checks = await health.readiness(request.app[GATEWAY].probes)
    down = sorted(name for name, state in checks.items() if state != health.OK)
    if down:
        error = GatewayError("unavailable", f"not ready: {', '.join(down)}", details=checks)
        return error_response(error)
    return web.json_response({"status": "ready", "checks": checks})


async def status(request: web.Request) -> web.Response:
    """Operators' view: connections, users, rooms, watcher lag."""
    require_service_token(request)
    return web.json_response(request.app[GATEWAY].status())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def setup_routes(app: web.Application, cors_origins: tuple[str, ...]) -> None:
    app[COUNTED_BY_STATUS] = {"/broadcast": app[GATEWAY].metrics.broadcast_requests}
    routes = [
        app.router.add_post("/broadcast", broadcast),
        app.router.add_post("/disconnect", disconnect),
        app.router.add_post("/revoke", revoke),
        app.router.add_get("/health", health_check),
        app.router.add_get("/ready", ready),
        app.router.add_get("/status", status),
        app.router.add_get("/metrics", metrics),
    ]
    if cors_origins:
        # only these routes: the Socket.IO route does its own CORS (cors_allowed_origins)
        cors = aiohttp_cors.setup(
            app,
            defaults={
                origin: aiohttp_cors.ResourceOptions(
                    allow_headers=("Authorization", "Content-Type", "Idempotency-Key"),
                    allow_methods=("GET", "POST"),
                    expose_headers=(IDEMPOTENT_REPLAYED,),
                    max_age=3600,
                )
                for origin in cors_origins
            },
        )
        for route in routes:
            cors.add(route)
