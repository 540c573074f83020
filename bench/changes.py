"""Benchmark: booking changes -> live events at 2,000 connected clients.

    .venv/bin/python bench/changes.py [--clients 2000] [--rate 100] [--seconds 10]
                                      [--burst 3000] [--compression]

The gateway runs as its own process (`python -m realtime`, embedded store) pinned to CPU 0;
this process (the clients and the writer) runs on CPU 1. Each booking change reaches its
customer, the 5 staff of its shop, 5 admins and the 20 watchers of the shop's availability room
(31 deliveries: a `reservation_update` to 11 sockets, an `availability_update` to 20).

It prints:
- change -> client latency p50/p95/p99 at a fixed rate of changes (written to the store from
  this process, measured from just before the write to the client's receipt);
- delivered messages/s at saturation (changes written as fast as possible), beside a bare
  python-socketio server emitting the same events to the same rooms (`bench/bare_server.py`);
- the gateway's RSS per idle connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

import aiohttp
import jwt
from bson import ObjectId

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED, free_port  # noqa: E402
from bench.rawclient import RawClient  # noqa: E402
from storage.sqlite.store import SqliteStore  # noqa: E402

SECRET = "bench-secret-0123456789-abcdefghijklmnop"
SHOPS = [f"s{n}" for n in range(10)]
STAFF_PER_SHOP, ADMINS, WATCHERS_PER_SHOP = 5, 5, 20
DELIVERIES_PER_CHANGE = 1 + STAFF_PER_SHOP + ADMINS + WATCHERS_PER_SHOP
SLOT = {"startsAt": "2026-11-21T10:00:00.000Z", "durationMinutes": 60}


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def population(clients: int) -> list[dict]:
    """Who connects: role, user id and the rooms to join."""
    people = []
    for shop in SHOPS:
        people += [
            {
                "sub": f"staff-{shop}-{n}",
                "role": "staff",
                "shops": [shop],
                "rooms": [f"shop-{shop}"],
            }
            for n in range(STAFF_PER_SHOP)
        ]
        people += [
            {
                "sub": f"watcher-{shop}-{n}",
                "role": "customer",
                "shops": [],
                "rooms": [f"availability-{shop}"],
            }
            for n in range(WATCHERS_PER_SHOP)
        ]
    people += [
        {"sub": f"admin-{n}", "role": "admin", "shops": [], "rooms": ["admin-reservations"]}
        for n in range(ADMINS)
    ]
    customers = clients - len(people)
    if customers < 1:
        raise SystemExit(f"--clients must be more than {len(people)}")
    people += [
        {"sub": f"c{n}", "role": "customer", "shops": [], "rooms": []} for n in range(customers)
    ]
    return people


def token(person: dict) -> str:
    claims = {
        "sub": person["sub"],
        "role": person["role"],
        "shop_ids": person["shops"],
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def start(command: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE
    )
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
    if "listening" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    return process


async def connect_everyone(
    session, url, people, on_event, gateway: bool, compress: int = 0
) -> list[RawClient]:
    gate = asyncio.Semaphore(50)
    clients: list[RawClient] = []

    async def one(person):
        async with gate:
            client = RawClient(session, url, on_event, compress)
            auth = (
                {"token": token(person)}
                if gateway
                else {"rooms": person["rooms"], "sub": person["sub"]}
            )
            await client.connect(auth)
            if gateway:
                for room in person["rooms"]:
                    answer = await client.call("join_room", {"roomId": room})
                    assert answer["ok"], answer
            clients.append(client)

    await asyncio.gather(*(one(p) for p in people))
    return clients


class Deliveries:
    """Counts event frames; with latency on, parses them and measures against write times."""

    def __init__(self, measure_latency: bool):
        self.measure_latency = measure_latency
        self.count = 0
        self.first_at = self.last_at = 0.0
        self.written_at: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.target = 0
        self.done = asyncio.Event()

    def __call__(self, frame: str) -> None:
        now = time.perf_counter()
        self.count += 1
        if self.count == 1:
            self.first_at = now
        self.last_at = now
        if self.measure_latency:
            payload = json.loads(frame[2:])[1]
            written = self.written_at.get(payload.get("reservationId"))
            if written is not None:
                self.latencies_ms.append((now - written) * 1000)
        if self.target and self.count >= self.target:
            self.done.set()

    def reset(self, measure_latency: bool, target: int) -> None:
        self.__init__(measure_latency)
        self.target = target


async def write_changes(
    store: SqliteStore, customers: list[str], count: int, rate: float | None, deliveries: Deliveries
) -> float:
    """Insert `count` bookings, at `rate` per second or as fast as possible; returns seconds."""
    started = time.perf_counter()
    rng = random.Random(7)
    for n in range(count):
        if rate:
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the fixed write rate itself, not synchronisation
        booking_id = str(ObjectId())
        deliveries.written_at[booking_id] = time.perf_counter()
        await store.insert_document(
            "bookings",
            {
                "_id": booking_id,
                "customerId": rng.choice(customers),
                "shopId": SHOPS[n % len(SHOPS)],
                "status": "pending",
                **SLOT,
            },
        )
    return time.perf_counter() - started


async def bench_gateway(args, people, deliveries) -> dict:
    workdir = tempfile.mkdtemp(prefix="bench-gateway-")
    store_path = os.path.join(workdir, "bench.db")
    port = free_port()
    server = await start(
        [*pinned(0), sys.executable, "-m", "realtime", "--port", str(port)],
        {
            "STORE_PATH": store_path,
            "JWT_SECRET": SECRET,
            "LOG_LEVEL": "warning",
            "WS_COMPRESSION": "true" if args.compression else "false",
            "PYTHONPATH": ROOT,
            "AUTH_TIMEOUT": "60",
            "WATCHER_POLL_MS": str(args.poll_ms),
            **UNLIMITED,
        },
    )
    url = f"http://127.0.0.1:{port}"
    store = SqliteStore(store_path)
    await store.open()
    await store.start_maintenance()  # the writer's commits stay quick too
    figures = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            rss_before = rss_kb(server.pid)
            offer = 15 if args.compression else 0  # the client's compression offer
            clients = await connect_everyone(
                session, url, people, deliveries, gateway=True, compress=offer
            )
            rss_after = rss_kb(server.pid)
            figures["rss_per_connection_kb"] = (rss_after - rss_before) / len(clients)
            figures["rss_before_mb"], figures["rss_after_mb"] = rss_before / 1024, rss_after / 1024
            customers = [p["sub"] for p in people if p["sub"].startswith("c")]

            count = int(args.rate * args.seconds)
            deliveries.reset(True, count * DELIVERIES_PER_CHANGE)
            await write_changes(store, customers, count, args.rate, deliveries)
            await asyncio.wait_for(deliveries.done.wait(), 60)
            figures["latency_ms"] = deliveries.latencies_ms

            deliveries.reset(False, args.burst * DELIVERIES_PER_CHANGE)
            await write_changes(store, customers, args.burst, None, deliveries)
            # measured once the writer is done (it shares the clients' CPU), while the gateway
            # works through the backlog the writer left
            written_at, delivered_then = time.perf_counter(), deliveries.count
            await asyncio.wait_for(deliveries.done.wait(), 120)
            figures["backlog_share"] = 1 - delivered_then / deliveries.count
            figures["saturation_per_s"] = (deliveries.count - delivered_then) / (
                deliveries.last_at - written_at
            )
            for client in clients:
                await client.close()
    finally:
        await store.close()
        server.terminate()
        await server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


async def bench_bare(args, people, deliveries) -> float:
    port = free_port()
    server = await start(
        [*pinned(0), sys.executable, os.path.join("bench", "bare_server.py"), str(port)],
        {"PYTHONPATH": ROOT},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            clients = await connect_everyone(session, url, people, deliveries, gateway=False)
            customers = [p["sub"] for p in people if p["sub"].startswith("c")]
            deliveries.reset(False, args.burst * DELIVERIES_PER_CHANGE)
            reservation = {
                "status": "pending",
                "previousStatus": None,
                "updateType": "created",
                "userId": "c1",
                "shopId": "s1",
                **SLOT,
                "timestamp": "2026-11-21T10:00:00.000Z",
            }
            availability = {
                "shopId": "s1",
                **SLOT,
                "available": False,
                "timestamp": "2026-11-21T10:00:00.000Z",
            }
            await session.post(
                f"{url}/blast",
                json={
                    "count": args.burst,
                    "customers": customers,
                    "shops": SHOPS,
                    "events": [
                        {
                            "name": "reservation_update",
                            "payload": reservation,
                            "rooms": [
                                "reservation-{n}",
                                "user-{customer}",
                                "shop-{shop}",
                                "admin-reservations",
                            ],
                        },
                        {
                            "name": "availability_update",
                            "payload": availability,
                            "rooms": ["availability-{shop}"],
                        },
                    ],
                },
            )
            await asyncio.wait_for(deliveries.done.wait(), 120)
            rate = deliveries.count / (deliveries.last_at - deliveries.first_at)
            for client in clients:
                await client.close()
    finally:
        server.terminate()
        await server.wait()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="changes/s, latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--burst", type=int, default=3000, help="changes, saturation phase")
    parser.add_argument(
        "--poll-ms",
        type=int,
        default=10,
        help="the gateway's WATCHER_POLL_MS (embedded store) [10]",
    )
    parser.add_argument(
        "--compression", action="store_true", help="run the gateway with WS_COMPRESSION=true"
    )
    args = parser.parse_args()
    if len(pinned(0)) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    people = population(args.clients)
    deliveries = Deliveries(False)

    gateway = await bench_gateway(args, people, deliveries)
    bare = await bench_bare(args, people, Deliveries(False))
    latency = gateway["latency_ms"]
    print(
        f"# bench/changes.py on {platform.node()} ({os.cpu_count()} CPUs), "
        f"python {platform.python_version()}"
    )
    print(
        f"# gateway pinned to CPU 0, clients + writer on CPU 1: {args.clients} WebSocket "
        f"clients, {DELIVERIES_PER_CHANGE} deliveries per change, WS compression "
        f"{'on' if args.compression else 'off'}, WATCHER_POLL_MS={args.poll_ms}"
    )
    print(
        f"latency at {args.rate:g} changes/s for {args.seconds:g}s ({len(latency)} deliveries): "
        f"p50 {percentile(latency, 50):.1f} ms, p95 {percentile(latency, 95):.1f} ms, "
        f"p99 {percentile(latency, 99):.1f} ms, max {max(latency):.1f} ms, "
        f"mean {statistics.fmean(latency):.1f} ms"
    )
    print(
        f"saturation ({args.burst} changes written as fast as possible; the gateway measured "
        f"over the {gateway['backlog_share']:.0%} of deliveries left after the writer "
        f"finished): gateway {gateway['saturation_per_s']:,.0f} deliveries/s; bare python-socketio "
        f"{bare:,.0f} deliveries/s ({gateway['saturation_per_s'] / bare:.0%} of bare)"
    )
    print(
        f"memory: gateway RSS {gateway['rss_before_mb']:.1f} MB idle -> "
        f"{gateway['rss_after_mb']:.1f} MB with {args.clients} clients = "
        f"{gateway['rss_per_connection_kb']:.1f} KB per connection"
    )


if __name__ == "__main__":
    asyncio.run(main())
