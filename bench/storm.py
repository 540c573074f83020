"""Benchmark: connection storms, connect -> authenticate -> join -> disconnect, as fast as the
gateway takes them, and what they leave behind.

    .venv/bin/python bench/storm.py [--cycles 5000] [--warmup 500] [--concurrency 50]
                                    [--mix ws=5,ws-auth=2,polling=2,upgrade=1]

The gateway runs as its own process (`python -m realtime`, embedded store in a fresh temp
file) pinned to CPU 0; this process (the clients) runs on CPU 1. Its limits are raised
(`RATE_LIMIT_CONNECTIONS`, `MAX_CONNECTIONS_PER_USER`) so that the storm measures the gateway,
not its refusals. Each cycle is one client from nothing to gone:

- ws:      raw WebSocket, token in the handshake, `auth_success`, `join_room` + ack, close;
- ws-auth: raw WebSocket, handshake without a token, `authenticate` + ack, `join_room` + ack,
           a Socket.IO disconnect packet, close;
- polling: python-socketio's `AsyncClient` over long-polling, `join_room` + ack, disconnect;
- upgrade: the same, long-polling first then upgraded to WebSocket.

Cycles are spread over 500 users and 50 `availability-*` rooms. A warm-up round comes first;
then the storm. It prints cycles/s, each kind's cycle latency p50/p95/p99, the gateway's RSS
after the warm-up, after the storm and once it settled, and its asyncio task count (`/status`
`tasks`) before and after. `tests/test_storms.py` runs the same storm and checks the leftovers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiohttp
import jwt
import socketio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.changes import free_port, percentile, pinned, rss_kb, start  # noqa: E402

SECRET = "bench-secret-0123456789-abcdefghijklmnop"
BROADCAST_TOKEN = "bench-broadcast-token-0123456789"
USERS, ROOMS = 500, 50
CYCLE_TIMEOUT_S = 20.0
KINDS = ("ws", "ws-auth", "polling", "upgrade")
DEFAULT_MIX = {"ws": 5, "ws-auth": 2, "polling": 2, "upgrade": 1}
# what the storm's gateway is given: its own limits must not refuse the storm
STORM_ENV = {"RATE_LIMIT_CONNECTIONS": "100000", "MAX_CONNECTIONS_PER_USER": "100000"}
SERVER_CPU, CLIENT_CPU = 0, 1


def token(secret: str, sub: str) -> str:
    claims = {"sub": sub, "role": "customer", "shop_ids": [], "exp": int(time.time()) + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


class CycleFailed(Exception):
    """A cycle got an answer it should not have (a refusal, a failed ack)."""


async def _until(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    """The next text frame starting with `prefix` (pings answered, other frames skipped)."""
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise CycleFailed(f"connection ended waiting for {prefix!r}: {message.type!r}")
        text = message.data
        if text == "2":
            await ws.send_str("3")
        elif text.startswith("44"):
            raise CycleFailed(f"refused: {text[:200]}")
        elif text.startswith(prefix):
            return text


def _ack_ok(frame: str, prefix: str) -> None:
    answer = json.loads(frame[len(prefix) :])[0]
    if not (isinstance(answer, dict) and answer.get("ok") is True):
        raise CycleFailed(f"{prefix}: {frame[:200]}")


async def ws_cycle(
    session: aiohttp.ClientSession, url: str, bearer: str, room: str, in_handshake: bool
) -> None:
    """One raw WebSocket client: handshake, authenticate (in it or by event), join, leave."""
    ws = await session.ws_connect(
        url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket", autoping=False
    )
    try:
        await _until(ws, "0{")
        await ws.send_str("40" + json.dumps({"token": bearer} if in_handshake else {}))
        await _until(ws, "40")
        if in_handshake:
            await _until(ws, '42["auth_success"')
        else:
            await ws.send_str("421" + json.dumps(["authenticate", {"token": bearer}]))
            _ack_ok(await _until(ws, "431"), "431")
        await ws.send_str("422" + json.dumps(["join_room", {"roomId": room}]))
        _ack_ok(await _until(ws, "432"), "432")
        if not in_handshake:
            await ws.send_str("41")  # a Socket.IO disconnect first, as client libraries do
    finally:
        await ws.close()


async def socketio_cycle(
    session: aiohttp.ClientSession, url: str, bearer: str, room: str, transports: list[str]
) -> None:
    """One python-socketio client over `transports`: connect with a token, join, disconnect."""
    client = socketio.AsyncClient(reconnection=False, http_session=session)
    authenticated = asyncio.get_running_loop().create_future()
    client.on("auth_success", lambda _: authenticated.done() or authenticated.set_result(None))
    try:
        await client.connect(
            url, transports=transports, auth={"token": bearer}, wait_timeout=CYCLE_TIMEOUT_S
        )
        await authenticated
        answer = await client.call("join_room", {"roomId": room}, timeout=CYCLE_TIMEOUT_S)
        if not (isinstance(answer, dict) and answer.get("ok") is True):
            raise CycleFailed(f"join_room: {answer}")
    finally:
        await client.disconnect()


def schedule(mix: dict[str, int]) -> list[str]:
    """The kinds of consecutive cycles, interleaved by weight (ws, ws-auth, polling, ws, ...)."""
    order: list[str] = []
    left = dict(mix)
    while any(left.values()):
        for kind in KINDS:
            if left.get(kind, 0) > 0:
                order.append(kind)
                left[kind] -= 1
    return order


@dataclasses.dataclass
class StormResult:
    seconds: float
    latencies_s: dict[str, list[float]]
    failures: list[str]

    @property
    def cycles(self) -> int:
        return sum(len(values) for values in self.latencies_s.values())

    @property
    def per_s(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0


async def storm(
    url: str,
    secret: str,
    cycles: int,
    concurrency: int,
    mix: dict[str, int] | None = None,
    first: int = 0,
) -> StormResult:
    """`cycles` clients, `concurrency` at a time, each from nothing to gone; the cycles that
    failed are reported (with what they got), not raised."""
    order = schedule(mix or DEFAULT_MIX)
    tokens = [token(secret, f"storm-{n}") for n in range(USERS)]
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    failures: list[str] = []
    numbers = iter(range(first, first + cycles))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        runners: dict[str, Callable[[str, str], Awaitable[None]]] = {
            "ws": lambda bearer, room: ws_cycle(session, url, bearer, room, True),
            "ws-auth": lambda bearer, room: ws_cycle(session, url, bearer, room, False),
            "polling": lambda bearer, room: socketio_cycle(session, url, bearer, room, ["polling"]),
            "upgrade": lambda bearer, room: socketio_cycle(
                session, url, bearer, room, ["polling", "websocket"]
            ),
        }

        async def worker() -> None:
            for n in numbers:  # shared: each number is taken by one worker
                kind = order[n % len(order)]
                began = time.perf_counter()
                try:
                    async with asyncio.timeout(CYCLE_TIMEOUT_S):
                        await runners[kind](tokens[n % USERS], f"availability-s{n % ROOMS}")
                except Exception as exc:  # reported, and the storm goes on
                    failures.append(f"cycle {n} ({kind}): {type(exc).__name__}: {exc}"[:300])
                    continue
                latencies[kind].append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return StormResult(seconds, latencies, failures)


async def status(url: str, service_token: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/status", headers={"Authorization": f"Bearer {service_token}"}
        ) as answer:
            answer.raise_for_status()
            return await answer.json()


async def settled(url: str, service_token: str, within_s: float = 20.0) -> dict:
    """/status once nothing of the storm is left (no connection, no transport, no room) and
    the task count has stopped falling, or as it is after `within_s`."""
    deadline = time.monotonic() + within_s
    tasks: list[int] = []
    while True:
        figures = await status(url, service_token)
        clean = figures["transports"] == figures["connections"] == figures["roomCount"] == 0
        tasks = [*tasks[-2:], figures["tasks"]] if clean else []
        if (len(tasks) == 3 and len(set(tasks)) == 1) or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.05)  # asked again a little later: another process


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KINDS or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: want KIND=WEIGHT, KIND one of {KINDS}")
        mix[kind] = int(weight)
    return mix


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def describe(label: str, result: StormResult) -> list[str]:
    lines = [
        f"{label}: {result.cycles:,} cycles in {result.seconds:.1f} s = {result.per_s:,.0f}/s,"
        f" {len(result.failures)} failed"
    ]
    for kind in KINDS:
        values = [s * 1000 for s in result.latencies_s[kind]]
        if values:
            lines.append(
                f"  {kind:8} {len(values):6,} cycles  p50 {percentile(values, 50):6.1f} ms"
                f"  p95 {percentile(values, 95):6.1f} ms  p99 {percentile(values, 99):6.1f} ms"
            )
    lines += [f"  failed: {failure}" for failure in result.failures[:5]]
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX)
    args = parser.parse_args()
    if pinned(CLIENT_CPU):
        os.sched_setaffinity(0, {CLIENT_CPU})
    workdir = tempfile.mkdtemp(prefix="storm-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORE_PATH": os.path.join(workdir, "storm.db"),
        "JWT_SECRET": SECRET,
        "BROADCAST_TOKEN": BROADCAST_TOKEN,
        "LOG_LEVEL": "warning",
        "PYTHONPATH": ROOT,
        **STORM_ENV,
    }
    for name in ("MONGODB_URL", "REDIS_URL", "HOST", "PORT"):
        os.environ.pop(name, None)
    command = [*pinned(SERVER_CPU), sys.executable, "-m", "realtime", "--port", str(port)]
    gateway = await start(command, env)
    try:
        idle = await status(url, BROADCAST_TOKEN)
        rss_start = rss_kb(gateway.pid)
        warm = await storm(url, SECRET, args.warmup, args.concurrency, args.mix)
        after_warmup = await settled(url, BROADCAST_TOKEN)
        rss_warm = rss_kb(gateway.pid)
        result = await storm(
            url, SECRET, args.cycles, args.concurrency, args.mix, first=args.warmup
        )
        rss_storm = rss_kb(gateway.pid)
        after = await settled(url, BROADCAST_TOKEN)
        rss_settled = rss_kb(gateway.pid)
    finally:
        gateway.terminate()
        await gateway.wait()
    commit = await asyncio.to_thread(git_commit)
    print(
        f"# bench/storm.py on {platform.node()} ({os.cpu_count()} CPUs, Python"
        f" {platform.python_version()}), {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
        f" UTC, commit {commit}"
    )
    pinning = "gateway on CPU 0, clients on CPU 1" if pinned(0) else "not pinned (one CPU)"
    print(
        f"# {' '.join(sys.argv)}: concurrency {args.concurrency}, mix"
        f" {','.join(f'{k}={v}' for k, v in args.mix.items())}, {pinning};"
        f" env {' '.join(f'{k}={v}' for k, v in STORM_ENV.items())}"
    )
    for line in describe("warm-up", warm) + describe("storm", result):
        print(line)
    print(
        f"RSS KB: start {rss_start:,}, after warm-up {rss_warm:,}, at the storm's end"
        f" {rss_storm:,}, settled {rss_settled:,} ({(rss_settled / rss_warm - 1) * 100:+.1f}%"
        " against the warm-up)"
    )
    print(
        f"tasks: idle {idle['tasks']} (python-engineio starts its own on the first connection),"
        f" after warm-up {after_warmup['tasks']}, after the storm"
        f" {after['tasks']}; left: {after['connections']} connections,"
        f" {after['transports']} transports, {after['roomCount']} rooms"
    )


if __name__ == "__main__":
    asyncio.run(main())
