"""Hostile cases of the first hour's changes: the replay of shop rooms (put in on
authentication, replayed by the handshake, rejoined with a cursor) loses no event, sends none
twice and hides no gap, whatever comes in between (a join, a refresh, the Admin UI); the
banner's token command works as printed; the README's test command skips, never errs, on a
machine without Node or the JS client."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from realtime.wire import event_id
from tests.clients import ROOT, make_client
from tests.gateways import GatewayProcess
from tests.test_transport import eventually

ADMIN = {"username": "ops", "password": "correct horse battery"}


async def broadcast(gateway, room: str, title: str) -> str:
    answer = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": title}, "rooms": [room]}, None
    )
    return answer["eventId"]


def notification_ids(client) -> list[str]:
    return [p["eventId"] for name, p in client.log if name == "notification"]


async def staff_went_away_after(gateway, connect) -> str:
    """A staff member of shop s1 saw one event of the shop's room, then disconnected: the
    event's id is its cursor."""
    first = await connect(sub="st1", role="staff", shops=["s1"])
    seen = await broadcast(gateway, "shop-s1", "seen")
    assert (await first.next_event("notification"))["eventId"] == seen
    await first.disconnect()
    await first.wait_disconnected()
    return seen


# -- replay ------------------------------------------------------------------------------------


@pytest.mark.env(REPLAY_MAX_EVENTS="2")
async def test_a_shop_rooms_gap_in_the_handshake_replay_is_not_hidden_by_its_rejoin(
    gateway, clients, connect, token
):
    """The handshake replays shop-s1 up to REPLAY_MAX_EVENTS and says `gap` (summed: it names
    no room; clients/js and docs/clients.md take it for the user's room). The rejoin of
    shop-s1 with the same cursor, what every documented client does next, says that shop-s1
    has a gap too: what the socket has of it starts where the replay stopped short."""
    seen = await staff_went_away_after(gateway, connect)
    missed = [await broadcast(gateway, "shop-s1", f"missed {n}") for n in range(4)]
    again = clients()
    await again.connect({"token": token("st1", "staff", ["s1"]), "lastEventId": seen})
    success = await again.next_event("auth_success")
    assert success["gap"] is True and success["replayed"] == 2
    answer = await again.call("join_room", {"roomId": "shop-s1", "lastEventId": seen})
    assert answer["ok"]
    assert answer.get("gap") is True or notification_ids(again) == missed, (
        answer,
        notification_ids(again),
    )


async def test_a_cursor_beyond_the_log_is_a_gap_in_a_shop_room_it_was_put_in(gateway, connect):
    """protocol.md: a lastEventId above every id the log gave is `gap: true`. For a shop room
    the socket was put in on authentication (no handshake cursor: a client that authenticates
    with the `authenticate` event, which takes none) a join with such a cursor is judged by
    the log too, not taken for one the socket is past."""
    newest = await broadcast(gateway, "shop-s1", "the newest")
    beyond = event_id(int(newest) + 1000)
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    answer = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": beyond})
    assert answer["ok"] and answer["lastEventId"] == newest
    assert answer["gap"] is True, answer


@pytest.mark.env(CLIENT_BACKLOG_MAX="10")  # replays in slices of 2: the user room's is long
async def test_a_join_sent_while_the_handshake_replays_gets_nothing_twice(
    gateway, clients, connect, token
):
    """docs/clients.md's client sends `join_room {roomId, lastEventId}` on `connect`, while
    the handshake is still replaying: the join waits for that replay to end, and then
    replays nothing of shop-s1 again."""
    seen = await staff_went_away_after(gateway, connect)
    for n in range(200):  # the user's room first: its replay is still going when the join comes
        await broadcast(gateway, "user-st1", f"for the user {n}")
    missed = [await broadcast(gateway, "shop-s1", f"missed {n}") for n in range(3)]
    again = clients()
    await again.connect({"token": token("st1", "staff", ["s1"]), "lastEventId": seen})
    answer = await again.call("join_room", {"roomId": "shop-s1", "lastEventId": seen})
    assert answer["ok"]
    await again.next_event("auth_success", timeout=30)
    shop = [i for i in notification_ids(again) if i in missed]
    assert shop == missed, f"shop-s1's missed events arrived as {shop}, join answered {answer}"


@pytest.mark.env(CLIENT_BACKLOG_MAX="10")
async def test_a_refresh_during_the_handshake_replay_does_not_lose_the_shop_rooms_replay(
    gateway, clients, connect, token
):
    """A refresh (`authenticate`) while the handshake replays the user's room waits for that
    replay to end: it neither stops the replay of shop-s1 nor enters the room before it."""
    seen = await staff_went_away_after(gateway, connect)
    for n in range(200):
        await broadcast(gateway, "user-st1", f"for the user {n}")
    missed = [await broadcast(gateway, "shop-s1", f"missed {n}") for n in range(3)]
    again = clients()
    fresh = token("st1", "staff", ["s1"])
    await again.connect({"token": fresh, "lastEventId": seen})
    refreshed = await again.call("authenticate", {"token": fresh})
    assert refreshed["ok"]
    for _ in range(2):  # the refresh's and the handshake's
        await again.next_event("auth_success", timeout=30)
    shop = [i for i in notification_ids(again) if i in missed]
    assert shop == missed, f"shop-s1's missed events arrived as {shop}"


@pytest.mark.env(
    ADMIN_UI_USERNAME=ADMIN["username"],
    ADMIN_UI_PASSWORD=ADMIN["password"],
    ADMIN_UI_READ_ONLY="false",
)
async def test_a_room_the_admin_ui_took_away_and_gave_back_replays_what_was_missed(
    gateway, connect, base_url, settings
):
    """What a socket has had of a room goes with its membership, whoever ends it (the Admin
    UI, a rooms_revoked of a moved booking): put back by the UI, a join with a cursor replays
    what came while the socket was out."""
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    sid = staff.sio.get_sid("/")
    seen = await broadcast(gateway, "shop-s1", "seen")
    assert (await staff.next_event("notification"))["eventId"] == seen
    ui = make_client("js-websocket", base_url + "/admin", settings.socketio_path)
    try:
        await ui.connect(ADMIN)
        await ui.emit("leave", "/", "shop-s1", sid)
        await eventually(lambda: "shop-s1" not in gateway.engine.rooms_of(sid))
        missed = await broadcast(gateway, "shop-s1", "while out of the room")
        await ui.emit("join", "/", "shop-s1", sid)
        await eventually(lambda: "shop-s1" in gateway.engine.rooms_of(sid))
    finally:
        await ui.close()
    answer = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": seen})
    assert answer["ok"]
    assert answer["replayed"] == 1 and missed in notification_ids(staff), answer


@pytest.mark.env(MAX_ROOMS_PER_SOCKET="3")
async def test_a_refresh_keeps_a_socket_within_max_rooms_per_socket(gateway, connect, token):
    """A join past MAX_ROOMS_PER_SOCKET is refused, and a refreshed token with more shops
    enters no more of their rooms than the limit leaves."""
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    assert (await staff.call("join_room", {"roomId": "availability-s1"}))["ok"]
    refreshed = await staff.call("authenticate", {"token": token("st1", "staff", ["s1", "s2"])})
    assert refreshed["ok"]
    assert len(refreshed["rooms"]) <= 3, refreshed["rooms"]


# -- the start-up banner ----------------------------------------------------------------------


async def test_the_banners_token_command_works_as_printed_with_a_store_path_of_its_own(
    tmp_path, free_port
):
    """`STORE_PATH=/somewhere python -m realtime` from the project's directory: the banner says
    how to get a token with a line that, pasted in another terminal (no STORE_PATH), signs
    with that store's secret, not ./realtime.db's."""
    gateway = GatewayProcess({"STORE_PATH": str(tmp_path / "elsewhere.db")}, free_port())
    gateway.env.pop("JWT_SECRET", None)  # the development secret, made beside that store
    await gateway.start()
    try:
        while "token:" not in (line := (await gateway.process.stdout.readline()).decode()):
            assert line, "the banner has no token line"
        command = line.split("token:", 1)[1].strip()
        terminal = {k: v for k, v in os.environ.items() if k not in ("STORE_PATH", "JWT_SECRET")}
        made = await asyncio.create_subprocess_exec(
            *("bash", "-c", command),
            cwd=ROOT,
            env=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        printed, complaint = await asyncio.wait_for(made.communicate(), 60)
        assert made.returncode == 0, (command, complaint.decode())
        client = make_client("py-websocket", gateway.url)
        try:
            await client.connect({"token": printed.decode().strip()})
            assert (await client.next_event("auth_success"))["userId"] == "staff-1"
        finally:
            await client.close()
    finally:
        await gateway.stop()


# -- a fresh machine ---------------------------------------------------------------------------


def pytest_in(directory: str, path: str, *args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", path, *args],
        cwd=directory,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_node_the_documented_clients_test_skips_rather_than_fails(tmp_path):
    """scripts/test, not root or without apt: with node missing, the tests that run it skip,
    saying so."""
    bare = tmp_path / "bin"  # a PATH with no node on it (the interpreter is named in full)
    bare.mkdir()
    run = pytest_in(ROOT, "tests/test_clients_doc.py", env={"PATH": str(bare)})
    assert run.returncode == 0 and " failed" not in run.stdout, run.stdout[-3000:]


def test_without_npm_ci_the_js_client_tests_skip_rather_than_fail(tmp_path):
    """A fresh clone where scripts/test could not run `npm ci` (no npm, not root): the js-*
    kinds of `client_kind` skip, naming what to install."""
    clone = tmp_path / "clone"
    shutil.copytree(
        ROOT,
        clone,
        ignore=shutil.ignore_patterns("node_modules", ".venv", ".git", "__pycache__", "*.db*"),
    )
    run = pytest_in(
        str(clone),
        "tests/test_rooms.py",
        "-k",
        "put_in_their_shops_rooms_on_authentication and js-websocket",
    )
    assert run.returncode == 0 and " failed" not in run.stdout, run.stdout[-3000:]
