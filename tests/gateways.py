"""Gateways as separate processes, for what only a process can show: signals, kill -9,
restarts on the same port and store."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.clients import ROOT


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
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
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
