"""The soak's clients, as real apps run them, and what each one saw.

Python clients (python-socketio's `AsyncClient`) keep one cursor, the newest `eventId` they
delivered (ids sort as strings in emission order), send it in every handshake and with every
rejoin, hold what arrives while they catch up and hand it on once each, in id order: what the
JS client library (`clients/js`) does, which the Node clients run (`js_clients.mjs`). Each
client records every arrival, so that the check can tell a duplicate the protocol explains (an
event of two of its rooms, replayed by both rejoins) from one it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import socketio

from chaos.cluster import ROOT, dies_with_us

JS_CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js_clients.mjs")
CALL_TIMEOUT_S = 10.0


@dataclass
class History:
    """What one client saw, for the check and for a failing run's report."""

    name: str
    kind: str  # py-websocket, js-polling (slow), ...
    user: str
    rooms: list[str]  # every room it is in: its home room and those it joined
    delivered: list[tuple[str, float, bool]] = field(default_factory=list)  # (id, ms, replay)
    # (id, "catchup": twice in one catch-up | "delivered": again after it was delivered)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    refetches: list[dict[str, Any]] = field(default_factory=list)  # gap answers, resyncs
    timeline: list[str] = field(default_factory=list)  # connects, joins, cuts: for a report
    connects: int = 0
    raw_duplicates: int = 0  # the JS library's own count (it dedupes before the app)

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.time():.3f} {what}")
        del self.timeline[:-400]  # the latest are the telling ones


class PyClient:
    """One python-socketio client that reconnects with its cursor, as a real app does."""

    def __init__(
        self, history: History, url: str, transports: list[str], token: str, rooms: list[str]
    ):
        self.history = history
        self.url = url
        self.transports = transports
        self.token = token
        self.joined_rooms = rooms  # rejoined on every reconnection (the home room comes itself)
        self.cursor: str | None = None
        self._delivered: set[str] = set()
        self._catching_up = False
        self._resume_from: str | None = None  # a catch-up's cursor, kept until one completes
        self._buffer: dict[str, float] = {}  # held while catching up: id -> arrival ms
        self._catch_up: asyncio.Task | None = None
        self.ready = asyncio.get_running_loop().create_future()  # its first catch-up done
        self.sio = socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.2,
            reconnection_delay_max=2,
            randomization_factor=0.5,
            request_timeout=10,
        )
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_event)

    def _handshake(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"token": self.token}
        start = self._resume_from if self._resume_from is not None else self.cursor
        if start is not None:
            auth["lastEventId"] = start
        return auth

    async def start(self) -> None:
        # (the handshake is asked for again on each reconnection: a callable)
        await self.sio.connect(
            self.url, transports=self.transports, auth=self._handshake, wait_timeout=20, retry=True
        )

    async def stop(self) -> None:
        if self._catch_up is not None:
            self._catch_up.cancel()
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        with contextlib.suppress(Exception):
            await self.sio.shutdown()

    async def cut(self) -> None:
        """The connection cut from under the client (a network fault); it reconnects."""
        self.history.note("cut")
        eio = self.sio.eio
        with contextlib.suppress(Exception):
            if eio.ws is not None:
                await eio.ws.close()  # the TCP connection, not a Socket.IO disconnect
            elif eio.http is not None:
                await eio.http.close()

    @property
    def catching_up(self) -> bool:
        return self._catching_up

    async def _on_connect(self) -> None:
        self.history.connects += 1
        if self._resume_from is None:
            self._resume_from = self.cursor
        # an interrupted catch-up's arrivals come again: the replays start at the same cursor
        self._buffer.clear()
        self._catching_up = True
        self.history.note(f"connected from {self._resume_from} ({self.sio.transport()})")
        # the rejoins wait for auth_success (the home room's replay comes first)
        self._auth = asyncio.get_running_loop().create_future()
        self._catch_up = asyncio.ensure_future(self._rejoin())

    async def _rejoin(self) -> None:
        try:
            await asyncio.wait_for(self._auth, CALL_TIMEOUT_S)
            for room in self.joined_rooms:
                body: dict[str, Any] = {"roomId": room}
                if self._resume_from is not None:
                    body["lastEventId"] = self._resume_from
                answer = await self.sio.call("join_room", body, timeout=CALL_TIMEOUT_S)
                self.history.note(f"joined {room} from {self._resume_from}: {answer}")
                if not answer.get("ok"):
                    raise RuntimeError(f"join refused: {answer}")
                if answer.get("gap"):
                    self.history.refetches.append({"gap": room, "answer": answer})
        except Exception as exc:  # the connection went, or a call failed: a later one retries
            self.history.note(f"catch-up interrupted: {exc!r}")
            if self.sio.connected:
                await self.cut()
            return
        self._finish_catch_up()

    def _finish_catch_up(self) -> None:
        for event_id in sorted(self._buffer):
            self._deliver(event_id, self._buffer[event_id], replay=True)
        self._buffer.clear()
        self._catching_up = False
        self._resume_from = None
        self.history.note(f"caught up to {self.cursor}")
        if not self.ready.done():
            self.ready.set_result(None)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.history.note(f"disconnected: {reason}")
        self._catching_up = (
            False  # what was held stays held: the next catch-up starts at the same cursor
        )
        if self._catch_up is not None:
            self._catch_up.cancel()

    async def _on_event(self, event: str, payload: Any = None) -> None:
        now = time.time() * 1000
        if event == "auth_success":
            if self.cursor is None and self._resume_from is None and isinstance(payload, dict):
                self.cursor = payload.get("lastEventId")  # a cursor before any event
            if payload.get("gap"):
                self.history.refetches.append({"gap": "handshake", "answer": payload})
            if not self._auth.done():
                self._auth.set_result(None)
            return
        if event == "resync":
            self.history.refetches.append({"resync": payload})
            return
        event_id = payload.get("eventId") if isinstance(payload, dict) else None
        if not isinstance(event_id, str):
            if event in ("auth_error", "error", "rooms_revoked"):
                self.history.note(f"{event}: {payload}")
            return
        if event_id in self._delivered:  # at or before the cursor: never explained
            self.history.duplicates.append((event_id, "delivered"))
            return
        if event_id in self._buffer:  # twice in one catch-up: an event of two rejoined rooms
            self.history.duplicates.append((event_id, "catchup"))
            return
        if self._catching_up or self._resume_from is not None:
            self._buffer[event_id] = now
            return
        self._deliver(event_id, now, replay=False)

    def _deliver(self, event_id: str, at_ms: float, replay: bool) -> None:
        self._delivered.add(event_id)
        self.history.delivered.append((event_id, at_ms, replay))
        if self.cursor is None or event_id > self.cursor:
            self.cursor = event_id


class JsClients:
    """Clients of the JS library (`GatewayClient`) in one Node process, possibly inside a
    network namespace (the slow readers'): their deliveries arrive as JSON lines."""

    def __init__(
        self,
        histories: dict[str, History],
        configs: list[dict[str, Any]],
        prefix: list[str],
        log_path: str,
    ):
        self.histories = histories
        self.configs = configs
        self.prefix = prefix  # `ip netns exec NS` for the slow readers
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.prefix,
                "node",
                JS_CLIENTS,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                preexec_fn=dies_with_us(),
            )
        finally:
            log.close()
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"clients": self.configs}) + "\n").encode())
        await self.process.stdin.drain()
        self._connected = asyncio.get_running_loop().create_future()
        self._reading = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self._connected, 60)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        waiting = {c["name"] for c in self.configs}
        async for line in self.process.stdout:
            report = json.loads(line)
            kind = report["type"]
            if kind == "stopped":
                for name, stats in report["stats"].items():
                    self.histories[name].raw_duplicates = stats["duplicates"]
                self._stopped.set()
                continue
            history = self.histories[report["client"]]
            if kind == "event":
                history.delivered.append((report["eventId"], report["at"], report["replay"]))
            elif kind == "duplicate":
                history.duplicates.append((report["eventId"], report["phase"]))
            elif kind == "refetch":
                history.refetches.append(report["detail"])
            elif kind == "ready":  # connected, and its first joins answered
                waiting.discard(report["client"])
                if not waiting and not self._connected.done():
                    self._connected.set_result(None)
            elif kind == "state":
                history.note(f"{report['state']} {report.get('detail')}")
                if report["state"] == "connected" and not (report.get("detail") or {}).get(
                    "replayed"
                ):
                    history.connects += 1
            else:
                history.note(json.dumps(report))
        if not self._connected.done():
            self._connected.set_exception(RuntimeError(f"node clients exited: see {self.log_path}"))

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        with contextlib.suppress(Exception):
            self.process.stdin.write(b'{"stop": true}\n')
            await self.process.stdin.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), 10)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
