"""`create_app(settings)`: the one place where the parts are chosen and wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import socketio
from aiohttp import web

from handlers.http import error_middleware, setup_routes
from handlers.socket import GatewayNamespace
from realtime.auth import TokenVerifier
from realtime.broadcast import Broadcaster
from realtime.config import Settings
from realtime.gateway import GATEWAY, Gateway
from realtime.mapping import DocumentMapping, StoreReservations
from realtime.metrics import Metrics
from realtime.emitter import Emitter
from realtime.publisher import ChangePublisher
from realtime.rooms import RoomPolicy
from realtime.sessions import Sessions
from realtime.transport import TransportControl
from storage.base import Store, StoreError
from storage.changes import ChangeFeed

logger = logging.getLogger(__name__)


def make_store(settings: Settings) -> Store:
    """The configured store, not yet opened."""
    if settings.uses_mongodb:
        from storage.mongo import MongoStore

        return MongoStore(settings.mongodb_url, settings.mongodb_db, settings.event_retention_s)
    from storage.sqlite import SqliteStore

    return SqliteStore(settings.store_path, poll_ms=settings.watcher_poll_ms,
                       retention_s=settings.event_retention_s)


def make_socketio_server(settings: Settings) -> tuple[socketio.AsyncServer, TransportControl]:
    client_manager = None
    if settings.redis_url:
        client_manager = socketio.AsyncRedisManager(settings.redis_url)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        # Events of one socket are handled in arrival order: `authenticate` then `join_room`
        # never race.
        async_handlers=False,
        # None: same origin only (clients that send no Origin, like mobile SDKs, pass)
        cors_allowed_origins=list(settings.cors_origins) or None,
        max_http_buffer_size=settings.max_payload_bytes,
        logger=False,
        engineio_logger=False,
    )
    transports = TransportControl(sio.eio, settings.ws_compression, settings.client_backlog_max)
    return sio, transports


def create_app(settings: Settings, store: Store | None = None,
               demo: bool = False) -> web.Application:
    """The aiohttp application with the Socket.IO server mounted on `settings.socketio_path`.

    With `demo`, it also writes a plausible stream of bookings and payments to its store.
    """
    store = store or make_store(settings)
    mapping = DocumentMapping(settings)
    sio, transports = make_socketio_server(settings)
    emitter = Emitter(sio, store, transports, settings.replay_max_events)
    feed = ChangeFeed(store, mapping.collections, ChangePublisher(mapping, emitter),
                      on_history_lost=emitter.resync_everyone)
    metrics = Metrics()
    sessions = Sessions(
        sio, settings, TokenVerifier(settings), RoomPolicy(StoreReservations(store, mapping)),
        emitter, metrics,
    )
    sio.register_namespace(GatewayNamespace(sessions, emitter, metrics))
    metrics.observe(connections=sessions.counts, emitted=lambda: emitter.emitted,
                    changes_handled=lambda: feed.changes_handled, lag_s=lambda: feed.lag_s)

    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_payload_bytes)
    app[GATEWAY] = Gateway(settings=settings, store=store, sio=sio, emitter=emitter,
                           sessions=sessions, mapping=mapping, feed=feed,
                           broadcaster=Broadcaster(settings, store, emitter), metrics=metrics,
                           transports=transports)
    sio.attach(app, socketio_path=settings.socketio_path)
    setup_routes(app, settings.cors_origins)
    app.cleanup_ctx.append(_store_lifetime)
    if settings.redis_url:
        app.cleanup_ctx.append(_redis_lifetime)
    app.cleanup_ctx.append(_feed_lifetime)
    if demo:
        app.cleanup_ctx.append(_demo_lifetime)
    app.on_shutdown.append(_stop_feed)
    app.on_shutdown.append(_close_sockets)
    return app


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.store.open()
    await gateway.store.start_maintenance()
    logger.info("store open", extra={"store": gateway.store.describe()})
    yield
    await gateway.sessions.shutdown()
    await gateway.store.close()


async def _redis_lifetime(app: web.Application) -> AsyncIterator[None]:
    import redis.asyncio

    gateway = app[GATEWAY]
    gateway.redis = redis.asyncio.Redis.from_url(gateway.settings.redis_url,
                                                 socket_connect_timeout=2, socket_timeout=2)
    yield
    await gateway.redis.aclose()


async def _feed_lifetime(app: web.Application) -> AsyncIterator[None]:
    feed = app[GATEWAY].feed
    try:
        # opened before serving: a change written once the server answers is never missed
        await feed.open()
    except StoreError as exc:
        logger.error("change stream not open yet", extra={"error": str(exc)})
    async with _background(feed.run()) as task:
        app[GATEWAY].feed_task = task
        yield


async def _demo_lifetime(app: web.Application) -> AsyncIterator[None]:
    from realtime.demo import DemoWriter

    gateway = app[GATEWAY]
    async with _background(DemoWriter(gateway.store, gateway.mapping).run()):
        yield


@contextlib.asynccontextmanager
async def _background(coroutine) -> AsyncIterator[asyncio.Task]:
    """Run a coroutine as a task for the block's duration; a crash is logged, not hidden."""
    task = asyncio.get_running_loop().create_task(coroutine)
    task.add_done_callback(_log_crash)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task crashed", exc_info=task.exception())


async def _stop_feed(app: web.Application) -> None:
    """First of a graceful shutdown: finish the change in hand and save where to resume."""
    await app[GATEWAY].feed.stop()


async def _close_sockets(app: web.Application) -> None:
    """Close every client's transport (not a Socket.IO disconnect): clients reconnect, to
    another instance or to this one restarted, and catch up by replay."""
    gateway = app[GATEWAY]
    await gateway.transports.close_all()
    await gateway.sio.shutdown()
