"""The conformance app: the gateway's own engine and dispatch, serving the Socket.IO project's
protocol test suites' reference apps, and nothing else.

`socketio/engine.io-protocol` and `socketio/socket.io-protocol` publish test suites for server
implementations (`test-suite/` in each), which talk to a reference app on 127.0.0.1:3000:
pings every 300 ms answered within 200, a payload of at most 1,000,000 bytes, a namespace
connected within 1,000 ms, CORS for any origin. This app serves them with the modules
production runs (`realtime/engine/`: `GatewaySocket`, `Outbox`, the endpoint's
route and POSTs, `GatewayServer`'s dispatch), without the gateway's policies (tokens, rooms,
limits, refused binary events), which the suites do not expect:

- `/engine.io/`: Engine.IO alone; every message is sent back as it came (text or binary).
- `/socket.io/`: Socket.IO; namespaces `/` and `/custom`. On connecting, a socket gets `auth`
  with the handshake's payload; `message` is answered `message-back` with the same
  arguments, `message-with-ack` through its ack with them.

For conformance only: `python -m server.conformance PORT` (or `scripts/conformance-server
PORT`), never in production.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from realtime.config import Settings
from realtime.engine import Bounds, Engine, GatewayPacket, GatewayServer, LaneRunner
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)

# the suites' reference configuration (their READMEs)
PING_INTERVAL_S = 0.3
PING_TIMEOUT_S = 0.2
MAX_PAYLOAD_BYTES = 1_000_000
CONNECT_TIMEOUT_S = 1.0
AUTH_AFTER_S = 0.02  # how long after a namespace's CONNECT answer its `auth` packet is sent
# the app's two servers, by the path they are mounted on ("engine.io", "socket.io")
SERVERS = web.AppKey("servers", dict[str, GatewayServer])
_BOUNDS = Bounds(Settings.client_backlog_max, Settings.client_backlog_max_bytes)


def _server(rules_of_the_gateway: bool = False) -> GatewayServer:
    return GatewayServer(
        async_mode="aiohttp",
        rules=rules_of_the_gateway,
        serializer=GatewayPacket,
        async_handlers=False,  # a socket's events one at a time, in order
        cors_allowed_origins="*",
        max_http_buffer_size=MAX_PAYLOAD_BYTES,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        logger=False,
        engineio_logger=False,
    )


def _engineio_echo(tasks: TaskKeeper) -> tuple[GatewayServer, Engine]:
    """Engine.IO only: what a client sends comes back. (A Socket.IO server whose Engine.IO
    messages never reach Socket.IO: the engine is the same, the dispatch is an echo.)"""
    server = _server()
    engine = Engine(server, False, _BOUNDS, tasks)
    eio = server.eio

    async def echo(eio_sid: str, data: Any) -> None:
        await eio.send(eio_sid, data)

    eio.on("message", echo)
    return server, engine


def _socketio_echo(tasks: TaskKeeper) -> tuple[GatewayServer, Engine]:
    server = _server()
    engine = Engine(server, False, _BOUNDS, tasks, CONNECT_TIMEOUT_S)
    for namespace in ("/", "/custom"):
        _echo_on(server, namespace)
    return server, engine


def _echo_on(server: GatewayServer, namespace: str) -> None:
    async def connect(sid: str, environ: dict, auth: Any = None) -> None:
        # after the CONNECT answer (which python-socketio sends once this returns), and a
        # moment apart from it: the suites' clients (ws 8.17 and later emit the messages of
        # one read in one go) register for the next message after the CONNECT's, and would
        # miss an `auth` that arrived in the same read
        payload = auth if auth is not None else {}
        asyncio.get_running_loop().call_later(
            AUTH_AFTER_S,
            asyncio.ensure_future,
            server.emit("auth", payload, to=sid, namespace=namespace),
        )

    async def message(sid: str, *args: Any) -> None:
        await server.emit("message-back", args, to=sid, namespace=namespace)

    async def message_with_ack(sid: str, *args: Any) -> Any:
        return args

    server.on("connect", connect, namespace=namespace)
    server.on("message", message, namespace=namespace)
    server.on("message-with-ack", message_with_ack, namespace=namespace)


def create_conformance_app() -> web.Application:
    tasks = TaskKeeper()
    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
    engines = {"engine.io": _engineio_echo(tasks), "socket.io": _socketio_echo(tasks)}
    for path, (_, engine) in engines.items():
        engine.attach(app, f"/{path}/")
    app[SERVERS] = {path: server for path, (server, _) in engines.items()}

    async def close(app: web.Application) -> None:
        for _, engine in engines.values():
            await engine.close_all()
        await tasks.close()

    app.on_shutdown.append(close)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.conformance",
        description="Serve the Engine.IO and Socket.IO protocol test suites' reference apps "
        "(/engine.io/ and /socket.io/) with the gateway's own engine, on 127.0.0.1:PORT. For "
        "conformance testing only: no authentication, no limits, not the gateway.",
    )
    parser.add_argument("port", type=int, help="port to listen on (the suites use 3000)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address [127.0.0.1]")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(arguments.host, arguments.port))
    return 0


async def _serve(host: str, port: int) -> None:
    """Serve the app as the gateway serves its own: long-polling in the engine's lane."""
    runner = LaneRunner(create_conformance_app())
    await runner.setup()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"conformance app listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
