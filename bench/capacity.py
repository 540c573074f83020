"""Benchmark: how many idle connections a gateway process holds, what they cost, and how
processes behind nginx add up.

    flock /tmp/bench.lock .venv/bin/python bench/capacity.py [--phase single,cluster,scaling]
        [--single-clients 19000] [--cluster-clients 50000] [--rest 25]

- `single`: one gateway process (`python -m realtime`, embedded store in a temp dir) pinned to
  CPU 0, filled with `--single-clients` raw-WebSocket clients from Node load generators
  (bench/node/idle.mjs, at most `--per-generator` clients each) pinned to CPU 1, each client
  bound to one of several loopback source addresses (127.0.0.2, ...) so that no address runs
  out of ephemeral ports. Every client authenticates in the handshake (a customer of its own:
  its user room) and joins `availability-s1` (two rooms), then idles answering pings.
  Measured: the time to connect them all (handshakes 100 in flight per generator), RSS before
  and after, CPU at rest over `--rest` seconds (one ping interval: every client pinged once),
  `--broadcasts` single broadcasts to `availability-s1` (every client; deliveries/s from the
  POST to the last arrival, and latency percentiles), and `/health` probed every 50 ms
  throughout (its slowest answer, and how many took over 100 ms).
- `cluster`: the same with `--cluster-clients` over three gateway processes (REDIS_URL to a
  private redis-server), all pinned to CPU 0, behind nginx running docs/nginx.conf (pinned to
  CPU 1 with the generators). nginx's `ip_hash` balances on a client address's first three
  octets, so the sources are 127.0.K.1 with K chosen so that each process gets a third.
  Changed from the shipped config: the ports, and `worker_processes` (`--nginx-workers`):
  each nginx worker holds two files per client and a process here can open 20,000 at most.
- `scaling`: deliveries/s of N processes behind nginx against one, same run: `--fanout-clients`
  clients, `--fanout-broadcasts` broadcasts posted 8 at a time, processes pinned to CPU 0 (and
  CPU 1), generator and nginx unpinned; also per gateway CPU-second, the figure that
  extrapolates to more cores.

Prints a table per phase and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED  # noqa: E402
from bench.changes import SECRET, free_port, pinned, rss_kb, start  # noqa: E402
from tests.gateways import Nginx, RedisServer  # noqa: E402

SERVICE_TOKEN = "bench-capacity-service-token-0123456789"
ROOM = "availability-s1"
IDLE_JS = os.path.join(ROOT, "bench", "node", "idle.mjs")
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEALTH_EVERY_S = 0.05
HEALTH_SLOW_MS = 100.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def ip_hash(address: str, backends: int) -> int:
    """The backend nginx's `ip_hash` picks for an IPv4 address (all weights 1, all up)."""
    value = 89
    for octet in address.split(".")[:3]:
        value = (value * 113 + int(octet)) % 6271
    return value % backends


def sources_by_backend(backends: int, each: int) -> list[list[str]]:
    """`each` source addresses 127.0.K.1 per backend, that nginx's ip_hash sends there."""
    found: list[list[str]] = [[] for _ in range(backends)]
    for k in range(1, 255):
        address = f"127.0.{k}.1"
        if len(found[ip_hash(address, backends)]) < each:
            found[ip_hash(address, backends)].append(address)
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Generator:
    """One bench/node/idle.mjs process, driven line by line."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    @classmethod
    async def start(cls, url: str, first: int, clients: int, addresses: list[str], cpu: int | None):
        command = ["node", IDLE_JS, "--url", url, "--secret", SECRET, "--clients", str(clients)]
        command += ["--first", str(first), "--addresses", ",".join(addresses)]
        process = await asyncio.create_subprocess_exec(
            *(pinned(cpu) if cpu is not None else []),
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,  # an `arrivals` line holds one number per client
        )
        return cls(process)

    async def read(self) -> dict:
        line = await asyncio.wait_for(self.process.stdout.readline(), 600)
        if not line:
            raise RuntimeError("a load generator exited")
        answer = json.loads(line)
        if answer.get("event") == "error":
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    async def ask(self, command: str) -> dict:
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.ask("close"), 30)
            except (RuntimeError, TimeoutError, ConnectionError):
                self.process.kill()
            await self.process.wait()


class Health:
    """GET /health on each process every 50 ms until stopped: the slowest answers."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.latencies_ms: list[float] = []
        self.phase = "start"  # what the clients are doing: connect, rest, broadcast
        self.slow_by_phase: dict[str, list[float]] = {}
        self.failures = 0
        self._task: asyncio.Task | None = None

    def start(self) -> Health:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                for url in self.urls:
                    began = time.perf_counter()
                    try:
                        async with session.get(f"{url}/health") as answer:
                            await answer.read()
                            if answer.status != 200:
                                self.failures += 1
                    except (aiohttp.ClientError, TimeoutError):
                        self.failures += 1
                    took_ms = (time.perf_counter() - began) * 1000
                    self.latencies_ms.append(took_ms)
                    if took_ms > HEALTH_SLOW_MS:
                        self.slow_by_phase.setdefault(self.phase, []).append(round(took_ms))
                await asyncio.sleep(HEALTH_EVERY_S)

    async def stop(self) -> dict:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        slow = sum(1 for value in self.latencies_ms if value > HEALTH_SLOW_MS)
        return {
            "health_probes": len(self.latencies_ms),
            "health_max_ms": max(self.latencies_ms),
            "health_p99_ms": percentile(self.latencies_ms, 99),
            "health_over_100ms": slow,
            "health_failures": self.failures,
            "health_slow_by_phase": self.slow_by_phase,
        }


class Cluster:
    """Gateway processes on one store (with Redis when more than one), nginx in front of
    several; `url` is where clients and broadcasts go."""

    def __init__(self, processes: int, cpus: list[int | None], nginx_workers: int = 0):
        self.processes = processes
        self.cpus = cpus
        self.nginx_workers = nginx_workers
        self.workdir = tempfile.mkdtemp(prefix="bench-capacity-")
        self.gateways: list[asyncio.subprocess.Process] = []
        self.ports: list[int] = []
        self.redis: RedisServer | None = None
        self.nginx: Nginx | None = None

    async def start(self) -> Cluster:
        env = {
            "STORE_PATH": os.path.join(self.workdir, "bench.db"),
            "JWT_SECRET": SECRET,
            "BROADCAST_TOKEN": SERVICE_TOKEN,
            "LOG_LEVEL": "error",
            **UNLIMITED,
            "MAX_ROOMS_PER_SOCKET": "100",
            "PYTHONPATH": ROOT,
            "AUTH_TIMEOUT": "120",
        }
        if self.processes > 1:
            self.redis = await RedisServer(free_port()).start()
            env["REDIS_URL"] = self.redis.url
        for n in range(self.processes):
            port = free_port()
            cpu = self.cpus[n % len(self.cpus)]
            command = [sys.executable, "-m", "realtime", "--port", str(port)]
            self.gateways.append(
                await start([*(pinned(cpu) if cpu is not None else []), *command], env)
            )
            self.ports.append(port)
        if self.processes > 1:
            self.nginx = BenchNginx(os.path.join(self.workdir, "nginx"), free_port(), self.ports)
            self.nginx.workers = self.nginx_workers
            await self.nginx.start()
        return self

    @property
    def direct_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return self.nginx.url if self.nginx else self.direct_urls[0]

    def pids(self) -> list[int]:
        return [gateway.pid for gateway in self.gateways]

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.pids())

    def nginx_rss_kb(self) -> int:
        if not self.nginx:
            return 0
        master = self.nginx._process.pid
        return sum(rss_kb(pid) for pid in [master, *children(master)])

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    async def connections(self) -> list[int]:
        counts = []
        async with aiohttp.ClientSession() as session:
            for url in self.direct_urls:
                async with session.get(
                    f"{url}/status", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
                ) as answer:
                    counts.append((await answer.json())["connections"])
        return counts

    async def stop(self) -> None:
        if self.nginx:
            await self.nginx.stop()
        for gateway in self.gateways:
            gateway.terminate()
            await gateway.wait()
        if self.redis:
            await self.redis.stop()


class BenchNginx(Nginx):
    """docs/nginx.conf with its ports changed and, when asked, `worker_processes`: this
    machine caps every process at 20,000 open files, and a worker holds two per client."""

    workers = 0

    def config(self) -> str:
        text = super().config()
        if self.workers:
            text, count = re.subn(
                r"worker_processes \w+;", f"worker_processes {self.workers};", text
            )
            assert count == 1, "docs/nginx.conf: no worker_processes"
        return text


async def post_broadcast(session: aiohttp.ClientSession, url: str, n: int) -> None:
    body = {"event": "notification", "data": {"title": "capacity", "n": n}, "rooms": [ROOM]}
    async with session.post(
        f"{url}/broadcast", json=body, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
    ) as answer:
        assert answer.status == 202, answer.status


async def one_broadcast(cluster: Cluster, generators: list[Generator], n: int) -> dict:
    for generator in generators:
        await generator.ask("mark")
    async with aiohttp.ClientSession() as session:
        posted_at = time.time() * 1000
        await post_broadcast(session, cluster.url, n)
    times = []
    for generator in generators:
        times += (await generator.ask("arrivals 1"))["times"]
    latencies = [at - posted_at for at in times]
    return {
        "deliveries": len(times),
        "deliveries_per_s": len(times) / (max(latencies) / 1000),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "last_ms": max(latencies),
    }


async def fill(args, cluster: Cluster, clients: int, sources: list[list[str]]) -> dict:
    """Connect `clients` idle clients through `cluster.url`, measure, broadcast, close."""
    generators_needed = -(-clients // args.per_generator)
    per_generator = -(-clients // generators_needed)
    health = Health(cluster.direct_urls).start()
    rss_before = cluster.rss_kb()
    nginx_before = cluster.nginx_rss_kb()
    generators: list[Generator] = []
    try:
        health.phase = "connect"
        began, connect_cpu0 = time.perf_counter(), cluster.cpu_seconds()
        for g in range(generators_needed):
            count = min(per_generator, clients - g * per_generator)
            # each generator spreads over every backend's addresses, round-robin by client
            addresses = [group[g % len(group)] for group in sources]
            generators.append(
                await Generator.start(cluster.url, g * per_generator, count, addresses, 1)
            )
        readies = [await generator.read() for generator in generators]
        connect_s = time.perf_counter() - began
        connect_cpu_pct = (cluster.cpu_seconds() - connect_cpu0) / connect_s * 100
        connected = sum(ready["connected"] for ready in readies)
        failures = [failure for ready in readies for failure in ready["first_failures"]]
        health.phase = "rest"
        await asyncio.sleep(args.settle)
        rss_after = cluster.rss_kb()
        nginx_after = cluster.nginx_rss_kb()
        pings0 = sum([(await generator.ask("stats"))["pings"] for generator in generators])
        cpu0, wall0 = cluster.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(args.rest)
        rest_cpu_pct = (cluster.cpu_seconds() - cpu0) / (time.perf_counter() - wall0) * 100
        stats = [await generator.ask("stats") for generator in generators]
        health.phase = "broadcast"
        broadcasts = [await one_broadcast(cluster, generators, n) for n in range(args.broadcasts)]
        after = [await generator.ask("stats") for generator in generators]
        split = await cluster.connections()
        health.phase = "close"
    finally:
        for generator in generators:
            await generator.stop()
        health_figures = await health.stop()
    best = min(broadcasts, key=lambda figures: figures["last_ms"])
    return {
        "processes": cluster.processes,
        "clients": clients,
        "connected": connected,
        "connect_failures": sum(ready["failed"] for ready in readies),
        "first_failures": failures[:3],
        "connections_per_process": split,
        "connect_s": connect_s,
        "connects_per_s": connected / connect_s,
        "connect_cpu_pct": connect_cpu_pct,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_per_conn_kb": (rss_after - rss_before) / max(1, connected),
        "nginx_rss_per_conn_kb": (nginx_after - nginx_before) / max(1, connected),
        "rest_cpu_pct": rest_cpu_pct,
        "rest_s": args.rest,
        "pings_in_rest": sum(s["pings"] for s in stats) - pings0,
        "broadcasts": broadcasts,
        "broadcast_deliveries_per_s": statistics.median(b["deliveries_per_s"] for b in broadcasts),
        "broadcast_p99_ms": best["p99_ms"],
        "broadcast_p99_ms_all": [b["p99_ms"] for b in broadcasts],
        "disconnects": sum(s["disconnects"] for s in after),
        "still_open": sum(s["open"] for s in after),
        **health_figures,
    }


async def single(args) -> dict:
    cluster = await Cluster(1, [0]).start()
    try:
        sources = [[f"127.0.0.{n}"] for n in range(2, 2 + args.sources)]
        return await fill(args, cluster, args.single_clients, sources)
    finally:
        await cluster.stop()


async def clustered(args) -> dict:
    cluster = await Cluster(3, [0], args.nginx_workers).start()
    try:
        # pinned after start: nginx (master and workers) shares CPU 1 with the generators
        master = cluster.nginx._process.pid
        for pid in [master, *children(master)]:
            os.sched_setaffinity(pid, {1})
        return await fill(args, cluster, args.cluster_clients, sources_by_backend(3, 4))
    finally:
        await cluster.stop()


async def fanout(processes: int, args) -> dict:
    cluster = await Cluster(processes, [0, 1], args.nginx_workers).start()
    generator = None
    try:
        sources = sources_by_backend(processes, 2)
        addresses = [address for group in sources for address in group]
        generator = await Generator.start(cluster.url, 0, args.fanout_clients, addresses, None)
        ready = await generator.read()
        await generator.ask("mark")
        cpu0 = [cpu_seconds(pid) for pid in cluster.pids()]
        gate = asyncio.Semaphore(8)
        async with aiohttp.ClientSession() as session:

            async def post(n: int) -> None:
                async with gate:
                    await post_broadcast(session, cluster.url, n)

            posted_at = time.time() * 1000
            await asyncio.gather(*(post(n) for n in range(args.fanout_broadcasts)))
        times = (await generator.ask(f"arrivals {args.fanout_broadcasts}"))["times"]
        seconds = (max(times) - posted_at) / 1000
        cpu = [cpu_seconds(pid) - before for pid, before in zip(cluster.pids(), cpu0, strict=True)]
        return {
            "processes": processes,
            "clients": ready["connected"],
            "connections_per_process": await cluster.connections(),
            "deliveries": len(times),
            "deliveries_per_s": len(times) / seconds,
            "per_process_deliveries_per_s": len(times) / seconds / processes,
            "gateway_cpu_pct": [value / seconds * 100 for value in cpu],
            "deliveries_per_gateway_cpu_s": len(times) / sum(cpu),
        }
    finally:
        if generator:
            await generator.stop()
        await cluster.stop()


async def scaling(args) -> list[dict]:
    runs = []
    for _ in range(args.reps):
        for processes in (1, 2):
            runs.append(await fanout(processes, args))
    return runs


def machine() -> dict:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?"
        )
    with (
        open("/proc/sys/net/ipv4/ip_local_port_range") as ports,
        open("/proc/sys/fs/file-max") as file_max,
    ):
        return {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "cpu_model": model,
            "python": platform.python_version(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "file_max": int(file_max.read()),
            "ephemeral_ports": ports.read().split(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }


def print_fill(name: str, figures: dict) -> None:
    print(
        f"\n## {name}: {figures['connected']:,} of {figures['clients']:,} clients "
        f"({figures['processes']} process(es); per process {figures['connections_per_process']})"
    )
    rows = [
        (
            "time to connect all",
            f"{figures['connect_s']:.1f} s ({figures['connects_per_s']:,.0f}/s; gateway CPU "
            f"{figures['connect_cpu_pct']:.0f}%)",
        ),
        (
            "gateway RSS before / after",
            f"{figures['rss_before_kb'] / 1024:,.0f} / {figures['rss_after_kb'] / 1024:,.0f} MB",
        ),
        ("RSS per idle connection", f"{figures['rss_per_conn_kb']:.1f} KB"),
        (
            "CPU at rest (sum of processes)",
            f"{figures['rest_cpu_pct']:.1f}% over {figures['rest_s']} s "
            f"({figures['pings_in_rest']:,} pings)",
        ),
        (
            "one broadcast to all: deliveries/s",
            f"{figures['broadcast_deliveries_per_s']:,.0f} "
            f"(median of {len(figures['broadcasts'])})",
        ),
        (
            "  p99 / last (ms)",
            "; ".join(f"{b['p99_ms']:.0f} / {b['last_ms']:.0f}" for b in figures["broadcasts"]),
        ),
        (
            "/health: slowest, p99, over 100 ms",
            f"{figures['health_max_ms']:.1f} ms, {figures['health_p99_ms']:.1f} ms, "
            f"{figures['health_over_100ms']} of {figures['health_probes']} "
            f"(failed {figures['health_failures']})",
        ),
        ("/health over 100 ms, by phase (ms)", json.dumps(figures["health_slow_by_phase"])),
        ("disconnects / still open", f"{figures['disconnects']} / {figures['still_open']:,}"),
    ]
    if figures["nginx_rss_per_conn_kb"]:
        rows.insert(3, ("nginx RSS per connection", f"{figures['nginx_rss_per_conn_kb']:.1f} KB"))
    for label, value in rows:
        print(f"| {label:<36} | {value} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", default="single,cluster,scaling")
    parser.add_argument("--single-clients", type=int, default=19_000)
    parser.add_argument("--cluster-clients", type=int, default=50_000)
    parser.add_argument("--per-generator", type=int, default=12_500)
    parser.add_argument("--sources", type=int, default=4, help="source addresses, single")
    parser.add_argument("--nginx-workers", type=int, default=8)
    parser.add_argument("--rest", type=float, default=25.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--fanout-clients", type=int, default=2000)
    parser.add_argument("--fanout-broadcasts", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    phases = args.phase.split(",")
    found: dict = {"machine": machine(), "args": vars(args)}
    print(f"# bench/capacity.py {' '.join(sys.argv[1:])}: {json.dumps(found['machine'])}")
    if "single" in phases:
        found["single"] = await single(args)
        print_fill("one process, direct", found["single"])
    if "cluster" in phases:
        found["cluster"] = await clustered(args)
        print_fill("three processes behind nginx", found["cluster"])
    if "scaling" in phases:
        found["scaling"] = await scaling(args)
        print(
            f"\n## N processes behind nginx against one: {args.fanout_clients} clients, "
            f"{args.fanout_broadcasts} broadcasts 8 at a time"
        )
        for run in found["scaling"]:
            print(
                f"| {run['processes']} | {run['deliveries_per_s']:,.0f} deliveries/s | "
                f"{run['per_process_deliveries_per_s']:,.0f} per process | gateway CPU "
                f"{'/'.join(f'{pct:.0f}%' for pct in run['gateway_cpu_pct'])} | "
                f"{run['deliveries_per_gateway_cpu_s']:,.0f} per gateway CPU-second | "
                f"split {run['connections_per_process']} |"
            )
    print(json.dumps(found))


if __name__ == "__main__":
    asyncio.run(main())
