"""What /ready checks: named readiness probes, each a dependency of the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from realtime.changes.watcher import Watcher
from realtime.delivery.bus import EventBus
from realtime.wire import iso_timestamp
from storage.base import Lease, Store

CHECK_TIMEOUT_S = 2.0
OK = "ok"


class NotReady(Exception):
    """A probe's answer when its dependency is not ready; the message says why."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One dependency /ready checks: `check()` returns when it is ready, raises otherwise.
    A probe with a connection of its own releases it in `close()`."""

    name: str
    check: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]] | None = None


def store_probe(store: Store) -> Probe:
    return Probe("store", store.ping)


def watcher_probe(watcher: Watcher) -> Probe:
    """Ready when the watcher runs here or another live instance holds its lease."""

    async def check() -> None:
        if not (watcher.held_here or watcher.held_elsewhere):
            raise NotReady("not running here, and no other instance holds the lease")

    return Probe("watcher", check)


def redis_probe(url: str, bus: EventBus | None = None) -> Probe:
    """Pings Redis on a connection of its own, and asks whether this instance still hears its
    own heartbeat on the bus."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    async def check() -> None:
        await client.ping()
        if bus is not None and bus.deaf:
            raise NotReady("subscribed, but not hearing this instance's heartbeat")

    return Probe("redis", check, close=client.aclose)


async def readiness(probes: tuple[Probe, ...]) -> dict[str, str]:
    """`ok`, or what is wrong, for each probe."""
    answers = await asyncio.gather(*(_check(probe) for probe in probes))
    return {probe.name: answer for probe, answer in zip(probes, answers, strict=True)}


async def _check(probe: Probe) -> str:
    try:
        await asyncio.wait_for(probe.check(), CHECK_TIMEOUT_S)
        return OK
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except NotReady as reason:
        return str(reason)
    except Exception as exc:  # any failure of the probe is the answer
        return f"down: {str(exc)[:200] or type(exc).__name__}"


def lease_figures(lease: Lease | None, instance_id: str) -> dict[str, Any]:
    if lease is None:
        return {"holder": None, "heldHere": False, "since": None, "fence": None, "expires": None}
    return {
        "holder": lease.holder,
        "heldHere": lease.holder == instance_id,
        "since": iso_timestamp(lease.since_ms / 1000),
        "fence": lease.fence,
        "expires": iso_timestamp(lease.expires_ms / 1000),
    }


def version() -> str:
    try:
        return metadata.version("booking-realtime-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"
