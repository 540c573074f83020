"""`python -m realtime`: serve (the default), issue a development token, or write to the store."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shlex
import signal
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from aiohttp import web

from realtime.access.auth import ROLES, issue_token
from realtime.changes.demo import DemoWriter
from realtime.changes.mapping import DocumentMapping
from realtime.config import (
    DEV_SECRET_SUFFIX,
    ConfigError,
    Settings,
    describe_variables,
    load_settings,
    with_demo_credentials,
)
from realtime.engine import LaneRunner
from realtime.gateway import GATEWAY
from realtime.logs import configure_logging
from realtime.ops.collector import CollectorPacing
from server.app import create_app, make_store

logger = logging.getLogger("realtime")


def _environment_help() -> str:
    lines = ["environment variables (command-line options win over them):"]
    for name, meaning, default in describe_variables():
        lines.append(f"  {name}")
        lines.extend(
            textwrap.wrap(
                f"{meaning} [default: {default}]",
                width=76,
                initial_indent="      ",
                subsequent_indent="      ",
            )
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime",
        description="Real-time Socket.IO gateway for booking platforms. Without a command it "
        "serves: Socket.IO on SOCKETIO_PATH and the HTTP API, on MongoDB when "
        "MONGODB_URL is set and on the embedded SQLite store (STORE_PATH) otherwise.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="listen address (overrides HOST)")
    parser.add_argument("--port", type=int, help="listen port (overrides PORT)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also write a demo stream of bookings and payments to the store, and turn "
        "everything on: a broadcast token and an Admin UI login (each made once and kept "
        "beside the store unless BROADCAST_TOKEN or ADMIN_UI_* are set), printed at start",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("serve", help="run the gateway (the default)")
    demo = commands.add_parser(
        "demo",
        help="write a demo stream of bookings and payments to the store, to watch a "
        "running gateway",
    )
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between writes [1]")
    demo.add_argument("--count", type=int, default=0, help="stop after this many writes [0: never]")

    token = commands.add_parser(
        "token", help="print a signed development token for the configured HS key"
    )
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument(
        "--shop",
        action="append",
        default=[],
        metavar="SHOP_ID",
        help="a shop the staff member works for (repeatable)",
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until exp [3600]")

    store = commands.add_parser("store", help="write documents to the configured store")
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    insert = actions.add_parser("insert", help="insert a document; prints its _id")
    insert.add_argument("collection")
    insert.add_argument("document", help="JSON object; a given _id is kept")
    update = actions.add_parser("update", help="$set fields of a document")
    update.add_argument("collection")
    update.add_argument("id")
    update.add_argument("fields", help="JSON object of the fields to set")
    delete = actions.add_parser("delete", help="delete a document")
    delete.add_argument("collection")
    delete.add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # a token is signed with the secret a gateway uses: the command makes none of its own
        settings = load_settings(
            host=args.host, port=args.port, make_secret=args.command != "token"
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "token":
        if settings.jwt_secret_generated:
            where = os.path.abspath(settings.store_path + DEV_SECRET_SUFFIX)
            print(f"signed with the development secret in {where}", file=sys.stderr)
        print(issue_token(settings, args.sub, args.role, args.shop, args.ttl))
        return 0
    if args.command == "store":
        return asyncio.run(_store_command(settings, args))
    if args.command == "demo":
        return asyncio.run(_demo_command(settings, args.interval, args.count))
    return _serve(settings, demo=args.demo)


async def _demo_command(settings: Settings, interval_s: float, count: int) -> int:
    store = make_store(settings)
    await store.open()
    writer = DemoWriter(store, DocumentMapping(settings), interval_s)
    try:
        written = 0
        while count == 0 or written < count:
            await writer.step()
            written += 1
            if count == 0 or written < count:
                await asyncio.sleep(interval_s)
    finally:
        await store.close()
    return 0


async def _store_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        body = _json_object(getattr(args, "document", None) or getattr(args, "fields", None))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = make_store(settings)
    await store.open()
    try:
        if args.action == "insert":
            print(await store.insert_document(args.collection, body))
            return 0
        if args.action == "update":
            found = await store.update_document(args.collection, args.id, body)
        else:
            found = await store.delete_document(args.collection, args.id)
        if not found:
            print(f"error: no document {args.id!r} in {args.collection}", file=sys.stderr)
            return 1
        return 0
    except Exception as exc:  # StoreError and driver errors: one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _json_object(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("the document must be a JSON object")
    return value


def _serve(settings: Settings, demo: bool = False) -> int:
    if demo:
        try:
            settings = with_demo_credentials(settings)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    if settings.jwt_secret_generated:
        warning = (
            f"JWT_SECRET is not set: using the development secret kept in "
            f"{settings.store_path}.jwt-secret; set JWT_SECRET in production"
        )
        logger.warning("development jwt secret", extra={"detail": warning})
        print(f"WARNING: {warning}", file=sys.stderr)
    try:
        loop_factory, loop_name = event_loop(settings.event_loop)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_run(settings, demo, loop_name))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


# Connections the kernel holds for the gateway to accept (aiohttp's default is 128): a
# long-polling client without keep-alive (socket.io-client in Node; a proxy without upstream
# keep-alive) opens a connection per request, a whole room's at once after a broadcast, and
# past the backlog the kernel drops their SYNs: each retries a second later (a p99 of ~1 s
# with 200 such clients). The kernel caps it at net.core.somaxconn (4096 since Linux 5.4).
LISTEN_BACKLOG = 4096


# Each connection holds an open file (its socket; a long-polling session, its pending request),
# and so does the store, Redis and the listener: the open-files limit caps the connections.
# Many systems start a process with a soft limit of 1,024 and a hard one far above it, so the
# soft one is raised to the hard one here; the hard one is the operator's to raise.
FILES_RESERVED = 100  # the store, Redis, the listener, logs: what is not a connection
FILES_RECOMMENDED = 65_536
HOW_TO_RAISE_FILES = (
    "raise the hard open-files limit: LimitNOFILE= (systemd), --ulimit nofile=N:N (Docker), "
    "nofile in /etc/security/limits.conf, or ulimit -Hn before starting"
)


def raise_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (to the kernel's per-process ceiling,
    fs.nr_open, when the hard one is unlimited). Returns the soft limit before, the soft limit
    now and the hard limit."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as ceiling:
            wanted = int(ceiling.read())
    if before != resource.RLIM_INFINITY and before < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logger.warning("open files limit not raised", extra={"detail": str(exc)})
    return before, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def file_limit_line(limit: int) -> str:
    """The banner's line on the open-files limit: the connections it allows and, below the
    recommended limit, what an operator must raise."""
    line = f"  open files: {limit:,} (about {max(0, limit - FILES_RESERVED):,} connections)"
    if limit < FILES_RECOMMENDED:
        line += f"; to hold more, {HOW_TO_RAISE_FILES}"
    return line


def event_loop(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop to serve on: uvloop's (about twice asyncio's throughput on sockets, and
    less memory per connection) when chosen or, with `auto`, when it is installed."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("EVENT_LOOP", "uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def banner(settings: Settings, origin: str, demo: bool) -> str:
    """What a person starting the gateway needs next: the pages that are on (and how to
    turn on those that are off), how to get a token, and with the demo a ready-to-paste
    broadcast and the Admin UI's login."""
    lines = []
    if demo:
        lines.append("demo mode: a sample booking or payment is written every second")
    if settings.serves_test_page:
        lines.append(f"  test page:  {origin}/websocket-test")
    else:
        lines.append("  test page:  off (TEST_PAGE=true turns it on)")
    if not settings.admin_ui:
        lines.append("  Admin UI:   off (ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD, or --demo)")
    elif settings.admin_ui_password_generated:
        lines.append(
            f"  Admin UI:   {origin}/admin-ui/  user {settings.admin_ui_username}, password "
            f"{settings.admin_ui_password}"
        )
    else:
        lines.append(f"  Admin UI:   {origin}/admin-ui/  (ADMIN_UI_USERNAME's login)")
    if settings.jwt_secret_generated:
        command = _token_command(settings.store_path)
        lines.append(f"  token:      {command} --sub staff-1 --role staff --shop 1")
    if settings.broadcast_token_generated:
        body = '{"event": "notification", "data": {"title": "hello"}, "rooms": ["shop-1"]}'
        lines.append(
            f"  broadcast:  curl -X POST {origin}/broadcast -H 'Authorization: Bearer "
            f"{settings.broadcast_token}' -H 'Content-Type: application/json' -d '{body}'"
        )
    return "\n".join(lines)


def _browsable(host: str) -> str:
    """Where a browser on this machine reaches a gateway listening on `host`."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _token_command(store_path: str) -> str:
    """The token command that signs with this gateway's secret (kept beside its store):
    `scripts/token` when the gateway runs from the project's directory (it runs there too, in
    the project's environment), otherwise this very interpreter; with the store's absolute
    path unless it is the default one there."""
    if os.path.exists(os.path.join("scripts", "token")):
        command = "scripts/token"
    else:
        command = f"{shlex.quote(sys.executable)} -m realtime token"
    if os.path.abspath(store_path) != os.path.abspath(Settings.store_path):
        command = f"STORE_PATH={shlex.quote(os.path.abspath(store_path))} {command}"
    return command


async def _run(settings: Settings, demo: bool, loop_name: str = "asyncio") -> None:
    await serve(create_app(settings, demo=demo), settings, loop_name, demo)


async def serve(
    app: web.Application, settings: Settings, loop_name: str, demo: bool = False
) -> None:
    """Serve `app` on the settings' host and port until SIGINT or SIGTERM (benchmarks serve
    an app of their own through here, served as `python -m realtime` serves it)."""
    runner = LaneRunner(  # aiohttp's, long-polling served in a lane of its own
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,  # requests are logged by the error middleware, as JSON
    )
    before, files, hard = raise_file_limit()
    files_fields = {"soft_before": before, "soft": files, "hard": hard}
    logger.info("open files limit", extra=files_fields)
    if files < FILES_RECOMMENDED:
        logger.warning(
            "open files limit low",
            extra={**files_fields, "recommended": FILES_RECOMMENDED, "detail": HOW_TO_RAISE_FILES},
        )
    await runner.setup()
    collector = CollectorPacing()  # survivors frozen out of later passes, on uvloop
    collector.install()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    await site.start()
    host, port = runner.addresses[0][:2]
    where = app[GATEWAY].store.describe()
    print(
        f"realtime gateway listening on http://{host}:{port} (store: {where}, loop: {loop_name})",
        flush=True,
    )
    logger.info("listening", extra={"host": host, "port": port, "store": where, "loop": loop_name})
    print(banner(settings, f"http://{_browsable(host)}:{port}", demo), flush=True)
    print(file_limit_line(files), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()
        collector.uninstall()
