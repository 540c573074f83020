"""The running gateway's parts, reachable from handlers through one app key."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import socketio
from aiohttp import web

from realtime.broadcast import Broadcaster
from realtime.config import Settings
from realtime.mapping import DocumentMapping
from realtime.metrics import Metrics
from realtime.emitter import Emitter
from realtime.sessions import Sessions
from realtime.transport import TransportControl
from storage.base import Store
from storage.changes import ChangeFeed


@dataclasses.dataclass
class Gateway:
    settings: Settings
    store: Store
    sio: socketio.AsyncServer
    emitter: Emitter
    sessions: Sessions
    mapping: DocumentMapping
    feed: ChangeFeed
    broadcaster: Broadcaster
    metrics: Metrics
    transports: TransportControl
    redis: Any = None  # redis.asyncio.Redis when REDIS_URL is set, for readiness checks
    feed_task: Any = None  # the asyncio.Task running `feed`, owned by the app's cleanup context
    started_at: float = dataclasses.field(default_factory=time.time)


GATEWAY = web.AppKey("gateway", Gateway)
