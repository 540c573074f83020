"""Structured one-line JSON logs: a fixed lowercase message, the data in fields."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the libraries' own per-packet logs are too chatty for anything but debugging
    for name in ("engineio", "socketio", "aiohttp.access"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
