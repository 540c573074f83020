"""Faults on a seeded random schedule, overlapping: processes killed, paused past the watcher
lease and restarted, Redis killed and paused, a gateway's link slowed, lossy, cut off from
Redis or from everyone, clients cut mid-replay. Each fault heals itself when its time is up (or
when the run ends), so that the end of a run is a healthy deployment catching up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from chaos.clients import PyClient
from chaos.cluster import LEASE_TTL_S, Gateway, Redis

KINDS = (
    "kill -9 gateway",
    "pause gateway past its lease",
    "restart gateway",
    "kill -9 redis",
    "pause redis",
    "slow link on a gateway",
    "lossy link on a gateway",
    "cut a gateway from redis",
    "link down on a gateway",
    "cut a client mid-replay",
)


class Faults:
    def __init__(
        self,
        gateways: list[Gateway],
        redis: Redis,
        clients: list[PyClient],
        rng: random.Random,
        every_s: float,
    ):
        self.gateways = gateways
        self.redis = redis
        self.clients = clients
        self.rng = rng
        self.every_s = every_s  # the mean time between two faults' starts (at most 1.75 times it)
        self.injected: Counter[str] = Counter()
        self.log: list[str] = []
        self._busy: set[object] = set()  # targets a fault holds: one fault per target at a time
        self._running: set[asyncio.Task] = set()

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.rng.uniform(0.25, 1.75) * self.every_s)
                kind = self.rng.choice(KINDS)
                fault = self._make(kind)
                if fault is None:
                    continue  # every target of that kind is held by another fault
                target, act = fault
                self._busy.add(target)
                self.injected[kind] += 1
                self.log.append(f"{time.time():.3f} {kind}: {getattr(target, 'name', target)}")
                task = asyncio.ensure_future(self._hold(target, act))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            await self.heal_all()

    async def heal_all(self) -> None:
        """Cancel the faults under way: each heals in its own `finally`."""
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _hold(self, target: object, act: Callable[[], Awaitable[None]]) -> None:
        try:
            await act()
        except Exception as exc:  # a fault that could not be made (or healed): on the record
            self.log.append(f"{time.time():.3f} failed: {exc!r}"[:300])
        finally:
            self._busy.discard(target)

    def _free(self, candidates: list) -> object | None:
        free = [c for c in candidates if c not in self._busy]
        return self.rng.choice(free) if free else None

    def _make(self, kind: str) -> tuple[object, Callable[[], Awaitable[None]]] | None:
        duration = self.rng.uniform(1.0, 4.0)
        if kind == "cut a client mid-replay":
            client = self._free(self.clients)
            return None if client is None else (client, lambda: self._cut_mid_replay(client))
        if kind in ("kill -9 redis", "pause redis"):
            if self.redis in self._busy:
                return None
            act = self._kill_redis if kind == "kill -9 redis" else self._pause_redis
            return self.redis, lambda: act(duration)
        gateway = self._free(self.gateways)
        if gateway is None:
            return None
        acts = {
            "kill -9 gateway": lambda: self._kill(gateway, duration),
            "pause gateway past its lease": lambda: self._pause(gateway, LEASE_TTL_S + duration),
            "restart gateway": lambda: self._restart(gateway),
            "slow link on a gateway": lambda: self._network(gateway, duration * 2, "slow"),
            "lossy link on a gateway": lambda: self._network(gateway, duration * 2, "lossy"),
            "cut a gateway from redis": lambda: self._cut_from_redis(gateway, duration * 2),
            "link down on a gateway": lambda: self._link_down(gateway, duration),
        }
        return gateway, acts[kind]

    # -- the faults ---------------------------------------------------------------------------
    async def _kill(self, gateway: Gateway, down_s: float) -> None:
        await gateway.stop(signal.SIGKILL)
        try:
            await asyncio.sleep(down_s)
        finally:
            await _shielded(gateway.start())

    async def _restart(self, gateway: Gateway) -> None:
        try:
            await gateway.stop(signal.SIGTERM)  # graceful: its sockets told, its lease released
        finally:
            await _shielded(gateway.start())

    async def _pause(self, gateway: Gateway, paused_s: float) -> None:
        gateway.send(signal.SIGSTOP)
        try:
            await asyncio.sleep(paused_s)
        finally:
            gateway.send(signal.SIGCONT)

    async def _network(self, gateway: Gateway, for_s: float, how: str) -> None:
        if how == "slow":
            rate = self.rng.choice(["128kbit", "512kbit", "2mbit"])
            gateway.host.slow_down(rate)
        else:
            rate = self.rng.choice([2, 10, 30])  # % of packets lost
            gateway.host.lose(rate)
        self.log.append(f"  {gateway.name}: {how} ({rate})")
        try:
            await asyncio.sleep(for_s)
        finally:
            gateway.host.heal()

    async def _cut_from_redis(self, gateway: Gateway, for_s: float) -> None:
        gateway.host.cut_port(self.redis.port)
        try:
            await asyncio.sleep(for_s)
        finally:
            gateway.host.heal()

    async def _link_down(self, gateway: Gateway, for_s: float) -> None:
        gateway.host.link(up=False)
        try:
            await asyncio.sleep(for_s)
        finally:
            gateway.host.link(up=True)

    async def _kill_redis(self, down_s: float) -> None:
        await self.redis.stop(signal.SIGKILL)
        try:
            await asyncio.sleep(down_s)
        finally:
            await _shielded(self.redis.start())

    async def _pause_redis(self, paused_s: float) -> None:
        self.redis.send(signal.SIGSTOP)
        try:
            await asyncio.sleep(paused_s)
        finally:
            self.redis.send(signal.SIGCONT)

    async def _cut_mid_replay(self, client: PyClient) -> None:
        """Cut the client, then cut it again while its reconnection's replay is under way."""
        await client.cut()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while not client.catching_up:  # noqa: ASYNC110 - a client's state to look at
                    await asyncio.sleep(0.01)
        if client.catching_up:
            await client.cut()


async def _shielded(healing: Awaitable[None]) -> None:
    """A heal runs to its end even when the run is being stopped."""
    await asyncio.shield(asyncio.ensure_future(healing))
