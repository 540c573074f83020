"""Operators cutting sockets and refusing tokens: `POST /disconnect` and `POST /revoke` with
real clients, on one gateway, across a restart, and across two gateway processes with Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from realtime.access.auth import Principal
from realtime.access.revocations import Revocations
from realtime.config import load_settings
from realtime.errors import GatewayError
from realtime.gateway import GATEWAY
from server.app import create_app
from storage.base import Revocation
from storage.sqlite.store import SqliteStore
from tests.clients import Client, Refused, make_client
from tests.conftest import SECRET
from tests.gateways import SERVICE_TOKEN, GatewayProcess

AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
SERVER_DISCONNECTS = {"io server disconnect", "server disconnect"}  # JS, Python


async def order(http, path: str, body, headers=None) -> tuple[int, dict]:
    response = await http.post(path, json=body, headers={**AUTH, **(headers or {})})
    return response.status, await response.json()


async def order_at(url: str, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        return await order(session, url + path, body)


def in_an_hour() -> int:
    return int(time.time()) + 3600


async def cut_off(client: Client, message: str | None = None) -> None:
    """The client got `auth_error` revoked, then a Socket.IO disconnect from the server."""
    reason = await client.wait_disconnected()
    log = list(client.log)  # as it stood when the disconnect came
    assert reason in SERVER_DISCONNECTS, reason
    errors = [payload for name, payload in log if name == "auth_error"]
    assert len(errors) == 1 and errors[0]["code"] == "revoked", log
    if message is not None:
        assert errors[0]["message"] == message


async def still_served(client: Client) -> None:
    assert not client.disconnected.is_set()
    assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"] is True


@pytest.fixture
def authenticated(clients, token) -> Callable:
    """`await authenticated(kind, sub, **claims)`: a client authenticated in the handshake
    with a token of these claims (a `jti`, say)."""

    async def make(kind: str = "py-websocket", sub: str = "u1", **claims) -> Client:
        client = clients(kind)
        await client.connect({"token": token(sub, **claims)})
        await client.next_event("auth_success")
        return client

    return make


async def refused_with(clients, token: str) -> str:
    client = clients("py-websocket")
    with pytest.raises(Refused) as refused:
        await client.connect({"token": token})
    return refused.value.data["code"]


# -- one gateway ------------------------------------------------------------------------------


async def test_disconnect_cuts_every_socket_of_the_users_named(http, authenticated, client_kind):
    first = await authenticated(client_kind, "u1")
    second = await authenticated("py-polling", "u1")
    other = await authenticated(client_kind, "u2")
    status, body = await order(http, "/disconnect", {"users": ["u1"], "reason": "banned"})
    assert (status, body) == (202, {"disconnected": 2})
    await cut_off(first, "banned")
    await cut_off(second, "banned")
    await still_served(other)


async def test_disconnect_cuts_the_sockets_named_by_sid(
    http, authenticated, clients, gateway, client_kind
):
    known = await authenticated("py-websocket", "u1")
    named = await authenticated(client_kind, "u1")
    [sid] = set(gateway.sessions.sockets_of("u1")) - {known.sio.get_sid()}
    anonymous = clients("py-websocket")
    await anonymous.connect()  # not authenticated yet: it can be cut too
    status, body = await order(http, "/disconnect", {"sids": [sid, anonymous.sio.get_sid()]})
    assert (status, body) == (202, {"disconnected": 2})
    await cut_off(named, "an operator disconnected this socket")
    await cut_off(anonymous)
    await still_served(known)
    assert await order(http, "/disconnect", {"sids": ["no-such-sid"]}) == (
        202,
        {"disconnected": 0},
    )


async def test_revoking_a_jti_cuts_its_socket_and_refuses_it_from_then_on(
    http, authenticated, clients, token, client_kind
):
    exp = in_an_hour()
    revoked = await authenticated(client_kind, "u1", jti="t-1")
    same_user = await authenticated("py-websocket", "u1", jti="t-2")
    status, body = await order(http, "/revoke", {"jti": "t-1", "until": exp})
    until = dt.datetime.fromtimestamp(exp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert (status, body) == (202, {"jti": "t-1", "until": until, "disconnected": 1})
    await cut_off(revoked, "this token has been revoked")
    await still_served(same_user)  # another token of the same user is not revoked
    assert await refused_with(clients, token("u1", jti="t-1")) == "revoked"
    # nor after connecting, with the `authenticate` event
    late = clients(client_kind)
    await late.connect()
    answer = await late.call("authenticate", {"token": token("u1", jti="t-1")})
    assert answer["error"]["code"] == "revoked"
    assert (await late.next_event("auth_error"))["code"] == "revoked"
    assert (await late.call("authenticate", {"token": token("u1", jti="t-3")}))["ok"] is True


async def test_revoking_a_sub_cuts_all_its_sockets_until_the_time_given(
    http, authenticated, clients, token, client_kind
):
    one = await authenticated(client_kind, "u1", jti="a")
    two = await authenticated("py-polling", "u1")
    bystander = await authenticated(client_kind, "u2")
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()  # ISO 8601 too
    status, body = await order(http, "/revoke", {"sub": "u1", "until": until, "reason": "ban"})
    assert status == 202 and body["sub"] == "u1" and body["disconnected"] == 2
    await cut_off(one, "ban")
    await cut_off(two, "ban")
    await still_served(bystander)
    assert await refused_with(clients, token("u1")) == "revoked"
    await authenticated("py-websocket", "u2")  # another user's new token is accepted


async def test_a_revocation_whose_time_has_passed_lifts_the_one_before(
    http, authenticated, clients, token
):
    assert (await order(http, "/revoke", {"sub": "u1", "until": in_an_hour()}))[0] == 202
    assert await refused_with(clients, token("u1")) == "revoked"
    status, body = await order(http, "/revoke", {"sub": "u1", "until": 0})
    assert (status, body["disconnected"]) == (202, 0)
    await authenticated("py-websocket", "u1")  # accepted again


async def test_a_revocation_is_read_from_the_store_after_a_restart(environ, free_port, token):
    env = {**environ, "BROADCAST_TOKEN": SERVICE_TOKEN}
    gateway = await GatewayProcess(env, free_port()).start()
    try:
        client = make_client("js-websocket", gateway.url)
        await client.connect({"token": token("u1", jti="kept")})
        await client.next_event("auth_success")
        status, _ = await order_at(gateway.url, "/revoke", {"jti": "kept", "until": in_an_hour()})
        assert status == 202
        await cut_off(client)
        await client.close()
    finally:
        await gateway.stop()
    restarted = await GatewayProcess(env, gateway.port).start()
    try:
        client = make_client("py-websocket", restarted.url)
        with pytest.raises(Refused) as refused:
            await client.connect({"token": token("u1", jti="kept")})
        assert refused.value.data["code"] == "revoked"
        await client.connect({"token": token("u1", jti="fresh")})
        assert (await client.next_event("auth_success"))["userId"] == "u1"
        await client.close()
    finally:
        await restarted.stop()


async def test_an_instance_that_missed_the_message_catches_up_from_the_store(
    aiohttp_server, settings, token
):
    # two gateways on one store without Redis: no bus carries the order from one to the other
    first, second = create_app(settings), create_app(settings)
    await aiohttp_server(first)
    other = await aiohttp_server(second)
    client = make_client("py-websocket", str(other.make_url("")).rstrip("/"))
    try:
        await client.connect({"token": token("u1", jti="j")})
        await client.next_event("auth_success")
        await first[GATEWAY].revoker.revoke({"jti": "j", "until": in_an_hour()})
        assert await second[GATEWAY].revoker.reload() == 1  # what its timer does
        await cut_off(client)
        assert await second[GATEWAY].revoker.reload() == 0  # nothing new the next time
    finally:
        await client.close()


@pytest.mark.env(REVOCATION_RELOAD="0.2")
async def test_without_a_bus_the_periodic_reload_cuts_and_refuses_in_time(
    aiohttp_server, settings, token
):
    # two gateways on one store without Redis: only REVOCATION_RELOAD's timer carries it
    first, second = create_app(settings), create_app(settings)
    await aiohttp_server(first)
    other = await aiohttp_server(second)
    url = str(other.make_url("")).rstrip("/")
    client = make_client("py-websocket", url)
    try:
        await client.connect({"token": token("u1", jti="j")})
        await client.next_event("auth_success")
        await first[GATEWAY].revoker.revoke({"sub": "u1", "until": in_an_hour()})
        await asyncio.wait_for(cut_off(client), 2)  # ten intervals, well before the default 5 s
        refused = make_client("py-websocket", url)
        with pytest.raises(Refused) as error:
            await refused.connect({"token": token("u1", jti="k")})
        assert error.value.data["code"] == "revoked"
    finally:
        await client.close()


class HeldReads(SqliteStore):
    """A real store whose `revocations()` read, once `hold` is set, takes its snapshot at once
    and then waits for `hold` before answering: a read that started before a revocation was
    applied and finishes after it."""

    hold: asyncio.Event | None = None
    reading: asyncio.Event

    async def revocations(self) -> list[Revocation]:
        rows = await super().revocations()
        if self.hold is not None:
            self.reading.set()
            await self.hold.wait()
        return rows

    def held_read(self) -> asyncio.Event:
        self.hold, self.reading = asyncio.Event(), asyncio.Event()
        return self.hold


@pytest.fixture
async def held(aiohttp_client, settings) -> AsyncIterator[tuple]:
    """(http client, gateway, store) of one gateway on a `HeldReads` store; its own timer
    never reloads during a test."""
    store = HeldReads(settings.store_path, poll_ms=settings.watcher_poll_ms)
    app = create_app(settings.replace(revocation_reload_s=3600), store=store)
    http = await aiohttp_client(app)
    yield http, app[GATEWAY], store
    if store.hold is not None:
        store.hold.set()


async def held_reload(gateway, store: HeldReads) -> tuple[asyncio.Task, asyncio.Event]:
    """A reload under way, its store snapshot taken, its answer held."""
    hold = store.held_read()
    reload = asyncio.create_task(gateway.revoker.reload())
    await asyncio.wait_for(store.reading.wait(), 10)
    return reload, hold


async def test_a_revocation_applied_during_a_reload_is_not_dropped(held, token):
    http, gateway, store = held
    base = str(http.make_url("")).rstrip("/")
    client = make_client("py-websocket", base)
    try:
        await client.connect({"token": token("u1", jti="stolen")})
        await client.next_event("auth_success")
        reload, hold = await held_reload(gateway, store)  # its snapshot has no revocation
        status, _ = await order(http, "/revoke", {"jti": "stolen", "until": in_an_hour()})
        assert status == 202
        await cut_off(client)
        # and one heard on the bus meanwhile
        gateway.revoker.heard(
            {
                "control": "revoke",
                "kind": "sub",
                "value": "u9",
                "untilMs": in_an_hour() * 1000,
                "message": "banned",
            }
        )
        hold.set()
        assert await asyncio.wait_for(reload, 10) == 0
    finally:
        await client.close()
    for refused_token in (token("u1", jti="stolen"), token("u9")):
        refused = make_client("py-websocket", base)
        with pytest.raises(Refused) as error:
            await refused.connect({"token": refused_token})
        assert error.value.data["code"] == "revoked"
    store.hold = None
    assert await gateway.revoker.reload() == 0  # the next read has them, as held: none missed


async def test_a_ban_lifted_during_a_reload_is_not_brought_back(held, token):
    http, gateway, store = held
    base = str(http.make_url("")).rstrip("/")
    assert (await order(http, "/revoke", {"sub": "u1", "until": in_an_hour()}))[0] == 202
    reload, hold = await held_reload(gateway, store)  # its snapshot still has the ban
    assert (await order(http, "/revoke", {"sub": "u1", "until": 0}))[0] == 202
    client = make_client("py-websocket", base)
    try:
        await client.connect({"token": token("u1")})  # lifted: accepted
        await client.next_event("auth_success")
        hold.set()
        assert await asyncio.wait_for(reload, 10) == 0  # nothing "missed", nobody cut
        await still_served(client)
        again = make_client("py-websocket", base)
        await again.connect({"token": token("u1")})
        await again.next_event("auth_success")
        await again.close()
    finally:
        await client.close()


# -- bad calls --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/disconnect", {}, "_schema"),
        ("/disconnect", {"users": [], "sids": []}, "_schema"),
        ("/disconnect", {"users": "u1"}, "users"),
        ("/disconnect", {"users": [""]}, "users"),
        ("/disconnect", {"users": ["u1"], "reason": ""}, "reason"),
        ("/disconnect", {"users": ["u1"], "rooms": ["x"]}, "rooms"),
        ("/revoke", {"until": 5}, "_schema"),
        ("/revoke", {"jti": "a", "sub": "b", "until": 5}, "_schema"),
        ("/revoke", {"jti": "a"}, "until"),
        ("/revoke", {"jti": "a", "until": "tomorrow"}, "until"),
        ("/revoke", {"jti": "a", "until": "2026-11-21T10:00:00"}, "until"),  # no offset
        ("/revoke", {"jti": "a", "until": True}, "until"),
        ("/revoke", {"jti": "a", "until": -1}, "until"),
        ("/revoke", {"jti": "a", "until": 1e300}, "until"),
        ("/revoke", {"jti": 7, "until": 5}, "jti"),
        ("/revoke", [], "_schema"),
    ],
)
async def test_bad_bodies_are_400_with_the_field_named(http, path, body, field):
    status, answer = await order(http, path, body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_payload"
    assert field in answer["error"]["details"], answer


@pytest.mark.parametrize("path", ["/disconnect", "/revoke"])
async def test_calls_are_refused_as_for_broadcast(http, path):
    assert (await http.post(path, json={"users": ["u1"]})).status == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    response = await http.post(path, json={"users": ["u1"]}, headers=wrong)
    assert (response.status, (await response.json())["error"]["code"]) == (401, "unauthenticated")
    response = await http.post(path, data=b"users=u1", headers=AUTH)
    assert response.status == 415
    response = await http.post(
        path, data=b"{", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400


@pytest.mark.parametrize("path", ["/disconnect", "/revoke"])
async def test_without_a_configured_token_they_are_403(aiohttp_client, tmp_path, path):
    settings = load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": SECRET})
    http = await aiohttp_client(create_app(settings))
    response = await http.post(path, json={"users": ["u1"]}, headers=AUTH)
    assert (response.status, (await response.json())["error"]["code"]) == (403, "forbidden")


# -- the set in memory, without a server --------------------------------------------------------


def principal(user_id: str = "u1", jti: str | None = None) -> Principal:
    return Principal(user_id, "customer", frozenset(), time.time() + 60, jti)


def test_revocations_refuse_their_jti_or_sub_until_their_time():
    now = [1000.0]
    revocations = Revocations(clock=lambda: now[0])
    assert revocations.revoked_by(principal()) is None
    assert revocations.apply(Revocation("jti", "t", 2_000_000)) is True
    assert revocations.apply(Revocation("sub", "u2", 1_500_000)) is True
    assert revocations.apply(Revocation("sub", "u3", 999_000)) is False  # already passed
    assert revocations.revoked_by(principal("u1", "t")) == "jti"
    assert revocations.revoked_by(principal("u2")) == "sub"
    assert revocations.revoked_by(principal("u1", "other")) is None
    assert revocations.revoked_by(principal("t")) is None  # a jti is not a sub
    with pytest.raises(GatewayError) as error:
        revocations.check(principal("u2"))
    assert error.value.code == "revoked"
    now[0] = 1600.0  # u2's has passed
    assert revocations.revoked_by(principal("u2")) is None
    # the store's set replaces what is held; the new or longer ones are told apart
    missed = revocations.replace(
        [Revocation("jti", "t", 2_000_000), Revocation("sub", "u4", 1_700_000)]
    )
    assert missed == [Revocation("sub", "u4", 1_700_000)]
    assert len(revocations) == 2


def test_a_store_read_older_than_an_apply_does_not_undo_it():
    revocations = Revocations(clock=lambda: 1000.0)
    revocations.apply(Revocation("sub", "banned", 2_000_000))
    read_from = revocations.version  # a store read starts: it sees the ban, nothing else
    snapshot = [Revocation("sub", "banned", 2_000_000)]
    assert revocations.apply(Revocation("jti", "new", 2_000_000)) is True  # meanwhile
    assert revocations.apply(Revocation("sub", "banned", 0)) is False  # and a lift
    assert revocations.replace(snapshot, read_from) == []
    assert revocations.revoked_by(principal("u1", "new")) == "jti"
    assert revocations.revoked_by(principal("banned")) is None
    # a read that started after both: the store's state wins again
    assert revocations.replace([], revocations.version) == []
    assert len(revocations) == 0
    # a read older than the one held already changes nothing
    revocations.apply(Revocation("jti", "x", 2_000_000))
    newer = revocations.version
    assert revocations.replace([Revocation("jti", "x", 2_000_000)], newer) == []
    assert revocations.replace([], newer - 1) == [] and len(revocations) == 1


# -- two gateway processes with Redis -------------------------------------------------------------


@pytest.fixture
async def remote(token) -> AsyncIterator[Callable]:
    """`await remote(gateway, kind, sub, **claims)`: a client authenticated on that process."""
    made: list[Client] = []

    async def connect(gateway, kind="py-websocket", sub="u1", **claims) -> Client:
        client = make_client(kind, gateway.url)
        made.append(client)
        await client.connect({"token": token(sub, **claims)})
        await client.next_event("auth_success")
        return client

    yield connect
    for client in made:
        await client.close()


async def test_orders_given_to_one_instance_cut_sockets_on_another(gateways, remote, token):
    # no reload within the test: what B cuts and refuses, only the bus can have told it
    a, b = await gateways(REVOCATION_RELOAD="600"), await gateways(REVOCATION_RELOAD="600")
    by_user = await remote(b, "js-websocket", "u1")
    by_sid = await remote(b, "py-polling", "u2")
    bystander = await remote(b, "py-websocket", "u3")
    assert await order_at(a.url, "/disconnect", {"users": ["u1"]}) == (202, {"disconnected": 0})
    await cut_off(by_user)
    assert (await order_at(a.url, "/disconnect", {"sids": [by_sid.sio.get_sid()]}))[0] == 202
    await cut_off(by_sid)

    by_jti = await remote(b, "js-polling", "u4", jti="stolen")
    by_sub = await remote(b, "py-websocket", "u5")
    status, body = await order_at(a.url, "/revoke", {"jti": "stolen", "until": in_an_hour()})
    assert (status, body["disconnected"]) == (202, 0)
    await cut_off(by_jti)
    assert (await order_at(a.url, "/revoke", {"sub": "u5", "until": in_an_hour()}))[0] == 202
    await cut_off(by_sub)
    # B refuses them from then on, and serves the others
    for refused_token in (token("u4", jti="stolen"), token("u5")):
        client = make_client("py-websocket", b.url)
        with pytest.raises(Refused) as refused:
            await client.connect({"token": refused_token})
        assert refused.value.data["code"] == "revoked"
    await still_served(bystander)
    fine = await remote(b, "py-websocket", "u4", jti="new")
    await still_served(fine)
