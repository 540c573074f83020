"""The running gateway's parts, complete from construction, reachable from handlers through
one app key."""

from __future__ import annotations

import dataclasses
import time

from aiohttp import web

from realtime.auth import TokenVerifier
from realtime.broadcast import Broadcaster
from realtime.bus import EventBus
from realtime.config import Settings
from realtime.emitter import Emitter
from realtime.engine import Engine
from realtime.health import Probe
from realtime.mapping import DocumentMapping
from realtime.metrics import Metrics
from realtime.revocations import Revoker
from realtime.sessions import Sessions
from realtime.tasks import TaskKeeper
from realtime.watcher import Watcher
from storage.base import Store
from storage.feed import ChangeFeed


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


GATEWAY = web.AppKey("gateway", Gateway)
