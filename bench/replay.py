"""Benchmark: a client reconnecting after missing 10,000 events.

    .venv/bin/python bench/replay.py [--missed 10000] [--transport websocket|polling]

The gateway runs as its own process (embedded store) pinned to CPU 0; this process on CPU 1
logs the missed events for one user (straight into the event log, as the emit path would have),
then connects that user with the handshake's `lastEventId` and times the catch-up: every missed
event arrives, in order, before `auth_success` (which reports `replayed`). It prints the time to
catch up, events/s, and the gateway's RSS before, after and at its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time

import socketio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import UNLIMITED  # noqa: E402
from bench.changes import SECRET, free_port, pinned, rss_kb, start, token  # noqa: E402
from storage.base import NewEvent  # noqa: E402
from storage.sqlite.store import SqliteStore  # noqa: E402


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missed", type=int, default=10_000)
    parser.add_argument("--transport", choices=["websocket", "polling"], default="websocket")
    args = parser.parse_args()
    if pinned(0) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})

    workdir = tempfile.mkdtemp(prefix="bench-replay-")
    store_path = os.path.join(workdir, "replay.db")
    store = SqliteStore(store_path)
    await store.open()
    first = await store.append_events(
        [NewEvent("notification", {"title": "seen"}, ("user-c1",), "bench:seen")]
    )
    batch = 1000
    for start_at in range(0, args.missed, batch):
        await store.append_events(
            [
                NewEvent(
                    "notification",
                    {"title": f"missed {n}", "body": "x" * 200},
                    ("user-c1", "admin-general"),
                    f"bench:{n}",
                )
                for n in range(start_at, min(args.missed, start_at + batch))
            ]
        )
    await store.close()

    port = free_port()
    server = await start(
        [*pinned(0), sys.executable, "-m", "realtime", "--port", str(port)],
        {
            "STORE_PATH": store_path,
            "JWT_SECRET": SECRET,
            "LOG_LEVEL": "warning",
            "PYTHONPATH": ROOT,
            "REPLAY_MAX_EVENTS": str(args.missed),
            **UNLIMITED,
        },
    )
    try:
        rss_before = rss_kb(server.pid)
        client = socketio.AsyncClient(reconnection=False)
        received: list[str] = []
        done = asyncio.get_running_loop().create_future()

        @client.on("notification")
        def on_notification(payload):
            received.append(payload["eventId"])

        @client.on("auth_success")
        def on_auth_success(payload):
            done.set_result(payload)

        started = time.perf_counter()
        await client.connect(
            f"http://127.0.0.1:{port}",
            transports=[args.transport],
            auth={
                "token": token({"sub": "c1", "role": "customer", "shops": []}),
                "lastEventId": f"{first[0].sequence:016d}",
            },
        )
        success = await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - started
        rss_after, rss_peak = rss_kb(server.pid), peak_rss_kb(server.pid)
        await client.disconnect()
    finally:
        server.terminate()
        await server.wait()
    assert success["replayed"] == args.missed and len(received) == args.missed, success
    assert received == sorted(received) and len(set(received)) == len(received)
    print(
        f"# bench/replay.py on {platform.node()} ({os.cpu_count()} CPUs), python "
        f"{platform.python_version()}; gateway pinned to CPU 0, the python-socketio client on "
        f"CPU 1, {args.transport}"
    )
    print(
        f"replay of {args.missed} missed events (about 300 bytes each): caught up in "
        f"{elapsed:.2f} s ({args.missed / elapsed:,.0f} events/s), all in order before "
        f"auth_success"
    )
    print(
        f"gateway RSS: {rss_before / 1024:.1f} MB before, {rss_after / 1024:.1f} MB after, "
        f"{rss_peak / 1024:.1f} MB peak"
    )


if __name__ == "__main__":
    asyncio.run(main())
