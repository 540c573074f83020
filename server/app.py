"""`create_app(settings)`: the one place where the parts are chosen and wired together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from handlers.http import error_middleware, setup_routes
from handlers.pages import setup_pages
from handlers.socket import GatewayNamespace
from realtime.access.auth import TokenVerifier
from realtime.access.policy import RoomPolicy
from realtime.access.revocations import Revocations
from realtime.access.sessions import Sessions
from realtime.changes.feed import ChangeFeed
from realtime.changes.mapping import DocumentMapping
from realtime.changes.publisher import ChangePublisher
from realtime.changes.reservations import StoreReservations
from realtime.changes.watcher import Watcher, new_instance_id
from realtime.config import Settings
from realtime.delivery.bus import EventBus
from realtime.delivery.emitter import Emitter
from realtime.engine import AdminView, create_engine
from realtime.gateway import GATEWAY, Gateway
from realtime.limits import LoginGuard, trusted_networks
from realtime.metrics import Metrics
from realtime.ops import admin_view as admin_ui
from realtime.ops.broadcast import Broadcaster
from realtime.ops.health import redis_probe, store_probe, watcher_probe
from realtime.ops.revoker import Revoker
from realtime.tasks import TaskKeeper
from storage.base import Store

logger = logging.getLogger(__name__)


def make_store(settings: Settings) -> Store:
    """The configured store, not yet opened."""
    if settings.uses_mongodb:
        from storage.mongo import MongoStore

        return MongoStore(
            settings.mongodb_url,
            settings.mongodb_db,
            settings.event_retention_s,
            state_database=settings.mongodb_state_database,
        )
    from storage.sqlite.store import SqliteStore

    return SqliteStore(
        settings.store_path,
        poll_ms=settings.watcher_poll_ms,
        retention_s=settings.event_retention_s,
    )


def create_app(
    settings: Settings, store: Store | None = None, demo: bool = False
) -> web.Application:
    """The aiohttp application with the Socket.IO server mounted on `settings.socketio_path`.

    With `demo`, it also writes a plausible stream of bookings and payments to its store.
    """
    store = store or make_store(settings)
    tasks = TaskKeeper()
    mapping = DocumentMapping(settings)
    metrics = Metrics()
    admin_view = AdminView(
        received=admin_ui.received,
        sent=admin_ui.sent,
        socket=admin_ui.socket,
        logins=LoginGuard(trusted_networks(settings.trusted_proxies)),
        refused=lambda reason, _: metrics.admin_logins_refused.labels(reason).inc(),
        # `sessions` is made after the engine; the UI asks only once sockets connect
        identity=lambda sid: admin_ui.identity(sessions.principal_of, sid),
    )
    engine = create_engine(settings, tasks, admin_view)
    emitter = Emitter(engine, store, settings.replay_max_events, settings.client_stall_timeout_s)
    publisher = ChangePublisher(mapping, emitter)
    feed = ChangeFeed(store, mapping.collections, publisher, on_history_lost=publisher.history_lost)
    verifier = TokenVerifier(
        settings, on_jwks_fetch=lambda outcome: metrics.jwks_fetches.labels(outcome).inc()
    )
    revocations = Revocations()
    reservations = StoreReservations(store, mapping, tasks, settings.reservation_cache_s)
    sessions = Sessions(
        engine,
        settings,
        verifier,
        RoomPolicy(reservations),
        emitter,
        metrics,
        tasks,
        revocations,
    )
    revoker = Revoker(store, revocations, sessions, tasks, settings.revocation_reload_s)
    engine.watch(
        opened=sessions.transport_opened,
        closed=sessions.transport_closed,
        admit=sessions.limits.admit_transport,
    )
    emitter.recheck_reservations_with(reservations.forget, sessions.members_losing)
    engine.sio.register_namespace(GatewayNamespace(sessions, emitter, metrics))
    instance_id = new_instance_id()
    watcher = Watcher(store, feed, instance_id, settings.watcher_lease_ttl_s)
    bus = None
    if settings.redis_url:
        bus = EventBus(
            settings.redis_url,
            instance_id,
            on_events=emitter.hear,
            on_heard_again=emitter.catch_up_soon,
            on_control=revoker.heard,
        )
        emitter.announce_with(bus.announce)
        revoker.announce_with(bus.announce_control)
    metrics.observe(
        connections=sessions.counts,
        emitted=lambda: emitter.emitted,
        changes_handled=lambda: feed.changes_handled,
        lag_s=lambda: feed.lag_s,
        lease_held=lambda: int(watcher.held_here),
        takeovers=lambda: watcher.takeovers,
        caught_up=lambda: emitter.caught_up,
    )

    probes = [store_probe(store), watcher_probe(watcher)]
    if settings.redis_url:
        probes.append(redis_probe(settings.redis_url, bus))

    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_payload_bytes
    )
    app[GATEWAY] = Gateway(
        settings=settings,
        store=store,
        engine=engine,
        emitter=emitter,
        sessions=sessions,
        verifier=verifier,
        mapping=mapping,
        feed=feed,
        watcher=watcher,
        bus=bus,
        broadcaster=Broadcaster(settings, store, emitter),
        revoker=revoker,
        metrics=metrics,
        probes=tuple(probes),
        tasks=tasks,
    )
    engine.attach(app, settings.socketio_path)
    setup_routes(app, settings.cors_origins)
    setup_pages(app, settings)
    # started in this order, stopped in the reverse: the store is closed last
    app.cleanup_ctx.append(_store_lifetime)
    app.cleanup_ctx.append(_parts_lifetime)
    app.cleanup_ctx.append(_delivery_lifetime)
    if demo:
        app.cleanup_ctx.append(_demo_lifetime)
    app.on_shutdown.append(_stop_watching)
    app.on_shutdown.append(_close_sockets)
    return app


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.store.open()
    await gateway.store.start_maintenance()
    logger.info("store open", extra={"store": gateway.store.describe()})
    yield
    await gateway.store.close()


async def _parts_lifetime(app: web.Application) -> AsyncIterator[None]:
    """What the running parts hold beside the store: deadlines, background tasks, the
    probes' own connections."""
    yield
    gateway = app[GATEWAY]
    gateway.sessions.shutdown()
    await gateway.tasks.close()
    for probe in gateway.probes:
        if probe.close is not None:
            await probe.close()


async def _delivery_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Delivery from the log's newest id, the bus, then the watcher: all before serving."""
    gateway = app[GATEWAY]
    await gateway.emitter.start()
    try:
        await gateway.revoker.start()  # revoked tokens are refused from the first connection
        if gateway.bus is not None:
            gateway.bus.start(await gateway.store.log_identity())
        await gateway.watcher.start()
    except BaseException:
        if gateway.bus is not None:
            await gateway.bus.stop()
        await gateway.revoker.stop()
        await gateway.emitter.stop()
        raise
    if gateway.verifier.jwks is not None:
        # fetched ahead of the first token, without holding up start-up: a provider down is
        # tried again when tokens come
        gateway.tasks.spawn(gateway.verifier.jwks.prefetch(), name="jwks:prefetch")
    yield
    await gateway.watcher.stop()
    if gateway.bus is not None:
        await gateway.bus.stop()
    await gateway.revoker.stop()
    await gateway.emitter.stop()
    if gateway.verifier.jwks is not None:
        await gateway.verifier.jwks.close()  # a background refresh under way


async def _demo_lifetime(app: web.Application) -> AsyncIterator[None]:
    from realtime.changes.demo import DemoWriter

    gateway = app[GATEWAY]
    gateway.tasks.spawn(DemoWriter(gateway.store, gateway.mapping).run(), name="demo")
    yield


async def _stop_watching(app: web.Application) -> None:
    """First of a graceful shutdown: finish the change in hand, save where to resume, and let
    the watcher lease go to another instance."""
    await app[GATEWAY].watcher.stop()


async def _close_sockets(app: web.Application) -> None:
    """Close every client's transport (not a Socket.IO disconnect): clients reconnect, to
    another instance or to this one restarted, and catch up by replay."""
    gateway = app[GATEWAY]
    await gateway.engine.close_all()
    await gateway.engine.sio.shutdown()
