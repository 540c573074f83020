"""Gateways as separate processes, for what only a process can show: signals, kill -9,
restarts on the same port and store."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import aiohttp

from chaos.cluster import shipped_nginx_config
from tests.clients import ROOT, Client
from tests.tools import require

SERVICE_TOKEN = "scale-out-service-token-0123456789"  # BROADCAST_TOKEN of gateway processes
WAIT_S = 20.0


class GatewayProcess:
    def __init__(self, env: dict[str, str], port: int):
        self.env = {**os.environ, "PYTHONPATH": ROOT, "LOG_LEVEL": "warning", **env}
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> GatewayProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "realtime",
            "--port",
            str(self.port),
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
        )
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        assert line.startswith("realtime gateway listening on "), line
        return self

    def memory_kb(self, field: str = "VmHWM") -> int:
        """From /proc: VmHWM, the most resident memory the process has had; VmRSS, now."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class RedisServer:
    """A private redis-server on a port of its own (keeping nothing on disk), which a test may
    kill and start again on the same port."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task | None = None

    async def start(self) -> RedisServer:
        self._process = await asyncio.create_subprocess_exec(
            *(require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.PIPE,
        )

        async def ready() -> None:  # what redis-server logs once it accepts connections
            async for line in self._process.stdout:
                if b"Ready to accept connections" in line:
                    return
            raise AssertionError("redis-server exited")

        await asyncio.wait_for(ready(), 10)
        self._drain = asyncio.create_task(self._process.stdout.read())  # never blocks on it
        return self

    async def stop(self, kill: bool = False) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill() if kill else self._process.terminate()
            await self._process.wait()
            await self._drain


class Nginx:
    """nginx running docs/nginx.conf as shipped, with only its ports changed: it listens on
    `port` and balances over `backends` (ports on 127.0.0.1)."""

    def __init__(self, directory: str, port: int, backends: list[int]):
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.backends = backends
        self._process: asyncio.subprocess.Process | None = None

    def config(self) -> str:
        return shipped_nginx_config(self.port, [f"127.0.0.1:{port}" for port in self.backends])

    def write_config(self) -> str:
        os.makedirs(os.path.join(self.directory, "logs"), exist_ok=True)
        conf = os.path.join(self.directory, "nginx.conf")
        with open(conf, "w") as handle:
            handle.write(self.config())
        return conf

    async def start(self) -> Nginx:
        conf = self.write_config()
        self._process = await asyncio.create_subprocess_exec(
            require("nginx"),
            *("-p", self.directory, "-c", conf),
            *("-g", f"daemon off; pid {self.directory}/nginx.pid; error_log stderr warn;"),
        )
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # listening once a TCP connection is accepted
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert self._process.returncode is None, "nginx exited"
                assert asyncio.get_running_loop().time() < deadline, "nginx did not listen"
                await asyncio.sleep(0.05)  # asked again a little later
                continue
            writer.close()
            await writer.wait_closed()
            return self

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()


async def run_cli(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0, args
    return stdout.decode().strip()


# What tests ask of gateway processes, over HTTP and through clients.


async def post(gateway, body: dict) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.url}/broadcast",
            json=body,
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as answer:
            return answer.status


async def get_json(gateway, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{gateway.url}{path}", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
        ) as answer:
            return answer.status, await answer.json()


async def until(check: Callable, within: float = WAIT_S):
    """Wait for `await check()` to return something true. Each look asks another process over
    HTTP: there is nothing to subscribe to, so it asks again, a little later."""

    async def look():
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.05)  # a poll interval between two questions

    return await asyncio.wait_for(look(), within)


async def received(client: Client, event: str, count: int) -> list[dict]:
    """The next `count` of `event`, checked to come once each and in eventId order."""
    got = [await client.next_event(event, timeout=WAIT_S) for _ in range(count)]
    ids = [payload["eventId"] for payload in got]
    assert ids == sorted(set(ids)), ids
    return got
