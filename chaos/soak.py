"""One soak: the deployment up, the clients connected, producers and faults for `minutes`,
then everything healed, the clients given time to catch up, and every history judged."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from chaos import check
from chaos.clients import History, JsClients, PyClient
from chaos.cluster import (
    GATEWAY_PORT,
    LEASE_TTL_S,
    ROOT,
    SECRET,
    SERVICE_TOKEN,
    Gateway,
    Host,
    Nginx,
    Redis,
    free_subnets,
    missing_tools,
    sweep_stale_runs,
)
from chaos.faults import Faults
from chaos.producers import Bookings, Broadcasts, stop

SHOPS = ["s1", "s2", "s3"]
CUSTOMERS = [f"c{n}" for n in range(1, 7)]
STAFF = {f"st{n}": shop for n, shop in enumerate(SHOPS, 1)}
TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}
SLOW_LINK = "rate 200kbit burst 32kbit latency 400ms"  # what the slow readers' link carries
CATCH_UP_S = 120.0  # after the faults, how long the clients have to catch up
QUIET_S = 5.0  # and how long they are watched once they have, before the check


@dataclasses.dataclass
class Options:
    minutes: float = 1.0
    seed: int = 1
    py_clients: int = 12
    js_clients: int = 6
    slow_clients: int = 3
    broadcasts_per_s: float = 8.0
    writes_per_s: float = 4.0
    fault_every_s: float = 4.0
    json_path: str | None = None
    keep: bool = False  # keep the work directory (logs, store) after the run


@dataclasses.dataclass
class Outcome:
    report: dict[str, Any]
    verdicts: list[check.Verdict]
    histories: dict[str, History]
    workdir: str

    @property
    def passed(self) -> bool:
        report = self.report
        return not (
            any(v.violated for v in self.verdicts)
            or report["producers vs the log"]
            or report["resyncs logged"]
            or report["caught up after the faults, s"] is None
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _token(user: str, role: str, shops: list[str]) -> str:
    from realtime.access.auth import issue_token
    from realtime.config import load_settings

    settings = load_settings({"JWT_SECRET": SECRET, "STORE_PATH": os.devnull})
    return issue_token(settings, user, role, shops, ttl_s=4 * 3600)


def _user_and_rooms(n: int) -> tuple[str, str, list[str], list[str]]:
    """The n-th client's user, role, shops and the rooms it joins (its home room comes itself)."""
    if n % 3 == 0:
        user = f"st{n // 3 % 3 + 1}"
        shop = STAFF[user]
        return user, "staff", [shop], [f"shop-{shop}", f"availability-{shop}"]
    user = CUSTOMERS[n % len(CUSTOMERS)]
    return user, "customer", [], [f"availability-{SHOPS[n % len(SHOPS)]}"]


async def soak(options: Options) -> Outcome:
    lacking = missing_tools()
    if lacking:
        raise RuntimeError(f"the soak needs {', '.join(lacking)}")
    rng = random.Random(options.seed)
    sweep_stale_runs()
    run_id = str(os.getpid())  # in the names of its namespaces: a killed run is swept by the next
    workdir = tempfile.mkdtemp(prefix=f"chaos-{run_id}-")
    base = free_subnets(4)  # this run's: 10.77.base+0 .. base+3
    hosts = [Host(run_id, f"gw{n}", base + n) for n in range(3)]
    slow = Host(run_id, "slow", base + 3)
    forwarding = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    # the slow readers reach the gateways through this namespace: forwarded, whatever policy
    # the machine's FORWARD chain has
    forward_rules = [
        ["FORWARD", "-s", "10.77.0.0/16", "-j", "ACCEPT"],
        ["FORWARD", "-d", "10.77.0.0/16", "-j", "ACCEPT"],
    ]
    cleanup: list = []
    # a SIGTERM (a CI run cancelled) unwinds like Ctrl-C, through every `finally` below
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        for host in (*hosts, slow):
            cleanup.append(host.destroy)  # before it exists: a half-made host goes too
            host.create()
        subprocess.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        for rule in forward_rules:
            subprocess.run(["iptables", "-I", *rule], check=True)
            cleanup.append(lambda rule=rule: subprocess.run(["iptables", "-D", *rule], check=False))
        subprocess.run(
            ["tc", "qdisc", "add", "dev", slow.outside, "root", "tbf", *SLOW_LINK.split()],
            check=True,
        )
        return await _run(options, rng, workdir, hosts, slow)
    finally:
        gc.collect()  # the processes' pipes closed while the loop runs
        for undo in reversed(cleanup):
            undo()
        subprocess.run(["sysctl", "-qw", f"net.ipv4.ip_forward={forwarding}"], check=False)
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(
    options: Options, rng: random.Random, workdir: str, hosts: list[Host], slow: Host
) -> Outcome:
    redis = Redis(_free_port(), ["127.0.0.1", *(h.peer for h in hosts)], workdir)
    store_env = {"STORE_PATH": os.path.join(workdir, "store.db")}
    if os.environ.get("MONGODB_URL"):
        store_env = {"MONGODB_URL": os.environ["MONGODB_URL"], "MONGODB_DB": f"chaos_{os.getpid()}"}
    base_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MONGODB_", "REDIS_", "STORE_", "ADMIN_UI_"))
    }
    from bench import UNLIMITED

    gateways = [
        Gateway(
            host,
            {
                **base_env,
                **UNLIMITED,
                **store_env,
                "PYTHONPATH": ROOT,
                "JWT_SECRET": SECRET,
                "BROADCAST_TOKEN": SERVICE_TOKEN,
                "REDIS_URL": f"redis://{host.peer}:{redis.port}/0",
                "WATCHER_LEASE_TTL": str(LEASE_TTL_S),
                "LOG_LEVEL": "warning",
            },
            workdir,
        )
        for host in hosts
    ]
    nginx = Nginx(_free_port(), [f"{h.address}:{GATEWAY_PORT}" for h in hosts], workdir)
    from realtime.config import load_settings
    from server.app import make_store

    store = make_store(load_settings({**store_env, "JWT_SECRET": SECRET}))
    await store.open()
    py: list[PyClient] = []
    js_groups: list[JsClients] = []
    histories: dict[str, History] = {}
    tasks: list[asyncio.Task] = []  # the producers and the faults
    try:
        await redis.start()
        for gateway in gateways:
            await gateway.start()
        await nginx.start()
        # -- clients, connected before anything is published: their first cursor is the log's start
        urls = [nginx.url, *(g.url for g in gateways)]
        for n in range(options.py_clients):
            transport = list(TRANSPORTS)[n % 3]
            url = urls[n % len(urls)]
            user, role, shops, rooms = _user_and_rooms(n)
            via = "nginx" if url == nginx.url else "direct"
            history = History(f"py{n}", f"py-{transport} {via}", user, [f"user-{user}", *rooms])
            histories[history.name] = history
            py.append(
                PyClient(history, url, TRANSPORTS[transport], _token(user, role, shops), rooms)
            )
        await asyncio.gather(*(client.start() for client in py))
        await asyncio.wait_for(asyncio.gather(*(client.ready for client in py)), 60)
        for prefix, count, label, group_urls in (
            ([], options.js_clients, "js", urls),
            (slow.command(), options.slow_clients, "slow", [g.url for g in gateways]),
        ):
            configs = []
            for n in range(count):
                transport = list(TRANSPORTS)[n % 3] if label == "js" else "websocket"
                user, role, shops, rooms = _user_and_rooms(n + 1)
                name = f"{label}{n}"
                url = group_urls[n % len(group_urls)]
                histories[name] = History(
                    name, f"js-{transport} {label}", user, [f"user-{user}", *rooms]
                )
                configs.append(
                    {
                        "name": name,
                        "url": url,
                        "path": "/socket.io/",
                        "transports": TRANSPORTS[transport],
                        "token": _token(user, role, shops),
                        "rooms": rooms,
                    }
                )
            if configs:
                group = JsClients(
                    histories, configs, prefix, os.path.join(workdir, f"{label}-clients.log")
                )
                await group.start()
                js_groups.append(group)
        before = await _figures(gateways)
        # -- the soak
        broadcasts = Broadcasts(
            urls,
            [f"shop-{s}" for s in SHOPS] + [f"availability-{s}" for s in SHOPS] + ["shop-s9"],
            CUSTOMERS + list(STAFF),
            options.broadcasts_per_s,
            random.Random(rng.random()),
        )
        bookings = Bookings(
            store, CUSTOMERS, SHOPS, options.writes_per_s, random.Random(rng.random())
        )
        faults = Faults(gateways, redis, py, random.Random(rng.random()), options.fault_every_s)
        started = time.time()
        tasks += [asyncio.ensure_future(t.run()) for t in (broadcasts, bookings, faults)]
        await asyncio.sleep(options.minutes * 60)
        for task in tasks:
            await stop(task)  # the faults heal as they stop
        for gateway in gateways:  # whatever a fault's heal could not do
            if not gateway.alive:
                await gateway.start()
        if not redis.alive:
            await redis.start()
        # -- the clients catch up: every one of them has everything of its rooms, or time is up
        log = await _log(store)
        caught_up = await _caught_up(histories, store, CATCH_UP_S)
        log = await _log(store)
        after = await _figures(gateways)
    finally:
        for task in tasks:  # (already stopped, unless the run failed on the way)
            await stop(task)
        for client in py:
            await client.stop()
        for group in js_groups:
            await group.stop()
        for process in (nginx, *gateways, redis):
            await process.stop()
        await store.close()
    rooms_of = check.rooms_by_id(log)
    verdicts = [check.judge(h, rooms_of) for h in histories.values()]
    report = _report(
        options,
        log,
        histories,
        verdicts,
        faults,
        broadcasts,
        bookings,
        gateways,
        before,
        after,
        time.time() - started,
        caught_up,
    )
    outcome = Outcome(report, verdicts, histories, workdir)
    if options.json_path:
        with open(options.json_path, "w") as out:
            json.dump(report, out, indent=2)
    return outcome


async def _log(store) -> list:
    events, after = [], 0
    while batch := await store.events_after(after, 5000):
        events.extend(batch)
        after = batch[-1].sequence
    return events


async def _caught_up(histories: dict[str, History], store, within_s: float) -> float | None:
    """Seconds until every client has delivered every event of its rooms, and still has
    `QUIET_S` later with nothing new logged (what a healed gateway flushes late, duplicates
    included, is seen before the check); None if not within `within_s`."""
    start = time.time()
    quiet_since: tuple[float, int] | None = None  # (when, the log's length then)
    while time.time() - start < within_s:
        log = await _log(store)
        rooms_of = check.rooms_by_id(log)
        if all(not check.judge(h, rooms_of).missing for h in histories.values()):
            if quiet_since is None or quiet_since[1] != len(log):
                quiet_since = (time.time(), len(log))
            elif time.time() - quiet_since[0] >= QUIET_S:
                return round(quiet_since[0] - start, 1)
        else:
            quiet_since = None
        await asyncio.sleep(1)  # looked at again: the clients report nothing to wait on
    return None


async def _figures(gateways: list[Gateway]) -> dict[str, Any]:
    figures = {}
    for gateway in gateways:
        status = await gateway.status() or {}
        figures[gateway.name.split("-")[-1]] = {
            "rss_kb": gateway.rss_kb(),
            "tasks": status.get("tasks"),
            "connections": status.get("connections"),
        }
    return figures


def _report(
    options,
    log,
    histories,
    verdicts,
    faults,
    broadcasts,
    bookings,
    gateways,
    before,
    after,
    elapsed_s,
    caught_up,
) -> dict[str, Any]:
    delays = check.percentiles(check.delays_ms(list(histories.values()), log))
    return {
        "how": {
            "command": f"python -m chaos --minutes {options.minutes:g} --seed {options.seed}",
            "seed": options.seed,
            "minutes": options.minutes,
            "clients": {kind: n for kind, n in Counter(h.kind for h in histories.values()).items()},
            "rates": {
                "broadcasts/s": options.broadcasts_per_s,
                "writes/s": options.writes_per_s,
                "fault every s": options.fault_every_s,
            },
            "machine": f"{os.cpu_count()} CPUs",
            "elapsed_s": round(elapsed_s, 1),
        },
        "events published": len(log),
        "events by name": dict(Counter(e.name for e in log)),
        "deliveries expected": sum(v.expected for v in verdicts),
        "deliveries seen": sum(v.delivered for v in verdicts),
        "duplicates": sum(len(v.duplicates) for v in verdicts),
        "duplicates the protocol explains": sum(v.explained_duplicates for v in verdicts),
        "raw duplicates the JS library dropped": sum(h.raw_duplicates for h in histories.values()),
        "missing": sum(len(v.missing) for v in verdicts),
        "reorders": sum(len(v.reorders) for v in verdicts),
        "outside its rooms": sum(len(v.extra) for v in verdicts),
        "gaps and resyncs": sum(v.refetches for v in verdicts),
        "resyncs logged": check.resyncs_logged(log),
        "producers vs the log": check.producers_problems(log, broadcasts, bookings)[:20],
        "reconnections": sum(max(0, h.connects - 1) for h in histories.values()),
        "caught up after the faults, s": caught_up,
        "delivery delay ms": {k: round(v, 1) for k, v in delays.items()},
        "faults injected": dict(faults.injected),
        "fault log": faults.log[:200],
        "gateway starts": {g.name.split("-")[-1]: g.starts for g in gateways},
        "broadcasts": dict(broadcasts.counts),
        "store writes": dict(bookings.counts),
        "gateways before": before,
        "gateways after": after,
    }


def print_outcome(outcome: Outcome, out=sys.stdout) -> None:
    report = outcome.report
    print(json.dumps(report, indent=2), file=out)
    violated = [v for v in outcome.verdicts if v.violated]
    if outcome.passed:
        print(f"PASSED: seed {report['how']['seed']}, no client saw a violation", file=out)
        return
    if not violated:
        print(f"FAILED: seed {report['how']['seed']}: see the report above", file=out)
        return
    first = violated[0]
    history = outcome.histories[first.client]
    print(f"FAILED: seed {report['how']['seed']} (replay: {report['how']['command']})", file=out)
    print(
        f"{len(violated)} client(s) violated; the first, {first.client} ({history.kind}, "
        f"{history.user}, rooms {history.rooms}):",
        file=out,
    )
    for what in ("missing", "extra", "duplicates", "reorders"):
        values = getattr(first, what)
        if values:
            print(f"  {what}: {len(values)}: {values[:20]}", file=out)
    if history.refetches:
        print(f"  gaps/resyncs: {history.refetches[:5]}", file=out)
    print("  its history (latest last):", file=out)
    for line in history.timeline[-60:]:
        print(f"    {line}", file=out)
    print(f"  logs: {outcome.workdir} (kept with --keep)", file=out)
