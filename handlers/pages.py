"""The pages people open in a browser: the live test page (`TEST_PAGE`) and the Socket.IO Admin
UI (`ADMIN_UI_USERNAME`), both served from files inside the package, so they work offline.

Only the files listed here are served: no directory is exposed to a request's path. A page
that is off answers its address with a coded 404 saying how to turn it on.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import urllib.parse

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

from handlers.http import json_body
from handlers.web_assets import ADMIN_UI_DIR, STATIC_DIR
from realtime.access.auth import ROLES, issue_token
from realtime.config import Settings
from realtime.errors import GatewayError
from realtime.gateway import GATEWAY

TEST_PAGE_PATH = "/websocket-test"
ADMIN_UI_PATH = "/admin-ui/"
# the test page's own files, and the client library it runs (clients/js, linked in)
TEST_PAGE_FILES = (
    "websocket-test.js",
    "websocket-test.css",
    "gateway-client.js",
    "vendor/socket.io.esm.min.js",
)
DEV_TOKEN_TTL_S = 3600
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # a link to the page may carry a token in its query: never send it on
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DevTokenSchema(Schema):
    sub = fields.String(required=True, validate=validate.Length(min=1, max=200))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    shopIds = fields.List(  # the wire's camelCase
        fields.String(validate=validate.Length(min=1, max=200)),
        load_default=list,
        validate=validate.Length(max=100),
    )


class StaticFile:
    """One file, read once, answered with its type and the page headers."""

    def __init__(self, path: str, replace: dict[str, str] | None = None):
        with open(path, "rb") as handle:  # at start-up, not on the event loop's time
            body = handle.read()
        for marker, value in (replace or {}).items():
            body = body.replace(marker.encode(), value.encode())
        self._body = body
        content_type, _ = mimetypes.guess_type(path)
        if path.endswith((".js", ".mjs")):
            content_type = "text/javascript"
        self._content_type = content_type or "application/octet-stream"

    async def answer(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._body, headers=_HEADERS)
        response.content_type = self._content_type
        if self._content_type.startswith("text/"):
            response.charset = "utf-8"
        return response


# what a page that is off answers instead of a bare 404: how to turn it on
TEST_PAGE_OFF = (
    "the live test page is off on this gateway: set TEST_PAGE=true to serve it (it is on by "
    "default with the embedded store, off with MONGODB_URL)"
)
ADMIN_UI_OFF = (
    "the Admin UI is off on this gateway: set ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD to serve "
    "it, or start a demo with `python -m realtime --demo`, which makes a login"
)


def setup_pages(app: web.Application, settings: Settings) -> None:
    if settings.serves_test_page:
        _add_test_page(app, settings)
    else:
        _add_hint(app, (TEST_PAGE_PATH, TEST_PAGE_PATH + "/"), TEST_PAGE_OFF)
    if settings.admin_ui:
        _add_admin_ui(app, settings)
    else:
        _add_hint(app, (ADMIN_UI_PATH, ADMIN_UI_PATH.rstrip("/")), ADMIN_UI_OFF)


def _add_hint(app: web.Application, paths: tuple[str, ...], message: str) -> None:
    """The page's own addresses answer a coded 404 saying how to turn it on; its files stay
    unserved."""

    async def hint(request: web.Request) -> web.Response:
        raise GatewayError("not_found", message)

    for path in paths:
        app.router.add_get(path, hint)


def _add_test_page(app: web.Application, settings: Settings) -> None:
    page_config = {
        "socketioPath": "/" + settings.socketio_path.strip("/") + "/",
        "devTokens": settings.issues_dev_tokens,
        "devBroadcastToken": settings.broadcast_token_generated,
        "broadcastEvents": sorted(app[GATEWAY].broadcaster.allowed_events),
        # to read the connected token's shops (the gateway's answers do not list them)
        "claims": {
            "userId": settings.jwt_claim_user_id,
            "role": settings.jwt_claim_role,
            "shopIds": settings.jwt_claim_shop_ids,
        },
    }
    # `</` cannot end the script element the configuration sits in
    config_json = json.dumps(page_config).replace("</", "<\\/")
    page = StaticFile(
        os.path.join(STATIC_DIR, "websocket-test.html"), {"{{PAGE_CONFIG}}": config_json}
    )
    app.router.add_get(TEST_PAGE_PATH, page.answer)
    app.router.add_get(TEST_PAGE_PATH + "/", page.answer)
    for name in TEST_PAGE_FILES:
        app.router.add_get(
            f"{TEST_PAGE_PATH}/{name}", StaticFile(os.path.join(STATIC_DIR, name)).answer
        )
    if settings.issues_dev_tokens:
        app.router.add_post(f"{TEST_PAGE_PATH}/dev-token", _dev_token)
    if settings.broadcast_token_generated:
        app.router.add_post(f"{TEST_PAGE_PATH}/dev-broadcast-token", _dev_broadcast_token)


async def _dev_token(request: web.Request) -> web.Response:
    """A token signed with the embedded store's development secret, for the test page's
    "dev token" button: answered only to a browser on this machine."""
    if not _from_this_machine(request):
        raise GatewayError("forbidden", "dev tokens are issued only to a browser on this machine")
    if request.content_type != "application/json":
        raise GatewayError("unsupported_media_type")
    body = json_body(await request.read(), request.charset)
    try:
        wanted = DevTokenSchema().load(body if isinstance(body, dict) else {"": body})
    except ValidationError as exc:
        raise GatewayError(
            "invalid_payload", "the dev token request is invalid", details=exc.messages
        ) from None
    settings = request.app[GATEWAY].settings
    token = issue_token(
        settings, wanted["sub"], wanted["role"], wanted["shopIds"], ttl_s=DEV_TOKEN_TTL_S
    )
    return web.json_response({"token": token, "expiresIn": DEV_TOKEN_TTL_S})


async def _dev_broadcast_token(request: web.Request) -> web.Response:
    """The BROADCAST_TOKEN `--demo` made, for the test page's broadcast box: answered only to a
    browser on this machine (the route exists only with a demo-made token)."""
    if not _from_this_machine(request):
        raise GatewayError(
            "forbidden", "the demo's broadcast token is given only to a browser on this machine"
        )
    token = request.app[GATEWAY].settings.broadcast_token
    return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})


def _from_this_machine(request: web.Request) -> bool:
    """A loopback peer, not forwarded by a proxy (which would make anyone a loopback peer),
    asking for a loopback host (a page of another site whose name was rebound to 127.0.0.1
    asks with its own)."""
    if any(header in request.headers for header in _FORWARDING_HEADERS):
        return False
    host = urllib.parse.urlsplit("//" + request.headers.get("Host", "")).hostname or ""
    return _is_loopback(request.remote or "") and (host == "localhost" or _is_loopback(host))


_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _add_admin_ui(app: web.Application, settings: Settings) -> None:
    # the UI asks for the server's URL: offer this gateway, on its Socket.IO path
    path = "/" + settings.socketio_path.strip("/")
    # read-only here: the UI's own read-only switch on from the start, so that its join form
    # is disabled rather than sending orders that are refused (the UI reads it as it loads)
    read_only = "localStorage.setItem('readonly','true');" if settings.admin_ui_read_only else ""
    preset = (
        "<script>try{if(!localStorage.getItem('server_url'))"
        "localStorage.setItem('server_url',location.origin);"
        f"if(!localStorage.getItem('path'))localStorage.setItem('path',{json.dumps(path)});"
        f"{read_only}}}catch(e){{}}</script><title>"
    )
    index = StaticFile(os.path.join(ADMIN_UI_DIR, "index.html"), {"<title>": preset})
    app.router.add_get(ADMIN_UI_PATH, index.answer)
    app.router.add_get(ADMIN_UI_PATH.rstrip("/"), _to_admin_ui)
    for directory, _, names in os.walk(ADMIN_UI_DIR):
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), ADMIN_UI_DIR)
            if relative != "index.html":
                handler = StaticFile(os.path.join(ADMIN_UI_DIR, relative)).answer
                app.router.add_get(ADMIN_UI_PATH + relative.replace(os.sep, "/"), handler)


async def _to_admin_ui(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(ADMIN_UI_PATH)
