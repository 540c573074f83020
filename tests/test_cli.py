"""`python -m realtime` as a person uses it: help, bad configuration, token, store, serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from realtime.config import describe_variables, development_secret
from server.cli import LISTEN_BACKLOG
from storage.sqlite.store import SqliteStore
from tests.clients import ROOT, make_client


def run(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "realtime", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], **popen) -> AsyncIterator[tuple[Process, str]]:
    """`python -m realtime --port 0` started, with the first line it printed (which names its
    URL); killed on the way out if it has not ended."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "realtime", "--port", "0"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        **{"stderr": asyncio.subprocess.PIPE, **popen},
    )
    try:
        yield process, (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def url_in(line: str) -> str:
    return line.split(" on ")[1].split(" ")[0]


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "MONGODB_"))}
    env.update(STORE_PATH=str(tmp_path / "cli.db"), PYTHONPATH=ROOT, LOG_LEVEL="warning")
    return env


def test_help_explains_every_option_and_variable(cli_env):
    result = run("--help", env=cli_env)
    assert result.returncode == 0
    for name, _, _ in describe_variables():
        assert name in result.stdout
    for command in ("serve", "token", "store", "--host", "--port"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "variable, value", [("PORT", "abc"), ("AUTH_TIMEOUT", "0"), ("LOG_LEVEL", "chatty")]
)
def test_a_bad_configuration_stops_start_up_with_one_clear_line(cli_env, variable, value):
    result = run(env={**cli_env, variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {variable}: ")


def test_token_is_signed_with_the_development_secret(cli_env, tmp_path):
    development_secret(str(tmp_path / "cli.db"))  # as the gateway on that store made it
    result = run(
        "token",
        "--sub",
        "u1",
        "--role",
        "staff",
        "--shop",
        "s1",
        "--shop",
        "s2",
        "--ttl",
        "120",
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "cli.db.jwt-secret").read_text().strip()
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], claims["shop_ids"]) == ("u1", "staff", ["s1", "s2"])
    assert claims["exp"] - claims["iat"] == 120
    assert str(tmp_path / "cli.db.jwt-secret") in result.stderr  # which secret signed it


def test_token_makes_no_secret_that_no_gateway_uses(cli_env, tmp_path):
    # run before any gateway made one (or from another directory): a token signed with a
    # secret of its own would be refused with nothing pointing at why
    result = run("token", "--sub", "u1", "--role", "customer", env=cli_env)
    assert result.returncode == 2 and result.stdout == ""
    assert str(tmp_path / "cli.db.jwt-secret") in result.stderr
    assert "start the gateway first" in result.stderr and "scripts/token" in result.stderr
    assert not (tmp_path / "cli.db.jwt-secret").exists()


def test_without_the_projects_environment_the_command_says_which_to_use(tmp_path):
    # an interpreter that lacks the dependencies, run in the project's directory (as a
    # system python is): one line naming the environment, not a traceback
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    result = subprocess.run(
        [str(bare / "bin" / "python"), "-m", "realtime", "token", "--sub", "u1", "--role", "admin"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "aiohttp" in result.stderr and ".venv/bin/python -m realtime" in result.stderr
    assert "Traceback" not in result.stderr


async def test_store_commands_write_documents(cli_env, tmp_path):
    inserted = run(
        "store",
        "insert",
        "bookings",
        json.dumps({"customerId": "c1", "shopId": "s1", "status": "PENDING"}),
        env=cli_env,
    )
    assert inserted.returncode == 0, inserted.stderr
    doc_id = inserted.stdout.strip()
    assert len(doc_id) == 24 and inserted.stdout.count("\n") == 1
    kept = run("store", "insert", "bookings", '{"_id": "b-7", "status": "confirmed"}', env=cli_env)
    assert kept.stdout.strip() == "b-7"
    assert (
        run(
            "store", "update", "bookings", doc_id, '{"status": "confirmed"}', env=cli_env
        ).returncode
        == 0
    )
    assert run("store", "delete", "bookings", "b-7", env=cli_env).returncode == 0

    store = SqliteStore(str(tmp_path / "cli.db"))
    await store.open()
    try:
        assert (await store.get_document("bookings", doc_id))["status"] == "confirmed"
        assert await store.get_document("bookings", "b-7") is None
    finally:
        await store.close()

    missing = run("store", "update", "bookings", "nope", '{"status": "x"}', env=cli_env)
    assert missing.returncode == 1 and "no document 'nope'" in missing.stderr
    bad = run("store", "insert", "bookings", "{oops", env=cli_env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: not JSON")
    twice = run("store", "insert", "bookings", f'{{"_id": "{doc_id}"}}', env=cli_env)
    assert twice.returncode == 1 and "already holds" in twice.stderr


async def test_serve_starts_on_the_embedded_store_and_stops_on_sigterm(cli_env):
    async with serving(cli_env) as (process, line):
        assert line.startswith("realtime gateway listening on http://127.0.0.1:")
        assert "(store: sqlite:" in line and "cli.db" in line
        url = url_in(line)
        # signed with the secret the gateway made beside its store
        token = run("token", "--sub", "u1", "--role", "customer", env=cli_env).stdout.strip()
        client = make_client("py-websocket", url)
        await client.connect({"token": token})
        assert (await client.next_event("auth_success"))["userId"] == "u1"
        await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        stderr = (await process.stderr.read()).decode()
        assert "JWT_SECRET is not set" in stderr  # the loud development-secret warning


@pytest.mark.parametrize("kind", ["py-websocket", "py-upgrade"])
async def test_sigterm_ends_the_websockets_still_open_and_the_process(cli_env, kind):
    # a WebSocket is read in a task of its own, outside aiohttp's request handling
    async with serving(cli_env) as (process, line):
        token = run("token", "--sub", "u1", "--role", "customer", env=cli_env).stdout.strip()
        client = make_client(kind, url_in(line))
        try:
            await client.connect({"token": token})
            assert (await client.next_event("auth_success"))["userId"] == "u1"
            process.send_signal(signal.SIGTERM)
            await client.wait_disconnected()
            assert await asyncio.wait_for(process.wait(), 30) == 0
            stderr = (await process.stderr.read()).decode()
            assert "Traceback" not in stderr and '"level": "ERROR"' not in stderr, stderr
        finally:
            await client.close()


def _open_files_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


async def test_serve_raises_its_soft_open_files_limit_to_the_hard_one(cli_env):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    started_with = min(1024, hard - 1)

    def lowered() -> None:  # as many systems start a process: a soft limit below the hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (started_with, hard))

    async with serving(cli_env, stderr=asyncio.subprocess.DEVNULL, preexec_fn=lowered) as (
        process,
        printed,
    ):
        while "open files:" not in printed:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line, f"the gateway exited before its open-files line: {printed}"
            printed += line
        soft, hard_now = _open_files_limits(process.pid)
        assert soft == hard_now == hard
        assert f"open files: {hard:,} (about " in printed


def somaxconn() -> int:
    """The kernel's cap on a listening socket's backlog."""
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


async def test_serve_listens_with_a_backlog_a_burst_of_polls_cannot_overflow(cli_env):
    # socket.io-client in Node opens a connection per long-poll: a room's polls all come back
    # at once after a broadcast, and past aiohttp's default backlog (128) the kernel dropped
    # their SYNs, each retried a second later
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss is not installed: apt-get install iproute2")
    expected = min(LISTEN_BACKLOG, somaxconn())
    async with serving(cli_env, stderr=asyncio.subprocess.DEVNULL) as (_, line):
        port = url_in(line).rsplit(":", 1)[1]
        listed = await asyncio.create_subprocess_exec(
            *(ss, "-ltnH", f"sport = :{port}"), stdout=asyncio.subprocess.PIPE
        )
        listening = (await listed.communicate())[0].decode().split()
        # a listening socket's Send-Q is its backlog
        assert int(listening[2]) == expected > 128, listening
