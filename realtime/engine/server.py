"""`create_engine(settings)`: python-socketio's server with every adjustment installed.

Chooses what python-socketio is given: `GatewayServer` (dispatch), the packet class that
writes JSON with orjson, a client manager that indexes rooms (the Redis one with REDIS_URL),
a socket's events handled one at a time, in order; then the engine around it, and the Admin
UI's namespace (with its credentials check) when settings turn it on.

Library internals touched: none.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from realtime.config import Settings
from realtime.engine.admin import AdminReport, AdminView
from realtime.engine.dispatch import GatewayServer
from realtime.engine.facade import Engine
from realtime.engine.membership import client_manager
from realtime.engine.packets import GatewayPacket
from realtime.limits import Bounds
from realtime.tasks import TaskKeeper


def create_engine(
    settings: Settings, tasks: TaskKeeper, admin_view: AdminView | None = None
) -> Engine:
    """The Socket.IO server and its engine; the Admin UI's namespace too when settings turn
    it on (`admin_view`: what it is shown)."""
    sio = GatewayServer(
        async_mode="aiohttp",
        client_manager=client_manager(settings.redis_url),
        serializer=GatewayPacket,
        # Events of one socket are handled in arrival order: `authenticate` then `join_room`
        # never race.
        async_handlers=False,
        # None: same origin only (clients that send no Origin, like mobile SDKs, pass)
        cors_allowed_origins=list(settings.cors_origins) or None,
        max_http_buffer_size=settings.max_payload_bytes,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        logger=False,
        engineio_logger=False,
    )
    engine = Engine(
        sio,
        settings.ws_compression,
        Bounds(settings.client_backlog_max, settings.client_backlog_max_bytes),
        tasks,
        settings.connect_timeout_s,
    )
    if settings.admin_ui_username is not None and settings.admin_ui_password is not None:
        if admin_view is None:
            raise ValueError("the Admin UI needs a view of the gateway's events")
        admin = AdminReport(
            sio,
            credentials_check(settings.admin_ui_username, settings.admin_ui_password),
            settings.admin_ui_read_only,
            tasks,
            admin_view,
        )
        engine.report_to(admin)
    return engine


def credentials_check(username: str, password: str) -> Callable[[Any], bool]:
    """Whether an Admin UI login's `auth` holds these credentials: both compared, in constant
    time (the answer says nothing of which was wrong)."""
    expected = (username.encode(), password.encode())

    def authorised(auth: Any) -> bool:
        if not isinstance(auth, dict):
            return False
        given = (auth.get("username"), auth.get("password"))
        if not all(isinstance(part, str) for part in given):
            return False
        matches = [hmac.compare_digest(g.encode(), e) for g, e in zip(given, expected, strict=True)]
        return all(matches)

    return authorised
