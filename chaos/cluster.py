"""The deployment under test: three gateway processes, each in a network namespace of its own
(its own host, reached over a veth pair), one Redis, the shipped nginx config in front, one
embedded store file shared by all (or MongoDB with MONGODB_URL). Everything it starts, it can
kill, pause, restart and cut off, and it takes it all down again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_CONF = os.path.join(ROOT, "docs", "nginx.conf")
GATEWAY_PORT = 8000
SECRET = "chaos-jwt-secret-0123456789-abcdefghijklmnop"
SERVICE_TOKEN = "chaos-service-token-0123456789"
LEASE_TTL_S = 3.0  # short, so that a paused holder loses its lease within a fault's length
START_TIMEOUT_S = 30.0


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def dies_with_us(number: int = signal.SIGKILL) -> Callable[[], None]:
    """For a child: the signal it gets when the soak dies, however it dies (a killed soak
    leaves no gateway, Redis or nginx behind)."""

    def set_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, number)  # PR_SET_PDEATHSIG

    return set_death_signal


def sweep_stale_runs() -> None:
    """Take down what a soak that was killed left: its namespaces are named after its pid
    (`chaos<pid>-...`), and a namespace's processes and veth go with it."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for namespace, pid in re.findall(r"^(chaos(\d+)-\S+)", listed, re.M):
        if os.path.exists(f"/proc/{pid}"):
            continue  # a soak still running
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for leftover in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(leftover), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def free_subnets(count: int) -> int:
    """The first n with 10.77.n to 10.77.n+count-1 used by no interface of this machine."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    taken = {int(n) for n in re.findall(r"inet 10\.77\.(\d+)\.", used)}
    for base in range(10, 250 - count, count):
        if not taken.intersection(range(base, base + count)):
            return base
    raise RuntimeError("no free 10.77.x.0/24 subnets")


def missing_tools() -> list[str]:
    """What this machine lacks to run the soak (it needs root for network namespaces)."""
    import shutil

    tools = ("ip", "tc", "iptables", "redis-server", "nginx", "node")
    lacking = [t for t in tools if not shutil.which(t)]
    if os.geteuid() != 0:
        lacking.append("root (network namespaces)")
    if not os.path.isdir(os.path.join(ROOT, "node_modules", "socket.io-client")):
        lacking.append("node_modules (npm ci)")
    return lacking


class Host:
    """A network namespace joined to the root namespace by a veth pair: `address` inside,
    `peer` (the root side, its default route) outside."""

    def __init__(self, run_id: str, name: str, subnet: int):
        self.ns = f"chaos{run_id}-{name}"
        self.outside = f"vc{run_id}{subnet % 100:02d}"  # the root side's interface (≤ 15 chars)
        self.peer = f"10.77.{subnet}.1"
        self.address = f"10.77.{subnet}.2"

    def create(self) -> None:
        run("ip", "netns", "add", self.ns)
        run(
            "ip",
            "link",
            "add",
            self.outside,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.ns,
        )
        run("ip", "addr", "add", f"{self.peer}/24", "dev", self.outside)
        run("ip", "link", "set", self.outside, "up")
        self.inside("ip", "addr", "add", f"{self.address}/24", "dev", "eth0")
        self.inside("ip", "link", "set", "eth0", "up")
        self.inside("ip", "link", "set", "lo", "up")
        self.inside("ip", "route", "add", "default", "via", self.peer)

    def inside(self, *command: str) -> None:
        run("ip", "netns", "exec", self.ns, *command)

    def command(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *command]

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            run("ip", "netns", "del", self.ns)  # its end of the veth pair goes with it

    # -- network faults (on the host's own link; this kernel has no netem: tbf and iptables) --
    def slow_down(self, rate: str) -> None:
        """Everything the host sends queued behind a slow link ('512kbit'): latency by load."""
        self.heal()
        self.inside(
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "32kbit",
            "latency",
            "500ms",
        )

    def lose(self, percent: float) -> None:
        """That share of the host's packets, both ways, dropped."""
        self.heal()
        for chain in ("INPUT", "OUTPUT"):
            self.inside(
                "iptables",
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                f"{percent / 100:.3f}",
                "-j",
                "DROP",
            )

    def cut_port(self, port: int) -> None:
        """Drop what the host sends to `port` on its peer (Redis), and nothing else."""
        self.heal()
        self.inside(
            "iptables",
            "-A",
            "OUTPUT",
            "-d",
            self.peer,
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "DROP",
        )

    def link(self, up: bool) -> None:
        self.inside("ip", "link", "set", "eth0", "up" if up else "down")
        if up:  # the route goes with the link
            with contextlib.suppress(subprocess.CalledProcessError):
                self.inside("ip", "route", "add", "default", "via", self.peer)

    def heal(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.inside("tc", "qdisc", "del", "dev", "eth0", "root")
        with contextlib.suppress(subprocess.CalledProcessError):
            self.inside("iptables", "-F")


class Process:
    """A child process whose output is kept in a file; started, signalled, waited for."""

    death_signal = signal.SIGKILL  # what it gets if the soak dies first
    stop_signal = signal.SIGKILL  # how `stop()` ends it by default

    def __init__(self, name: str, log_path: str):
        self.name = name
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(
        self, command: list[str], ready: str, env: Mapping[str, str] | None = None, cwd: str = ROOT
    ) -> None:
        log = open(self.log_path, "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                preexec_fn=dies_with_us(self.death_signal),
            )
        finally:
            log.close()
        self.paused = False

        async def until_ready() -> None:
            async for line in self.process.stdout:
                with open(self.log_path, "ab") as kept:
                    kept.write(line)
                if ready.encode() in line:
                    return
            raise RuntimeError(f"{self.name} exited before it was ready: see {self.log_path}")

        await asyncio.wait_for(until_ready(), START_TIMEOUT_S)
        self._drain = asyncio.ensure_future(self._keep_output())

    async def _keep_output(self) -> None:
        assert self.process is not None
        with open(self.log_path, "ab") as kept:
            async for line in self.process.stdout:
                kept.write(line)

    def send(self, number: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(number)
            if number == signal.SIGSTOP:
                self.paused = True
            elif number == signal.SIGCONT:
                self.paused = False

    async def stop(self, number: int | None = None, within_s: float = 15.0) -> None:
        if not self.alive:
            return
        assert self.process is not None
        if self.paused:
            self.send(signal.SIGCONT)
        self.process.send_signal(self.stop_signal if number is None else number)
        try:
            await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._drain, 5)  # its output to the end: the pipe closes

    def rss_kb(self) -> int | None:
        if not self.alive:
            return None
        assert self.process is not None
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


class Gateway(Process):
    def __init__(self, host: Host, env: Mapping[str, str], workdir: str):
        super().__init__(host.ns, os.path.join(workdir, f"{host.ns}.log"))
        self.host = host
        self.env = env
        self.url = f"http://{host.address}:{GATEWAY_PORT}"
        self.starts = 0

    async def start(self) -> None:
        command = self.host.command(
            sys.executable,
            "-m",
            "realtime",
            "--host",
            self.host.address,
            "--port",
            str(GATEWAY_PORT),
        )
        await self.spawn(command, "listening on", self.env)
        self.starts += 1

    async def status(self) -> dict | None:
        """/status, or None when it does not answer within a second."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
                async with http.get(
                    f"{self.url}/status", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
                ) as answer:
                    return await answer.json() if answer.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


class Redis(Process):
    def __init__(self, port: int, binds: list[str], workdir: str):
        super().__init__("redis", os.path.join(workdir, "redis.log"))
        self.port = port
        self.binds = binds

    async def start(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            *self.binds,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        await self.spawn(command, "Ready to accept connections")


def shipped_nginx_config(port: int, backends: list[str]) -> str:
    """docs/nginx.conf with only its addresses changed: listening on 127.0.0.1:`port`,
    balancing over `backends` ("host:port")."""
    with open(NGINX_CONF) as shipped:
        text = shipped.read()
    servers = "".join(f"        server {backend};\n" for backend in backends)
    text, count = re.subn(r"(        server 127\.0\.0\.1:\d+;\n)+", servers, text)
    assert count == 1, "docs/nginx.conf: no upstream servers found"
    text, count = re.subn(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{port}", text)
    assert count == 1, "docs/nginx.conf: no listen directive found"
    return text


class Nginx(Process):
    """docs/nginx.conf as shipped, with only its addresses changed: it listens on `port` and
    balances over the gateways."""

    # its master stops its workers on SIGTERM; killed, it would leave them listening
    death_signal = stop_signal = signal.SIGTERM

    def __init__(self, port: int, backends: list[str], workdir: str):
        super().__init__("nginx", os.path.join(workdir, "nginx.log"))
        self.port = port
        self.backends = backends
        self.url = f"http://127.0.0.1:{port}"
        self.directory = os.path.join(workdir, "nginx")

    def config(self) -> str:
        return shipped_nginx_config(self.port, self.backends)

    async def start(self) -> None:
        os.makedirs(os.path.join(self.directory, "logs"), exist_ok=True)
        conf = os.path.join(self.directory, "nginx.conf")
        with open(conf, "w") as handle:
            handle.write(self.config())
        # nginx prints nothing when it is ready: a line of our own after its config test
        serve = f'nginx -p "{self.directory}" -c "{conf}"'
        daemon = f'-g "daemon off; pid {self.directory}/nginx.pid; error_log stderr warn;"'
        command = ["sh", "-c", f"{serve} -t -q && echo ready && exec {serve} {daemon}"]
        await self.spawn(command, "ready")
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # listening once a TCP connection is accepted
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("nginx did not listen") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
