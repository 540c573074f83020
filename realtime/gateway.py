"""The running gateway's parts, complete from construction, reachable from handlers through
one app key."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp import web

from realtime.access.auth import TokenVerifier
from realtime.access.sessions import Sessions
from realtime.changes.feed import ChangeFeed
from realtime.changes.mapping import DocumentMapping
from realtime.changes.watcher import Watcher
from realtime.config import Settings
from realtime.delivery.bus import EventBus
from realtime.delivery.emitter import Emitter
from realtime.engine import Engine
from realtime.metrics import Metrics
from realtime.ops import health
from realtime.ops.broadcast import Broadcaster
from realtime.ops.health import Probe
from realtime.ops.revoker import Revoker
from realtime.tasks import TaskKeeper
from realtime.wire import iso_timestamp
from storage.base import Store


@dataclasses.dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: Store
    engine: Engine  # python-socketio's server, adjusted: sockets, rooms, transports
    emitter: Emitter
    sessions: Sessions
    verifier: TokenVerifier
    mapping: DocumentMapping
    feed: ChangeFeed
    watcher: Watcher  # runs the feed while this instance holds the watcher lease
    bus: EventBus | None  # with REDIS_URL: events between instances
    broadcaster: Broadcaster
    revoker: Revoker  # POST /disconnect and /revoke, and what the bus brings of them
    metrics: Metrics
    probes: tuple[Probe, ...]  # what /ready checks, in order
    tasks: TaskKeeper  # every background task but the feed's own
    started_at: float = dataclasses.field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        """The figures of /status: small at any scale (rooms are counted, and only the
        largest `STATUS_ROOMS_MAX` are named)."""
        feed, watcher = self.feed, self.watcher
        room_count, room_members, largest = self.engine.room_figures(self.settings.status_rooms_max)
        return {
            "version": health.version(),
            "uptimeSeconds": round(time.time() - self.started_at, 3),
            "store": self.store.describe(),
            **self.sessions.counts(),
            "roomCount": room_count,
            "roomMembers": room_members,
            "rooms": largest,
            # every task of the event loop, this one included: back to its baseline once
            # what came and went (connections, joins, requests) is gone
            "tasks": len(asyncio.all_tasks()),
            "instance": watcher.instance_id,
            "watcher": {
                "running": feed.running,
                **health.lease_figures(watcher.lease, watcher.instance_id),
                "changesHandled": feed.changes_handled,
                "lagSeconds": {c: round(s, 3) for c, s in sorted(feed.lag_s.items())},
                "lastChangeAt": {
                    c: iso_timestamp(t.timestamp()) for c, t in sorted(feed.last_change_at.items())
                },
            },
            "eventsEmitted": dict(sorted(self.emitter.emitted.items())),
        }


GATEWAY = web.AppKey("gateway", Gateway)
