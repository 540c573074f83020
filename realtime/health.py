"""What /ready and /status report: each dependency's state, and the gateway's figures."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata
from typing import Any

from realtime.wire import iso_timestamp
from realtime.gateway import Gateway

CHECK_TIMEOUT_S = 2.0
OK = "ok"


async def readiness(gateway: Gateway) -> dict[str, str]:
    """`ok`, or what is wrong, for the store, the change watcher and (when used) Redis."""
    checks = {"store": await _check(gateway.store.ping())}
    checks["watcher"] = OK if gateway.feed.running else "not running"
    if gateway.redis is not None:
        checks["redis"] = await _check(gateway.redis.ping())
    return checks


async def _check(probe) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
        return OK
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:  # any failure of the probe is the answer
        return f"down: {str(exc)[:200] or type(exc).__name__}"


def status(gateway: Gateway) -> dict[str, Any]:
    feed = gateway.feed
    return {
        "version": version(),
        "uptimeSeconds": round(time.time() - gateway.started_at, 3),
        "store": gateway.store.describe(),
        **gateway.sessions.counts(),
        "rooms": dict(sorted(gateway.sessions.room_sizes().items())),
        "watcher": {
            "running": feed.running,
            "changesHandled": feed.changes_handled,
            "lagSeconds": {c: round(s, 3) for c, s in sorted(feed.lag_s.items())},
            "lastChangeAt": {c: iso_timestamp(t.timestamp())
                             for c, t in sorted(feed.last_change_at.items())},
        },
        "eventsEmitted": dict(sorted(gateway.emitter.emitted.items())),
    }


def version() -> str:
    try:
        return metadata.version("booking-realtime-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"
