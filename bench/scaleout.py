"""Benchmark: deliveries/s of two gateway processes behind nginx against one, same load, same run.

    .venv/bin/python bench/scaleout.py [--clients 1000] [--broadcasts 300] [--reps 2]

Each setup runs gateway processes on one embedded store and a private redis-server, behind
nginx running docs/nginx.conf as shipped (only its ports changed): one process pinned to CPU 0,
or two pinned to CPU 0 and CPU 1. The load generator (raw WebSocket clients, all in staff room
`shop-s1`, and a poster of `POST /broadcast` through nginx, 8 at a time) runs in this process,
unpinned. nginx's `ip_hash` balances by client address (its first three octets), so the clients
connect from eight source addresses (127.0.1.1 ... 127.0.8.1) and the split across processes
is printed. Setups are interleaved, `--reps` times each.

On a 2-CPU machine the generator shares the CPUs with two gateways: the ratio understates what
two processes on two free cores deliver.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED  # noqa: E402
from bench.changes import SECRET, Deliveries, free_port, pinned, start, token  # noqa: E402
from bench.rawclient import RawClient  # noqa: E402
from tests.gateways import Nginx, RedisServer  # noqa: E402

SERVICE_TOKEN = "bench-service-token-0123456789"
SOURCES = [f"127.0.{n}.1" for n in range(1, 9)]


async def run_setup(processes: int, args, redis_url: str) -> dict:
    workdir = tempfile.mkdtemp(prefix="bench-scaleout-")
    env = {
        "STORE_PATH": os.path.join(workdir, "bench.db"),
        "JWT_SECRET": SECRET,
        "BROADCAST_TOKEN": SERVICE_TOKEN,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "warning",
        **UNLIMITED,
        "PYTHONPATH": ROOT,
        "AUTH_TIMEOUT": "60",
    }
    ports = [free_port() for _ in range(processes)]
    command = [sys.executable, "-m", "realtime", "--port"]
    gateways = [
        await start([*pinned(n % (os.cpu_count() or 1)), *command, str(port)], env)
        for n, port in enumerate(ports)
    ]
    nginx = await Nginx(os.path.join(workdir, "nginx"), free_port(), ports).start()
    counter = Deliveries(measure_latency=False)
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(source, 0)))
        for source in SOURCES
    ]
    clients: list[RawClient] = []
    try:
        gate = asyncio.Semaphore(50)
        person = {"sub": "staff", "role": "staff", "shops": ["s1"]}

        async def one(n: int) -> None:
            async with gate:
                client = RawClient(sessions[n % len(sessions)], nginx.url, counter)
                await client.connect({"token": token({**person, "sub": f"staff-{n}"})})
                assert (await client.call("join_room", {"roomId": "shop-s1"}))["ok"]
                clients.append(client)

        await asyncio.gather(*(one(n) for n in range(args.clients)))
        split = []
        async with aiohttp.ClientSession() as http:
            for port in ports:
                async with http.get(
                    f"http://127.0.0.1:{port}/status",
                    headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
                ) as answer:
                    split.append((await answer.json())["connections"])
            counter.target = args.broadcasts * args.clients
            posting = asyncio.Semaphore(8)

            async def post(n: int) -> None:
                async with posting:
                    async with http.post(
                        f"{nginx.url}/broadcast",
                        json={"event": "notification", "data": {"n": n}, "rooms": ["shop-s1"]},
                        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
                    ) as answer:
                        assert answer.status == 202, answer.status

            started = time.perf_counter()
            await asyncio.gather(*(post(n) for n in range(args.broadcasts)))
            await asyncio.wait_for(counter.done.wait(), 300)
        return {
            "deliveries_per_s": counter.count / (counter.last_at - started),
            "split": split,
        }
    finally:
        for client in clients:
            await client.close()
        for session in sessions:
            await session.close()
        await nginx.stop()
        for gateway in gateways:
            gateway.terminate()
            await gateway.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=300)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    redis = await RedisServer(free_port()).start()
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for _ in range(args.reps):
            for processes in (1, 2):
                results[processes].append(await run_setup(processes, args, redis.url))
    finally:
        await redis.stop()
    print(
        f"# bench/scaleout.py on {platform.node()} ({os.cpu_count()} CPUs), "
        f"python {platform.python_version()}"
    )
    print(
        f"# {args.clients} WebSocket clients in one room through nginx (docs/nginx.conf), "
        f"{args.broadcasts} broadcasts posted through nginx, 8 at a time; "
        f"{args.reps} interleaved reps per setup; load generator unpinned"
    )
    rates = {}
    for processes, runs in results.items():
        rates[processes] = statistics.median(run["deliveries_per_s"] for run in runs)
        figures = ", ".join(f"{run['deliveries_per_s']:,.0f}" for run in runs)
        splits = "; ".join("/".join(map(str, run["split"])) for run in runs)
        print(
            f"{processes} process{'es' if processes > 1 else ''}: median "
            f"{rates[processes]:,.0f} deliveries/s (runs: {figures}; clients per process: "
            f"{splits})"
        )
    print(f"two processes / one: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
