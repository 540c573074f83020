"""`python -m realtime --demo` as a newcomer runs it: one start turns everything on, and what
its banner prints works as printed (the token command, the curl, the Admin UI's login), on
demo data whose rooms are the ones the page and the README name."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from realtime.changes.demo import DemoWriter
from realtime.changes.mapping import DocumentMapping
from realtime.config import Settings, load_settings
from server.cli import banner
from storage.sqlite.store import SqliteStore
from tests.clients import ROOT, make_client

BANNER_S = 30.0


class DemoProcess:
    """`python -m realtime --demo` in the project's directory, its banner read as printed."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.lines: dict[str, str] = {}  # the banner's rows, by their first word
        self.url = ""

    async def start(self) -> DemoProcess:
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "realtime", "--demo", "--port", "0"),
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        first = await self._line()
        self.url = re.search(r"listening on (http://\S+)", first).group(1)
        while "broadcast" not in self.lines:  # the banner's last row with the demo
            line = await self._line()
            label, _, value = line.strip().partition(": ")
            if line.startswith("  "):
                self.lines[label] = value.strip()
        return self

    async def _line(self) -> str:
        line = await asyncio.wait_for(self.process.stdout.readline(), BANNER_S)
        assert line, "the gateway exited before its banner"
        return line.decode()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 30)


@pytest.fixture
def demo_env(tmp_path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "MONGODB_", "ADMIN_UI_", "BROADCAST_", "TEST_PAGE"))
    }
    env.update(STORE_PATH=str(tmp_path / "demo.db"), PYTHONPATH=ROOT, LOG_LEVEL="warning")
    return env


@pytest.fixture
async def demo(demo_env) -> AsyncIterator[DemoProcess]:
    gateway = await DemoProcess(demo_env).start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def shell(command: str, env: dict[str, str]) -> str:
    """Run a line of the banner as a person pastes it into a shell, in the project's
    directory."""
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(120)
async def test_one_demo_start_turns_everything_on_and_its_banner_works_as_printed(demo, demo_env):
    rows = demo.lines
    assert rows["test page"] == f"{demo.url}/websocket-test"
    assert rows["Admin UI"].startswith(f"{demo.url}/admin-ui/")
    # the token command, as printed, pasted into another shell (without the gateway's
    # STORE_PATH: the line names it): signed with the running gateway's secret
    elsewhere = {k: v for k, v in demo_env.items() if k != "STORE_PATH"}
    token = shell(rows["token"], elsewhere).strip()
    assert "scripts/token --sub staff-1 --role staff --shop 1" in rows["token"]
    staff = make_client("js-websocket", demo.url)
    await staff.connect({"token": token})
    success = await staff.next_event("auth_success")
    assert success["userId"] == "staff-1" and "shop-1" in success["rooms"]
    # the rooms the page and the README name are the demo shop's
    assert (await staff.call("join_room", {"roomId": "availability-1"}))["ok"] is True
    # the demo's bookings of shop 1 reach the shop's staff, in the room they were put in
    while (update := await staff.next_event("reservation_update", 60))["shopId"] != "1":
        pass
    assert update["therapistId"].startswith("therapist-1-")
    # the curl, as printed, broadcasts to the demo shop
    answer = json.loads(shell(rows["broadcast"], demo_env))
    while (await staff.next_event("notification"))["eventId"] != answer["eventId"]:
        pass
    # the Admin UI's login, as printed
    login = re.search(r"user (\S+), password (\S+)", rows["Admin UI"])
    ui = make_client("js-websocket", demo.url + "/admin")
    await ui.connect({"username": login.group(1), "password": login.group(2)})
    assert any(s["nsp"] == "/" for s in await ui.next_event("all_sockets"))
    await ui.close()
    await staff.close()


@pytest.mark.timeout(120)
async def test_the_demos_credentials_are_kept_across_restarts_and_the_operators_win(demo_env):
    first = await DemoProcess(demo_env).start()
    await first.stop()
    again = await DemoProcess(demo_env).start()
    await again.stop()
    assert again.lines["broadcast"] == first.lines["broadcast"].replace(first.url, again.url)
    assert again.lines["Admin UI"].split("user ")[1] == first.lines["Admin UI"].split("user ")[1]
    own = {**demo_env, "BROADCAST_TOKEN": "the-operators-own-token-0123"}
    own.update(ADMIN_UI_USERNAME="ops", ADMIN_UI_PASSWORD="the operators password")
    chosen = DemoProcess(own)
    chosen.process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "realtime", "--demo", "--port", "0"),
        cwd=ROOT,
        env=own,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        printed = [await chosen._line() for _ in range(5)]
    finally:
        await chosen.stop()
    text = "".join(printed)
    assert "the operators password" not in text and "the-operators-own-token" not in text
    assert "(ADMIN_UI_USERNAME's login)" in text


@pytest.mark.parametrize(
    "settings, expected, absent",
    [
        (
            Settings(test_page=False),
            ["test page:  off (TEST_PAGE=true", "Admin UI:   off (ADMIN_UI_USERNAME"],
            ["broadcast"],
        ),
        (
            Settings(jwt_secret_generated=True),
            ["test page:  http://127.0.0.1:8000/websocket-test", "token:      "],
            ["Admin UI:   http"],
        ),
    ],
)
def test_the_banner_names_each_page_or_how_to_turn_it_on(settings, expected, absent):
    text = banner(settings, "http://127.0.0.1:8000", demo=False)
    for line in expected:
        assert line in text
    for line in absent:
        assert line not in text


class RecordingStore(SqliteStore):
    """The embedded store, keeping what was inserted through it."""

    inserted: list[tuple[str, dict]]

    async def insert_document(self, collection: str, document: dict) -> str:
        self.inserted.append((collection, dict(document)))
        return await super().insert_document(collection, document)


async def test_the_demo_writes_the_ids_the_rooms_are_named_by(tmp_path):
    settings = load_settings({"STORE_PATH": str(tmp_path / "ids.db")})
    store = RecordingStore(str(tmp_path / "ids.db"))
    store.inserted = []
    await store.open()
    try:
        writer = DemoWriter(store, DocumentMapping(settings), rng=random.Random(7))
        for _ in range(40):
            await writer.step()
    finally:
        await store.close()
    bookings = [doc for collection, doc in store.inserted if collection == "bookings"]
    assert bookings and {b["shopId"] for b in bookings} == {"1", "2", "3"}
    assert all(b["therapistId"].startswith(f"therapist-{b['shopId']}-") for b in bookings)
    payments = [doc for collection, doc in store.inserted if collection == "payments"]
    assert payments and {p["shopId"] for p in payments} <= {"1", "2", "3"}
