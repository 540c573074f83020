"""HTTP routes and the error middleware: every error body is `{error: {code, message, details?}}`."""

from __future__ import annotations

import logging

from aiohttp import web

from realtime.errors import GatewayError
from realtime.gateway import GATEWAY

logger = logging.getLogger(__name__)

# aiohttp's own refusals, in the catalogue's words
_STATUS_CODES = {
    400: "invalid_payload",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "invalid_payload",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(error: GatewayError) -> web.Response:
    return web.json_response({"error": error.to_dict()}, status=error.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as error:
        logger.info("request refused", extra={"path": request.path, "code": error.code})
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith(request.app[GATEWAY].settings.socketio_path):
            raise
        code = _STATUS_CODES.get(exc.status, "internal" if exc.status >= 500 else "invalid_payload")
        body = {"error": {"code": code, "message": exc.reason.lower()}}
        return web.json_response(body, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        logger.exception("request failed", extra={"path": request.path})
        return error_response(GatewayError("internal"))


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
