"""Fixtures built on each other: settings -> app -> real server on a free port -> clients."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from realtime.access.auth import issue_token
from realtime.config import Settings, load_settings
from realtime.engine import LaneRunner
from realtime.gateway import GATEWAY
from server.app import create_app
from tests.clients import KINDS, Client, make_client
from tests.gateways import SERVICE_TOKEN, GatewayProcess, RedisServer
from tests.tools import require

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def environ(tmp_path, request) -> dict[str, str]:
    """The environment the gateway under test reads; `@pytest.mark.env(NAME=value)` adds to it."""
    variables = {
        "STORE_PATH": str(tmp_path / "realtime.db"),
        "JWT_SECRET": SECRET,
        "LOG_LEVEL": "debug",
    }
    for marker in reversed(list(request.node.iter_markers("env"))):
        variables.update(marker.kwargs)
    return variables


@pytest.fixture
def free_port() -> Callable[[], int]:
    """free_port() -> a TCP port on 127.0.0.1 that nothing listens on right now."""

    def pick() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    return pick


@pytest.fixture
async def redis_server(free_port) -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port, stopped afterwards (a test may stop and start
    it again on the same port)."""
    server = await RedisServer(free_port()).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def cluster_env(environ, redis_server) -> dict[str, str]:
    """What gateway processes of one cluster share: the store, a Redis, a short lease."""
    return {
        **environ,
        "REDIS_URL": redis_server.url,
        "BROADCAST_TOKEN": SERVICE_TOKEN,
        "WATCHER_LEASE_TTL": "1.5",
        "LOG_LEVEL": "warning",
    }


@pytest.fixture
async def gateways(cluster_env, free_port) -> AsyncIterator[Callable]:
    """`await gateways()` starts one more gateway process on the shared store and Redis."""
    started: list[GatewayProcess] = []

    async def start(**env: str) -> GatewayProcess:
        gateway = await GatewayProcess({**cluster_env, **env}, free_port()).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.returncode is None:
            gateway.process.send_signal(signal.SIGCONT)  # a paused one must be able to die
        await gateway.stop()


@pytest.fixture
def settings(environ) -> Settings:
    return load_settings(environ)


@pytest.fixture
def app(settings) -> web.Application:
    return create_app(settings)


class LaneTestServer(TestServer):
    """pytest-aiohttp's test server, run as `python -m realtime` runs the app: long-polling
    in the engine's lane (`LaneRunner`)."""

    async def _make_runner(self, **kwargs) -> LaneRunner:
        return LaneRunner(self.app, **kwargs)


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[Callable]:
    """pytest-aiohttp's `aiohttp_server(app)`, with the gateway's runner."""
    servers: list[LaneTestServer] = []

    async def start(app: web.Application, *, host: str = "127.0.0.1", port=None, **kwargs):
        server = LaneTestServer(app, host=host, port=port)
        await server.start_server(**kwargs)
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()


@pytest.fixture
async def server(aiohttp_server, app):
    return await aiohttp_server(app)


@pytest.fixture
async def plain(settings):
    """The same app served by aiohttp's own runner: no lane (what the lane must answer
    alike)."""
    served = TestServer(create_app(settings))
    await served.start_server()
    yield served
    await served.close()


@pytest.fixture
def gateway(app):
    return app[GATEWAY]


@pytest.fixture
def base_url(server) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def token(settings) -> Callable[..., str]:
    """token(sub, role, shops=(), ttl=3600, **claims): a token signed with the test key."""

    def make(sub: str = "u1", role: str = "customer", shops=(), ttl: float = 3600, **claims):
        return issue_token(settings, sub, role, shops, ttl, extra=claims or None)

    return make


@pytest.fixture
def raw_token() -> Callable[..., str]:
    """raw_token(claims, key=SECRET, algorithm="HS256"): any token at all, for bad input."""

    def make(claims: dict, key=SECRET, algorithm: str = "HS256", headers=None) -> str:
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)

    return make


@pytest.fixture(params=KINDS)
def client_kind(request) -> str:
    if request.param.startswith("js"):
        require("node")  # and the JS client: skips, naming what to install, without
    return request.param


@pytest.fixture
async def clients(base_url, settings) -> AsyncIterator[Callable[..., Client]]:
    """clients(kind) -> an unconnected client of that kind; all are closed in teardown."""
    made: list[Client] = []

    def make(kind: str = "py-websocket") -> Client:
        client = make_client(kind, base_url, settings.socketio_path)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def connect(clients, token):
    """connect(kind, sub=..., role=..., shops=..., ttl=...) -> a client authenticated in the
    handshake; other keywords go into the handshake's `auth`."""

    async def make(
        kind: str = "py-websocket",
        sub: str = "u1",
        role: str = "customer",
        shops=(),
        ttl: float = 3600,
        **auth,
    ) -> Client:
        client = clients(kind)
        await client.connect({"token": token(sub, role, shops, ttl), **auth})
        await client.next_event("auth_success")
        return client

    return make


@pytest.fixture
async def http(base_url) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client on the gateway under test."""
    async with aiohttp.ClientSession(base_url) as session:
        yield session


@pytest.fixture
def no_errors_logged(caplog):
    """Client junk is no operator's problem: nothing of it is logged at ERROR."""
    caplog.set_level(logging.INFO)
    yield
    # (in teardown, `caplog.records` holds the teardown's records only)
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
