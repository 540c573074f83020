"""The pages people open in a browser: the live test page and the Socket.IO Admin UI, both
served from files inside the package, so they work offline."""

from __future__ import annotations

from aiohttp import web

from realtime.config import Settings


def setup_pages(app: web.Application, settings: Settings) -> None:
    pass
