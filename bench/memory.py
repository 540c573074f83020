"""Benchmark: the gateway's memory per idle connection, and what that memory is made of.

    .venv/bin/python bench/memory.py [--clients 2000] [--trace 25] [--browser-headers]
                                     [--transport websocket|upgrade] [--loop uvloop|asyncio]
                                     [--server gateway|node]

The gateway (`server.app.create_app`, embedded store) runs in a subprocess pinned to CPU 0. It
is this script again (`--serve`), which builds the app and serves it as `python -m realtime`
does (AppRunner, no access log, gc frozen after start-up, the same gc thresholds), on uvloop,
with one route of its own, `GET /__memory`: RSS, asyncio tasks by coroutine, scheduled timers
(asyncio's loop only: uvloop keeps them in C), gc objects by type and, when traced,
tracemalloc's totals and allocation sites. This process, on CPU 1, connects N raw Socket.IO
clients, 100 at a time, each authenticated in the handshake (`auth: {token}`) and joined to
`availability-s1`, then measures before and 2 s after:
- `--transport upgrade`: each client opens a long-polling session and upgrades it to a
  WebSocket, as socket.io-client does by default;
- `--browser-headers`: every request carries ~1 KB of browser-like headers (User-Agent,
  Accept-Language, cookies, an Origin equal to the server's own);
- `--loop asyncio`: the gateway on asyncio's own loop, whose timers can be counted;
- `--server node`: Node socket.io (`bench/node/server.mjs`, as `bench/vs_node.py` runs it) in
  the gateway's place, with the same clients: its RSS per connection only.

It prints, per connection: RSS, tasks by coroutine, timers, objects by type (count and
shallow `sys.getsizeof` bytes) and, with `--trace N` (tracemalloc keeping N frames), the traced
bytes and the top allocation sites. tracemalloc inflates RSS (its tables, a trace per block),
so RSS is a figure only from an untraced run (the default); a traced run prints it flagged,
and takes a minute or so (every allocation, the measurement's own too, records its frames).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from typing import Any

import aiohttp
import jwt
from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED, free_port  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
NODE_SERVER = os.path.join(ROOT, "bench", "node", "server.mjs")

SECRET = "bench-secret-0123456789-abcdefghijklmnop"
ROOM = "availability-s1"
CONNECTING_AT_ONCE = 100
WARM_UP_CLIENTS = 10
SETTLE_S = 2.0
TOP = 15
SERVER_CPU, CLIENT_CPU = 0, 1
STDLIB = sysconfig.get_paths()["stdlib"]


# --- the gateway's side (`--serve`) --------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    if args.trace:
        # before the gateway is imported and built, so that start-up is traced as well
        tracemalloc.start(args.trace)
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args.store, args.loop))


async def _serve(store_path: str, loop_name: str) -> None:
    from realtime.config import load_settings
    from realtime.logs import configure_logging
    from server.app import create_app
    from server.cli import serve

    # only these variables: the caller's environment (a MONGODB_URL, say) must not leak in
    env = {
        "JWT_SECRET": SECRET,
        "STORE_PATH": store_path,
        "LOG_LEVEL": "warning",
        "HOST": "127.0.0.1",
        "PORT": "0",
        **UNLIMITED,
    }
    settings = load_settings(env)
    configure_logging(settings.log_level)
    app = create_app(settings)
    app.router.add_get("/__memory", memory_route)
    await serve(app, settings, loop_name)  # prints "... listening on http://HOST:PORT ..."


async def memory_route(request: web.Request) -> web.Response:
    gc.collect()
    # RSS first: the walks below allocate, and what they free stays in the process
    figures: dict[str, Any] = {"rss_kb": vm_rss_kb()}
    if tracemalloc.is_tracing():
        figures["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    figures["tasks"] = collections.Counter(coroutine_name(t) for t in asyncio.all_tasks())
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", None)
    if scheduled is not None:
        figures["timers"] = collections.Counter(timer_name(h) for h in scheduled)
    figures["objects"] = objects_by_type()
    if tracemalloc.is_tracing():
        # last, so the snapshot holds none of the walks' temporaries
        figures["sites"] = allocation_sites(tracemalloc.take_snapshot())
    return web.json_response(figures)


def vm_rss_kb(path: str = "/proc/self/status") -> int:
    with open(path) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def coroutine_name(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__qualname__


def timer_name(handle: asyncio.TimerHandle) -> str:
    if handle.cancelled():  # its callback is gone; asyncio drops it from the heap later
        return "(cancelled)"
    callback = getattr(handle, "_callback", None)
    callback = getattr(callback, "func", callback)  # a functools.partial: what it calls
    return getattr(callback, "__qualname__", None) or type(callback).__qualname__


def objects_by_type() -> dict[str, list[int]]:
    """[count, getsizeof bytes] by type, of the objects the collector tracks (those frozen at
    start-up excepted) and of the untracked ones they refer to: the strings, bytes and atomic
    dicts that hold much of a connection's memory."""
    objects = gc.get_objects()
    seen = {id(o) for o in objects}
    seen.add(id(objects))
    untracked = []
    for obj in objects:
        for referent in gc.get_referents(obj):
            if id(referent) not in seen and not gc.is_tracked(referent):
                seen.add(id(referent))
                untracked.append(referent)
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in objects + untracked:
        kind = type(obj)
        module = kind.__module__ if isinstance(kind.__module__, str) else "?"
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj, 0)
    return {name: [counts[name], sizes[name]] for name in counts}


def allocation_sites(snapshot: tracemalloc.Snapshot) -> dict[str, dict[str, list[int]]]:
    """[bytes, blocks] by the allocating line, and by the innermost frame outside the standard
    library (the gateway's or a library's line that asked for it: with enough frames, what a
    connection's `asyncio` or `json` allocations are for). The driver's and tracemalloc's own
    blocks are left out."""
    sites: dict[str, dict[str, list[int]]] = {"line": {}, "caller": {}}
    # grouped by traceback first: filtering or walking each trace in Python takes much longer
    for stat in snapshot.statistics("traceback"):
        innermost = stat.traceback[-1]  # oldest frame first
        if innermost.filename in (THIS_FILE, tracemalloc.__file__):
            continue
        # lazily, from the innermost frame: each Frame is an allocation, and traced
        outside = (f for f in reversed(stat.traceback) if not in_stdlib(f.filename))
        caller = next(outside, innermost)
        for grouping, frame in (("line", innermost), ("caller", caller)):
            name = site_name(frame.filename, frame.lineno)
            if frame.filename == asyncio.runners.__file__:
                # under `run_until_complete` and nothing else: the loop's own C code (uvloop)
                name += " (the event loop, in C)"
            row = sites[grouping].setdefault(name, [0, 0])
            row[0] += stat.size
            row[1] += stat.count
    return sites


@functools.cache  # the same few hundred files, asked of each traceback's frames
def in_stdlib(filename: str) -> bool:
    """Also this driver: its frames are under every frame of the gateway's."""
    return (
        filename.startswith("<")
        or filename == THIS_FILE
        or (filename.startswith(STDLIB) and "site-packages" not in filename)
    )


@functools.cache
def site_name(filename: str, lineno: int) -> str:
    for prefix in ("site-packages/", ROOT + "/", STDLIB + "/"):
        if prefix in filename:
            filename = filename.split(prefix, 1)[1]
            break
    return f"{filename}:{lineno}"


# --- the clients' side ---------------------------------------------------------------------


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


def token(sub: str) -> str:
    claims = {"sub": sub, "role": "customer", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def browser_headers(origin: str) -> dict[str, str]:
    """What a desktop Chrome sends with each request of socket.io-client, give or take."""
    return {
        "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Accept": "*/*",
        "Accept-Language": "en-US,en;q=0.9,fr;q=0.8,de;q=0.7",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Cache-Control": "no-cache",
        "Pragma": "no-cache",
        "Origin": origin,
        # a consent banner's, an analytics' and a session's cookies
        "Cookie": "; ".join(f"c{n}={'x' * 50}" for n in range(12)),
    }


class Client:
    """One Socket.IO client over a raw WebSocket: the handshake, `join_room` and pongs."""

    def __init__(self, session: aiohttp.ClientSession):
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task | None = None
        self.join_ack = asyncio.get_running_loop().create_future()
        self.auth_success = asyncio.get_running_loop().create_future()

    async def connect(self, base: str, sub: str, polling: aiohttp.ClientSession | None) -> None:
        connect_packet = "40" + json.dumps({"token": token(sub)})
        ws_url = base.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        if polling is None:
            self.ws = await self.session.ws_connect(ws_url, autoping=False)
            opening = await self.ws.receive_str()
            assert opening.startswith("0"), opening
            await self.ws.send_str(connect_packet)
            connected = await self.ws.receive_str()
            if not connected.startswith("40"):
                raise ConnectionError(connected)
        else:
            sid = await self._connect_polling(polling, base, connect_packet)
            self.ws = await self.session.ws_connect(f"{ws_url}&sid={sid}", autoping=False)
            await self.ws.send_str("2probe")
            answer = await self.ws.receive_str()
            assert answer == "3probe", answer
            await self.ws.send_str("5")
        self.reader = asyncio.create_task(self._read())
        await self.auth_success
        await self.ws.send_str("421" + json.dumps(["join_room", {"roomId": ROOM}]))
        answer = await self.join_ack
        assert answer.get("ok"), answer

    async def _connect_polling(
        self, polling: aiohttp.ClientSession, base: str, connect_packet: str
    ) -> str:
        """socket.io-client's start: the Engine.IO handshake and CONNECT over long-polling."""
        url = base + "/socket.io/?EIO=4&transport=polling"
        async with polling.get(url) as response:
            opening = await response.text()
        assert opening.startswith("0"), opening
        sid = json.loads(opening[1:])["sid"]
        async with polling.post(f"{url}&sid={sid}", data=connect_packet) as response:
            assert (await response.text()).lower() == "ok"
        async with polling.get(f"{url}&sid={sid}") as response:
            packets = (await response.text()).split("\x1e")
        if not packets[0].startswith("40"):
            raise ConnectionError(packets[0])
        for packet in packets[1:]:  # `auth_success` may come with CONNECT, or after the upgrade
            self._received(packet)
        return sid

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            if message.data == "2":
                await self.ws.send_str("3")
            else:
                self._received(message.data)

    def _received(self, packet: str) -> None:
        if packet.startswith("42") and '"auth_success"' in packet[:20]:
            self.auth_success.set_result(json.loads(packet[2:])[1])
        elif packet.startswith("431["):
            self.join_ack.set_result(json.loads(packet[3:])[0])

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def connect_all(
    count: int,
    prefix: str,
    session: aiohttp.ClientSession,
    base: str,
    polling: aiohttp.ClientSession | None,
) -> list[Client]:
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    clients: list[Client] = []

    async def one(n: int) -> None:
        async with gate:
            client = Client(session)
            await client.connect(base, f"{prefix}{n}", polling)
            clients.append(client)

    await asyncio.gather(*(one(n) for n in range(count)))
    return clients


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="bench-memory-")
    if args.server == "node":
        command = [*pinned(SERVER_CPU), "node", NODE_SERVER, "--port", str(free_port())]
        environment = {**os.environ, "JWT_SECRET": SECRET, "BROADCAST_TOKEN": "unused-" * 4}
    else:
        command = [*pinned(SERVER_CPU), sys.executable, THIS_FILE, "--serve", "--loop", args.loop]
        command += ["--store", os.path.join(workdir, "bench.db"), "--trace", str(args.trace)]
        environment = None
    server = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, env=environment
    )
    try:
        line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode()
        if "listening on http://" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        base = line.split("listening on ", 1)[1].split()[0]
        headers = browser_headers(base) if args.browser_headers else None
        # a connection per measurement: the server keeps the last response of a kept-alive one
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as ws,
        ):

            async def memory() -> dict[str, Any]:
                if args.server == "node":  # (taskset execs it: the same process)
                    return {"rss_kb": vm_rss_kb(f"/proc/{server.pid}/status")}
                async with probe.get(f"{base}/__memory") as response:
                    return await response.json()

            async def connect(count: int, prefix: str) -> list[Client]:
                if args.transport == "websocket":
                    return await connect_all(count, prefix, ws, base, None)
                # polls on their own pool, closed once all are connected: the server would
                # hold those idle keep-alive connections for a while, and they are not sockets
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector, headers=headers) as polling:
                    return await connect_all(count, prefix, ws, base, polling)

            # lazy imports, caches and the service task, paid once, not per connection; few,
            # since what they free is reused by the measured connections
            warm = await connect(WARM_UP_CLIENTS, "warm-")
            await asyncio.gather(*(c.close() for c in warm))
            await asyncio.sleep(1)
            before = await memory()
            started = time.perf_counter()
            clients = await connect(args.clients, "c")
            connect_s = time.perf_counter() - started
            await asyncio.sleep(SETTLE_S)
            after = await memory()
            await asyncio.gather(*(c.close() for c in clients))
    finally:
        server.terminate()
        await server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"before": before, "after": after, "connect_s": connect_s, "headers": headers}


# --- the report ----------------------------------------------------------------------------


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before, per key; values are numbers or [number, ...] rows."""
    changed = {}
    for key in after.keys() | before.keys():
        a, b = after.get(key, 0), before.get(key, 0)
        if isinstance(a, list) or isinstance(b, list):
            a, b = a or [0] * len(b), b or [0] * len(a)
            changed[key] = [x - y for x, y in zip(a, b, strict=True)]
        else:
            changed[key] = a - b
    return changed


def first(row: Any) -> float:
    return row[0] if isinstance(row, list) else row


def per_connection_rows(changed: dict[str, Any], n: int, top: int, floor: float) -> list:
    rows = sorted(changed.items(), key=lambda kv: -first(kv[1]))
    return [(k, v) for k, v in rows[:top] if abs(first(v)) / n >= floor]


def header_size(headers: dict[str, str] | None) -> int:
    return sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    n = args.clients
    before, after = result["before"], result["after"]
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("aiohttp", "python-socketio", "python-engineio", "uvloop")
    )
    pinning = (
        f"pinned to CPU {SERVER_CPU} (taskset), clients on CPU {CLIENT_CPU}"
        if pinned(SERVER_CPU)
        else "not pinned (no taskset or one CPU)"
    )
    headers = (
        f"browser-like headers ({header_size(result['headers'])} bytes beside aiohttp's own)"
        if args.browser_headers
        else "aiohttp's headers only"
    )
    traced = f"traced (tracemalloc, {args.trace} frames)" if args.trace else "untraced"
    print(
        f"# bench/memory.py on {platform.node()} ({os.cpu_count()} CPUs), "
        f"python {platform.python_version()}, {versions}"
    )
    server = "Node socket.io (bench/node/server.mjs)" if args.server == "node" else "gateway"
    print(f"# {server} on {'node' if args.server == 'node' else args.loop}, {pinning}; {traced}")
    print(
        f"# {n} clients, transport {args.transport}, {headers}; {CONNECTING_AT_ONCE} connecting "
        f"at a time (all in {result['connect_s']:.1f} s), each authenticated in the handshake "
        f"and joined to {ROOM}"
    )
    print(
        f"# measured before (after {WARM_UP_CLIENTS} warm-up clients came and went) and "
        f"{SETTLE_S:g} s after the last join; per connection = difference / {n}"
    )
    rss = (after["rss_kb"] - before["rss_kb"]) / n
    flag = "  (INFLATED by tracemalloc: quote an untraced run)" if args.trace else ""
    print(
        f"RSS: {before['rss_kb'] / 1024:.1f} MB -> {after['rss_kb'] / 1024:.1f} MB = "
        f"{rss:.1f} KB per connection{flag}"
    )
    if args.trace:
        traced_bytes = (after["traced_bytes"] - before["traced_bytes"]) / n
        print(f"tracemalloc: {traced_bytes:,.0f} bytes per connection (Python's allocations)")
    if args.server == "node":
        return

    tasks = deltas(before["tasks"], after["tasks"])
    print(f"tasks per connection: {sum(tasks.values()) / n:.2f}")
    for name, count in per_connection_rows(tasks, n, TOP, 0.01):
        print(f"  {count / n:6.2f}  {name}")

    if "timers" in after:
        timers = deltas(before["timers"], after["timers"])
        print(f"timers per connection: {sum(timers.values()) / n:.2f}")
        for name, count in per_connection_rows(timers, n, TOP, 0.01):
            print(f"  {count / n:6.2f}  {name}")
    else:
        print(
            f"timers per connection: not visible on {args.loop} (its timers are kept in C; "
            "uvloop.loop.UVTimer may be among the objects below; --loop asyncio counts them)"
        )

    objects = deltas(before["objects"], after["objects"])
    by_bytes = {k: [v[1], v[0]] for k, v in objects.items()}  # sorted by bytes
    print(
        f"objects per connection: {sum(v[0] for v in objects.values()) / n:.1f}, "
        f"{sum(v[1] for v in objects.values()) / n:,.0f} bytes (getsizeof, shallow); "
        f"top {TOP} by bytes:"
    )
    print(f"  {'count':>7}  {'bytes':>7}  type")
    for name, (size, count) in per_connection_rows(by_bytes, n, TOP, 0):
        print(f"  {count / n:7.2f}  {size / n:7.0f}  {name}")

    if args.trace:
        for grouping, title in (
            ("line", "allocating line"),
            ("caller", "innermost frame outside the standard library"),
        ):
            sites = deltas(before["sites"][grouping], after["sites"][grouping])
            print(f"tracemalloc, top {TOP} by {title} (bytes, blocks per connection):")
            for name, (size, blocks) in per_connection_rows(sites, n, TOP, 0):
                print(f"  {size / n:7.0f}  {blocks / n:6.2f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the gateway under tracemalloc keeping FRAMES frames (RSS then inflated)",
    )
    parser.add_argument("--browser-headers", action="store_true")
    parser.add_argument("--transport", choices=["websocket", "upgrade"], default="websocket")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--server", choices=["gateway", "node"], default="gateway")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server == "node" and args.trace:
        parser.error("--trace traces the gateway only")
    if args.serve:
        serve(args)
        return
    if pinned(SERVER_CPU) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CLIENT_CPU})
    report(args, asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
