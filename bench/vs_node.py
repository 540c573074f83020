"""Benchmark: the gateway beside stock python-socketio and Node socket.io, same protocol, same load.

    .venv/bin/python bench/vs_node.py [--reps 3] [--seconds 10]
        [--scenarios fanout,latency,idle,connects,polling,polling_close,acks,acks_client]
        [--servers node,bare,gateway,before] [--gateway-root PATH] [--before-root PATH]
        [--gateway-env KEY=VALUE ...] [--clients N] [--quick] [--json PATH]

Three servers speak the gateway's protocol (README "Protocol summary": handshake JWT,
`auth_success`, `join_room`/`leave_room` acks, `POST /broadcast`):
- node: `bench/node/server.mjs`, the `socket.io` npm package (4.x), JWT by `jsonwebtoken`;
- bare: `bench/bare_socketio.py`, stock python-socketio `AsyncServer` on aiohttp, defaults;
- gateway: `python -m realtime` from `--gateway-root` (default: this checkout), embedded store
  in a fresh temp file per start.
With `--before-root PATH` a fourth, `before`, is the gateway run from that checkout (say a
`git worktree` of the commit before a refactoring), with the same Python, environment and
settings; it joins the default `--servers` and each table adds a row `gateway / before`: each
figure's ratio, gateway's run against before's run of the same rep, median (min-max) over reps
(above 1.00: more deliveries, cycles, acks, but also more ms, CPU and KB). When the range spans
1.00 the reps disagree on the direction: no change beyond the noise.

Each run starts one server fresh on a free port, pinned to CPU 0 (`taskset -c 0`), and runs
one scenario of `bench/node/loadgen.mjs` (raw Engine.IO/Socket.IO over `ws` WebSockets or
HTTP long-polling) pinned to CPU 1; runs are interleaved (node, bare, gateway, before, node,
...). The generator reports its own CPU use; above ~90% of its CPU its figure is a floor.

Scenarios (full size; `--quick`: a few dozen clients, 2 s):
- fanout:   1,000 WebSocket clients in `availability-s1`; broadcasts to it as fast as they are
            delivered (up to 8 posted and not yet delivered); deliveries/s at the clients;
- latency:  1,000 WebSocket clients; 10 broadcasts/s; POST -> client latency p50/p95/p99;
- idle:     5,000 WebSocket clients authenticated and joined, then idle; RSS KB per client;
- connects: handshake with JWT, `auth_success`, `join_room` + ack, close; 50 in flight; cycles/s;
- polling:  200 long-polling clients in the room; 20 broadcasts/s; server CPU, latency;
- polling_close: the same, each request on a new connection closed after it (what
            socket.io-client does in Node): a room's polls reconnect at once after a broadcast;
- acks:     100 WebSocket clients, each with one `join_room` in flight at a time; acks/s;
- acks_client: the same with the official socket.io-client (WebSocket), `emit` with an ack
            callback that sends the next (the generator's own cost is higher: see its CPU).
Server CPU % is utime + stime from /proc/PID/stat over the measurement window (100 = one CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED, free_port  # noqa: E402

LOADGEN = os.path.join(ROOT, "bench", "node", "loadgen.mjs")
NODE_SERVER = os.path.join(ROOT, "bench", "node", "server.mjs")
BARE_SERVER = os.path.join(ROOT, "bench", "bare_socketio.py")
CHECKER = os.path.join(ROOT, "bench", "node", "check_protocol.mjs")

SECRET = "bench-secret-0123456789-abcdefghijklmnop"
BROADCAST_TOKEN = "bench-broadcast-token-0123456789"
ROOM = "availability-s1"
NOFILE = 65536
SERVER_CPU, GENERATOR_CPU = 0, 1
GENERATOR_SATURATED_PCT = 90.0
OTHERS_NOISY_PCT = 10.0
# idle measures memory
CPU_SENSITIVE = {"fanout", "latency", "connects", "polling", "polling_close", "acks", "acks_client"}

SERVERS = ("node", "bare", "gateway", "before")
# the gateway's own code: from --gateway-root, and from --before-root to compare with
GATEWAYS = ("gateway", "before")
# per scenario: the generator's options at full size and with --quick
SCENARIOS = {
    "fanout": ({"clients": 1000, "inflight": 8}, {"clients": 50}),
    "latency": ({"clients": 1000, "rate": 10}, {"clients": 50}),
    "idle": ({"clients": 5000}, {"clients": 200, "settle": 1}),
    "connects": ({"concurrency": 50}, {"concurrency": 10}),
    "polling": ({"clients": 200, "rate": 20}, {"clients": 20}),
    "polling_close": ({"clients": 200, "rate": 20}, {"clients": 20}),
    "acks": ({"clients": 100}, {"clients": 20}),
    "acks_client": ({"clients": 100}, {"clients": 20}),
}
# per scenario: (result key, label, compared to node as "ratio" or "diff", format)
CPU = ("server_cpu_pct", "server CPU %", "diff", "{:.0f}")
METRICS = {
    "fanout": [("deliveries_per_s", "deliveries/s", "ratio", "{:,.0f}"), CPU],
    "latency": [
        ("p50_ms", "p50 ms", "diff", "{:.1f}"),
        ("p95_ms", "p95 ms", "diff", "{:.1f}"),
        ("p99_ms", "p99 ms", "diff", "{:.1f}"),
        CPU,
    ],
    "idle": [
        ("rss_per_conn_kb", "RSS KB/conn", "diff", "{:.1f}"),
        ("rss_before_mb", "RSS before MB", "diff", "{:.1f}"),
        ("rss_after_mb", "RSS after MB", "diff", "{:.1f}"),
    ],
    "connects": [("cycles_per_s", "cycles/s", "ratio", "{:,.0f}"), CPU],
    "polling": [
        CPU,
        ("p50_ms", "p50 ms", "diff", "{:.1f}"),
        ("p99_ms", "p99 ms", "diff", "{:.1f}"),
    ],
    "acks": [("acks_per_s", "acks/s", "ratio", "{:,.0f}"), CPU],
}
METRICS["polling_close"] = METRICS["polling"]
METRICS["acks_client"] = METRICS["acks"]


def describe(scenario: str, options: dict, seconds: float) -> str:
    clients = f"{options.get('clients', 0):,}"
    return {
        "fanout": f"{clients} WebSocket clients in {ROOM}; POST /broadcast as fast as delivered "
        f"(up to {options.get('inflight', 8)} broadcasts not yet delivered); {seconds:g} s window",
        "latency": f"{clients} WebSocket clients in {ROOM}; {options.get('rate')} broadcasts/s "
        f"for {seconds:g} s; POST -> client latency over all deliveries",
        "idle": f"{clients} WebSocket clients authenticated and joined, then idle; "
        "(RSS after - RSS before) / clients",
        "connects": f"connect (JWT) -> auth_success -> join_room ack -> close, "
        f"{options.get('concurrency')} in flight, {seconds:g} s",
        "polling": f"{clients} long-polling clients in {ROOM}; {options.get('rate')} "
        f"broadcasts/s for {seconds:g} s",
        "polling_close": f"{clients} long-polling clients in {ROOM}, each request on a new "
        f"connection; {options.get('rate')} broadcasts/s for {seconds:g} s",
        "acks": f"{clients} WebSocket clients, one join_room in flight each, {seconds:g} s",
        "acks_client": f"{clients} socket.io-client clients (WebSocket), one join_room in "
        f"flight each, {seconds:g} s",
    }[scenario]


# -- processes ---------------------------------------------------------------------------------


def raise_nofile() -> int:
    """A file descriptor limit high enough for thousands of sockets, set on this process so that
    every server and generator inherits it; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: up to it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(NOFILE, hard)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(limit_pct: float, patience: float) -> tuple[float, float]:
    """Wait (up to `patience` s) until the machine's busy CPU over one second is below
    `limit_pct` (of one CPU); returns (seconds waited, the last busy %)."""
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = (machine_busy_seconds() - before) * 100
        waited = time.monotonic() - started
        if busy < limit_pct or waited >= patience:
            return waited, busy


class Server:
    """One server process, started fresh, pinned to CPU 0; its stderr goes to a temp file."""

    def __init__(self, kind: str, args: argparse.Namespace):
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = tempfile.mkdtemp(prefix=f"vs-node-{kind}-")
        env = {**os.environ, "JWT_SECRET": SECRET, "BROADCAST_TOKEN": BROADCAST_TOKEN}
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        if kind in GATEWAYS:
            for name in ("HOST", "PORT", "MONGODB_URL", "REDIS_URL", "PYTHONPATH"):
                env.pop(name, None)
            env["STORE_PATH"] = os.path.join(self.workdir, "gateway.db")  # fresh per start
            root = checkout(kind, args)
            env.update(gateway_env(args, root))
            command, cwd = [sys.executable, "-m", "realtime", *address], root
        elif kind == "bare":
            env.pop("PYTHONPATH", None)
            command, cwd = [sys.executable, BARE_SERVER, *address], ROOT
        else:
            command, cwd = ["node", NODE_SERVER, *address], ROOT
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        self._stderr = open(self.stderr_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [*pinned(SERVER_CPU), *command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pid = self.process.pid  # taskset execs the server: same pid
        self.banner = ""
        self._ready = threading.Event()
        self._first_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._ready.wait(60) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(
                f"{kind} did not start: {''.join(self._first_lines)!r} {self.stderr_tail()}"
            )

    def _read_stdout(self) -> None:
        for raw in self.process.stdout:  # drained to the end, so the server never blocks on it
            if not self._ready.is_set():
                line = raw.decode(errors="replace")
                self._first_lines.append(line)
                if "listening" in line:
                    self.banner = line.strip()
                    self._ready.set()

    def stderr_tail(self, size: int = 2000) -> str:
        with open(self.stderr_path, "rb") as log:
            return log.read()[-size:].decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:  # the gateway's graceful shutdown takes up to SHUTDOWN_TIMEOUT (10 s)
                self.process.wait(15 if self.kind in GATEWAYS else 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def checkout(kind: str, args: argparse.Namespace) -> str:
    """The checkout whose realtime/ a gateway kind runs."""
    return args.before_root if kind == "before" else args.gateway_root


def gateway_env(args: argparse.Namespace, root: str) -> dict[str, str]:
    """The same for both gateway kinds but `root`: only the code differs between them."""
    env = {
        "JWT_SECRET": SECRET,
        "BROADCAST_TOKEN": BROADCAST_TOKEN,
        "LOG_LEVEL": "warning",
        "PYTHONPATH": root,
        **UNLIMITED,
    }
    for item in args.gateway_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def check_protocol(kind: str, args) -> list[str]:
    """Start `kind` once and check with the official socket.io-client that it speaks the
    protocol (WebSocket and polling); returns the failures."""
    try:
        server = Server(kind, args)
    except RuntimeError as error:
        return [str(error)]
    try:
        done = subprocess.run(
            [
                "node",
                CHECKER,
                "--url",
                server.url,
                "--secret",
                SECRET,
                "--broadcast-token",
                BROADCAST_TOKEN,
                "--room",
                ROOM,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])["failures"]
        except (IndexError, KeyError, json.JSONDecodeError):
            return [f"the check gave no answer: {done.stdout[-500:]} {done.stderr[-1000:]}"]
    finally:
        server.stop()


def run_generator(server: Server, scenario: str, options: dict, args) -> dict:
    command = [
        *pinned(GENERATOR_CPU),
        "node",
        LOADGEN,
        "--url",
        server.url,
        "--scenario",
        scenario,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--secret",
        SECRET,
        "--broadcast-token",
        BROADCAST_TOKEN,
        "--server-pid",
        str(server.pid),
        "--clk-tck",
        str(os.sysconf("SC_CLK_TCK")),
        "--room",
        ROOM,
    ]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.seconds + 600,
        )
    except subprocess.TimeoutExpired:
        return {"error": "the generator timed out"}
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"no result (exit {done.returncode}): {done.stderr[-2000:]}"}
    if args.verbose and done.stderr:
        sys.stderr.write(done.stderr)
    for key in ("rss_before_kb", "rss_after_kb"):
        if key in result:
            result[key.replace("_kb", "_mb")] = result[key] / 1024
    return result


# -- what ran ----------------------------------------------------------------------------------


def gateway_python(code: str, args) -> str:
    env = {**os.environ, **gateway_env(args, args.gateway_root)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=args.gateway_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() if done.returncode == 0 else "?"


def mentions(root: str, word: str) -> bool:
    """Whether any Python file of the gateway's packages names `word`."""
    for package in ("server", "realtime", "handlers", "storage"):
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as source:
                        if word in source.read():
                            return True
    return False


def versions(args) -> dict[str, str]:
    found = json.loads(
        gateway_python(
            "import json, importlib.metadata as m\n"
            "names = ['python-socketio', 'python-engineio', 'aiohttp', 'PyJWT']\n"
            "out = {}\n"
            "for name in names:\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: out[name] = 'not installed'\n"
            "print(json.dumps(out))",
            args,
        )
        or "{}"
    )
    for module in ("uvloop", "orjson"):
        answer = gateway_python(f"import {module}; print({module}.__version__)", args)
        found[f"{module} importable"] = "no" if answer == "?" else f"yes ({answer})"
        found[f"{module} named in the gateway's code"] = (
            "yes" if mentions(args.gateway_root, module) else "no"
        )
    found["python"] = platform.python_version()
    found["node"] = subprocess.run(
        ["node", "--version"], capture_output=True, text=True
    ).stdout.strip()
    for package in ("socket.io", "ws", "jsonwebtoken"):
        try:
            with open(os.path.join(ROOT, "node_modules", package, "package.json")) as meta:
                found[f"npm {package}"] = json.load(meta)["version"]
        except OSError:
            found[f"npm {package}"] = "not installed"
    found["gateway commit"] = commit(args.gateway_root)
    if "before" in args.server_list:
        found["before commit"] = commit(args.before_root)
    return found


def commit(root: str) -> str:
    head = subprocess.run(
        ["git", "-C", root, "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    return f"commit {head.stdout.strip()[:72]}" if head.returncode == 0 else "not a git checkout"


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.node()}, {os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


# -- tables ------------------------------------------------------------------------------------


def spread(values: list[float], form: str) -> str:
    middle = form.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({form.format(min(values))}-{form.format(max(values))})"


def compare(kind: str, pairs: list[tuple[float, float]], form: str) -> str:
    """Median over reps of server/node (rates) or server - node (the rest), each rep against
    node's run of the same rep: interleaved runs share the machine's drift."""
    if not pairs:
        return ""
    if kind == "ratio":
        ratios = [value / node for value, node in pairs if node]
        return f"{statistics.median(ratios):.2f}x" if ratios else "-"
    difference = statistics.median(value - node for value, node in pairs)
    return ("+" if difference >= 0 else "") + form.format(difference)


def against_before(scenario: str, runs: list[dict]) -> dict[str, dict]:
    """Per figure, gateway/before of each rep, each against before's run of the same rep (they
    share its drift), and the median, min and max of those: a refactoring's effect is the
    median, the noise between reps is the range."""
    before_by_rep = {
        r["rep"]: r["result"]
        for r in runs
        if r["server"] == "before" and "error" not in r["result"]
    }
    ratios = {}
    for key, _, _, _ in METRICS[scenario]:
        per_rep = {
            r["rep"]: r["result"][key] / before_by_rep[r["rep"]][key]
            for r in runs
            if r["server"] == "gateway"
            and "error" not in r["result"]
            and key in r["result"]
            and before_by_rep.get(r["rep"], {}).get(key)  # absent, or 0: no ratio
        }
        if per_rep:
            values = list(per_rep.values())
            ratios[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "per_rep": per_rep,
            }
    return ratios


def table(scenario: str, runs: list[dict], servers: list[str]) -> list[str]:
    metrics = METRICS[scenario]
    header = ["server"]
    for _, label, _, _ in metrics:
        header += [label, "vs node"]
    header += ["gen CPU %", "others %"]
    rows, notes = [], []
    node_by_rep = {
        r["rep"]: r["result"] for r in runs if r["server"] == "node" and "error" not in r["result"]
    }
    saturated = noisy = False
    for server in servers:
        mine = [r for r in runs if r["server"] == server]
        good = [r for r in mine if "error" not in r["result"]]
        for r in mine:
            result = r["result"]
            if "error" in result:
                notes.append(f"{server} rep {r['rep']}: FAILED {result['error'][:300]}")
                continue
            trouble = {
                name: result[name]
                for name in ("missing", "disconnects", "failures", "refused")
                if result.get(name)
            }
            if result.get("errors"):
                trouble["errors"] = result["errors"]
            if not r.get("server_alive", True):
                trouble["server exited"] = True
            if trouble:
                notes.append(f"{server} rep {r['rep']}: {json.dumps(trouble)}")
        row = [server]
        for key, _, kind, form in metrics:
            values = [r["result"][key] for r in good if key in r["result"]]
            if not values:
                row += ["failed", ""]
                continue
            pairs = [
                (r["result"][key], node_by_rep[r["rep"]][key])
                for r in good
                if server != "node" and key in r["result"] and key in node_by_rep.get(r["rep"], {})
            ]
            row += [spread(values, form), compare(kind, pairs, form)]
        generator = [r["result"]["gen_cpu_pct"] for r in good if "gen_cpu_pct" in r["result"]]
        flag = ""
        if generator and max(generator) > GENERATOR_SATURATED_PCT:
            flag, saturated = " !", True
        row.append((spread(generator, "{:.0f}") + flag) if generator else "")
        others = [r["result"]["other_cpu_pct"] for r in good if "other_cpu_pct" in r["result"]]
        if others and max(others) > OTHERS_NOISY_PCT and scenario in CPU_SENSITIVE:
            noisy = True
        row.append(spread(others, "{:.0f}") if others else "")
        rows.append(row)
    if "gateway" in servers and "before" in servers:
        ratios = against_before(scenario, runs)
        row = ["gateway / before"]
        for key, _, _, _ in metrics:
            per_rep = list(ratios[key]["per_rep"].values()) if key in ratios else []
            row += [spread(per_rep, "{:.2f}x") if per_rep else "-", ""]
        rows.append([*row, "", ""])
    widths = [max(len(line[n]) for line in [header, *rows]) for n in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in [header, *rows]
    ]
    lines = [line.rstrip() for line in lines]
    if saturated:
        lines.append(
            f"! the generator used more than {GENERATOR_SATURATED_PCT:.0f}% of its CPU in some "
            "rep: that figure may be a floor (unless the server's CPU % shows it saturated too)"
        )
    if noisy:
        lines.append(
            f"! other processes used more than {OTHERS_NOISY_PCT:.0f}% of a CPU during some "
            "window ('others %'): those figures are disturbed"
        )
    lines += [f"  note: {note}" for note in notes]
    return lines


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="measurement window [10]")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before it [1]")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--servers", help="comma-separated [node,bare,gateway, and before with --before-root]"
    )
    parser.add_argument("--gateway-root", default=ROOT, help="checkout whose realtime/ to run")
    parser.add_argument(
        "--before-root",
        help="another checkout (say the commit before a refactoring) run as `before`, beside "
        "gateway with the same environment, and compared with it",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 s: a smoke test")
    parser.add_argument("--inflight", type=int, help="fanout: broadcasts not yet delivered [8]")
    parser.add_argument(
        "--clients", type=int, help="clients of every scenario that has them (the full sizes above)"
    )
    parser.add_argument(
        "--quiet-pct",
        type=float,
        default=15.0,
        help="before each run, wait until the machine is less busy than this (%% of one CPU) [15]",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0, help="but at most this many seconds [120]"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help=f"run again when other processes used more than {OTHERS_NOISY_PCT:.0f}%% of a CPU "
        "during the window, up to this many times, and keep the least disturbed run [3]",
    )
    parser.add_argument("--json", help="write every run's raw figures to this file")
    parser.add_argument("--report", metavar="JSON", help="only print the tables of a --json file")
    parser.add_argument(
        "--no-check", action="store_true", help="skip the protocol check of each server"
    )
    parser.add_argument("--verbose", action="store_true", help="pass the generator's log on")
    args = parser.parse_args()
    args.gateway_root = os.path.abspath(args.gateway_root)
    if args.before_root:
        args.before_root = os.path.abspath(args.before_root)
    if args.servers is None:  # spelled out, so that --json keeps the list that ran
        args.servers = ",".join(s for s in SERVERS if s != "before" or args.before_root)
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in args.scenario_list:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    for name in args.server_list:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r} (known: {', '.join(SERVERS)})")
    if "before" in args.server_list and not args.before_root:
        parser.error("the server `before` needs --before-root")
    for item in args.gateway_env:
        if "=" not in item:
            parser.error(f"--gateway-env takes KEY=VALUE, not {item!r}")
    for root in filter(None, (args.gateway_root, args.before_root)):
        if not os.path.isdir(os.path.join(root, "realtime")):
            parser.error(f"no realtime/ package in {root}")
    for package in ("socket.io", "ws", "jsonwebtoken"):
        if not os.path.isdir(os.path.join(ROOT, "node_modules", package)):
            parser.error(f"node_modules/{package} is missing: run `npm install` in {ROOT}")
    return args


def options_for(scenario: str, args) -> dict:
    full, quick = SCENARIOS[scenario]
    options = {**full, **(quick if args.quick else {})}
    if scenario == "fanout" and args.inflight:
        options["inflight"] = args.inflight
    if args.clients and "clients" in options:
        options["clients"] = args.clients
    return options


def headline(result: dict, scenario: str) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:200]}"
    key, label, _, form = METRICS[scenario][0]
    shown = [f"{form.format(result[key])} {label}"] if key in result else []
    if scenario in ("latency", "polling", "polling_close") and "p99_ms" in result:
        shown.append(f"p99 {result['p99_ms']:.1f} ms")
    if "server_cpu_pct" in result and key != "server_cpu_pct":
        shown.append(f"server {result['server_cpu_pct']:.0f}% CPU")
    if "gen_cpu_pct" in result:
        shown.append(f"generator {result['gen_cpu_pct']:.0f}% CPU")
    return ", ".join(shown)


def one_run(rep: int, scenario: str, kind: str, options: dict, args) -> dict:
    """A fresh server of `kind`, one scenario against it, stopped; the record of it."""
    waited, busy = wait_until_quiet(args.quiet_pct, args.quiet_wait)
    if waited > 1.5:
        print(
            f"  (waited {waited:.0f} s for a quiet machine; now {busy:.0f}% busy)",
            file=sys.stderr,
            flush=True,
        )
    began = time.monotonic()
    banner = ""
    try:
        server = Server(kind, args)
    except RuntimeError as error:
        result, alive = {"error": str(error)}, False
    else:
        # the same for every start: no port, no temp dir
        banner = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", server.banner)
        banner = banner.replace(server.workdir, "<tmp>")
        try:
            result = run_generator(server, scenario, options, args)
            alive = server.alive()
            if "error" in result or not alive:
                result.setdefault("server_stderr_tail", server.stderr_tail())
        finally:
            server.stop()
    return {
        "rep": rep,
        "scenario": scenario,
        "server": kind,
        "options": options,
        "server_alive": alive,
        "machine_busy_before_pct": busy,
        "banner": banner,
        "took_s": time.monotonic() - began,
        "result": result,
    }


def kept_runs(runs: list[dict], scenario: str) -> list[dict]:
    """A scenario's runs that count: not the disturbed attempts re-done."""
    return [r for r in runs if r["scenario"] == scenario and not r.get("discarded")]


def report(args, found: dict, runs: list[dict], started: datetime.datetime, where: str) -> None:
    """The tables, and how the runs were made."""
    print()
    print(f"# bench/vs_node.py on {where}, {started:%Y-%m-%d %H:%M} UTC")
    print(
        f"# servers pinned to CPU {SERVER_CPU}, the Node load generator (raw ws/HTTP clients) "
        f"to CPU {GENERATOR_CPU}; RLIMIT_NOFILE {args.nofile}; each run on a freshly started "
        f"server; {args.reps} rep(s) interleaved ({', '.join(args.server_list)}); "
        f"{args.seconds:g} s windows after {args.warmup:g} s warm-up"
        + ("; --quick sizes" if args.quick else "")
    )
    env = " ".join(["LOG_LEVEL=warning", *args.gateway_env])
    print(f"# gateway: {args.gateway_root} ({found['gateway commit']}); env {env}")
    if "before" in args.server_list:
        print(f"# before: {args.before_root} ({found['before commit']}); the same Python and env")
    for kind in args.server_list:
        banners = sorted({r["banner"] for r in runs if r["server"] == kind and r.get("banner")})
        for banner in banners[:2]:
            print(f"#   {kind} said: {banner}")
    print(
        "# "
        + ", ".join(
            f"{name} {value}"
            for name, value in found.items()
            if name not in ("gateway commit", "before commit")
        )
    )
    discarded = sum(1 for r in runs if r.get("discarded"))
    print(
        f"# before each run: waited for the machine to be under {args.quiet_pct:g}% busy (at most "
        f"{args.quiet_wait:g} s); {discarded} run(s) re-done because other processes used more "
        f"than {OTHERS_NOISY_PCT:g}% of a CPU during the window (at most {args.retries} retries, "
        "the least disturbed kept; idle, a memory figure, is not re-done)"
    )
    print(
        "# figures: median (min-max) over reps; 'vs node' is server/node for rates, the "
        "difference to node otherwise (each rep against node's run of that rep, then the median)"
        + (
            "; 'gateway / before' is gateway/before for every figure, paired by rep the same "
            "way: median (min-max)"
            if "before" in args.server_list and "gateway" in args.server_list
            else ""
        )
    )
    print(
        "# CPU % of one CPU: the server's from /proc/PID/stat over the window, 'gen CPU %' the "
        "generator's own, 'others %' every other process on the machine"
    )
    for scenario in args.scenario_list:
        print()
        print(f"## {scenario}: {describe(scenario, options_for(scenario, args), args.seconds)}")
        for line in table(scenario, kept_runs(runs, scenario), args.server_list):
            print(line)


def main() -> None:
    args = parse_args()
    if args.report:
        with open(args.report) as saved:
            data = json.load(saved)
        kept = argparse.Namespace(**data["arguments"])
        kept.scenario_list = [s.strip() for s in kept.scenarios.split(",") if s.strip()]
        kept.server_list = [s.strip() for s in kept.servers.split(",") if s.strip()]
        started = datetime.datetime.fromisoformat(data["started"])
        report(kept, data["versions"], data["runs"], started, data["machine"])
        return
    args.nofile = raise_nofile()
    if pinned(GENERATOR_CPU) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {GENERATOR_CPU})  # this process idles beside the generator
    started = datetime.datetime.now(datetime.UTC)
    found = versions(args)
    if not args.no_check:
        for kind in args.server_list:
            failures = check_protocol(kind, args)
            if failures:
                sys.exit(f"{kind} does not speak the protocol: {'; '.join(failures)}")
        print(f"protocol check passed: {', '.join(args.server_list)}", file=sys.stderr)
    runs: list[dict] = []
    done, total = 0, args.reps * len(args.scenario_list) * len(args.server_list)
    for rep in range(1, args.reps + 1):
        for scenario in args.scenario_list:
            options = options_for(scenario, args)
            for kind in args.server_list:
                attempts = []
                for attempt in range(args.retries + 1):
                    record = one_run(rep, scenario, kind, options, args)
                    record["attempt"] = attempt + 1
                    attempts.append(record)
                    others = record["result"].get("other_cpu_pct", 0.0)
                    disturbed = (
                        scenario in CPU_SENSITIVE
                        and others > OTHERS_NOISY_PCT
                        and attempt < args.retries
                    )
                    print(
                        f"[{done + 1}/{total}] rep {rep} {scenario} {kind}: "
                        f"{headline(record['result'], scenario)} ({record['took_s']:.0f} s)"
                        + (f"; others used {others:.0f}% CPU: again" if disturbed else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    if not disturbed:
                        break
                # the least disturbed attempt counts (the last one, unless retries ran out)
                kept = min(
                    attempts,
                    key=lambda r: ("error" in r["result"], r["result"].get("other_cpu_pct", 0)),
                )
                for record in attempts:
                    record["discarded"] = record is not kept
                runs.extend(attempts)
                done += 1

    report(args, found, runs, started, machine())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "started": started.isoformat(),
                    "machine": machine(),
                    "arguments": {
                        key: value
                        for key, value in vars(args).items()
                        if key not in ("scenario_list", "server_list")
                    },
                    "versions": found,
                    "runs": runs,
                    # what the tables' `gateway / before` rows show, per scenario and figure
                    "gateway_vs_before": {
                        scenario: against_before(scenario, kept_runs(runs, scenario))
                        for scenario in args.scenario_list
                    }
                    if {"gateway", "before"} <= set(args.server_list)
                    else None,
                },
                out,
                indent=2,
            )
        print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()
