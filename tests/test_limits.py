"""What one client may cost: events per socket, connections per address and per user, rooms
per socket; each refused `rate_limited`, counted, and the connection kept (but for a socket
that goes on flooding). And reservation lookups behind `join_room`, kept briefly."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import socketio

from realtime.limits import KeyedBuckets, address_key
from tests.clients import WAIT_S, Refused
from tests.raw import RawPolling, RawSocket

SERVICE = "limits-tests-service-token"

SLOT = {"startsAt": "2026-11-21T10:00:00.000Z", "durationMinutes": 60}


async def until_ok(call, within: float = WAIT_S):
    """Call again, bounded, until the answer is ok: a bucket refills with time, and there is
    no event to wait on for it."""

    async def again():
        while True:
            answer = await call()
            if answer["ok"]:
                return answer
            assert answer["error"]["code"] == "rate_limited", answer
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(again(), within)


def rate_limited_count(metrics_text: str, limit: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(f'realtime_rate_limited_total{{limit="{limit}"}}'):
            return float(line.split()[-1])
    return 0.0


async def metric(http, limit: str) -> float:
    async with http.get("/metrics") as response:
        return rate_limited_count(await response.text(), limit)


# -- events per socket -------------------------------------------------------------------------
@pytest.mark.env(RATE_LIMIT_EVENTS="5", RATE_LIMIT_DISCONNECT="1000")
async def test_past_its_rate_a_socket_is_answered_rate_limited_and_stays(
    connect, client_kind, http
):
    client = await connect(client_kind)
    # one after the other (a long-polling client may not send 30 packets in one request)
    answers = [await client.call("join_room", {"roomId": "availability-1"}) for _ in range(30)]
    refused = [a for a in answers if not a["ok"]]
    assert len(answers) - len(refused) >= 10  # the burst: twice the rate (and what refilled)
    assert {a["error"]["code"] for a in refused} == {"rate_limited"}
    # said as an `error` event too, naming the event
    error = await client.next_event("error")
    assert (error["code"], error["event"]) == ("rate_limited", "join_room")
    assert await metric(http, "events") == len(refused)
    # slowing down is enough: the socket is still there
    answer = await until_ok(lambda: client.call("leave_room", {"roomId": "availability-1"}))
    assert answer == {"ok": True, "roomId": "availability-1"}
    assert not client.disconnected.is_set()


@pytest.mark.env(RATE_LIMIT_EVENTS="1", RATE_LIMIT_DISCONNECT="5")
async def test_a_socket_that_keeps_flooding_is_disconnected(connect, client_kind):
    client = await connect(client_kind)
    for _ in range(40):  # a few at a time (a long-polling client sends at most 16 per request)
        if client.disconnected.is_set():
            break
        for _ in range(4):
            await client.emit("leave_room", {"roomId": "availability-1"})
        await error_or_gone(client)
    assert await client.wait_disconnected() is not None
    errors = [payload for name, payload in client.log if name == "error"]
    assert errors and {e["code"] for e in errors} == {"rate_limited"}


async def error_or_gone(client) -> None:
    waits = {
        asyncio.ensure_future(client.next_event("error")),
        asyncio.ensure_future(client.disconnected.wait()),
    }
    done, pending = await asyncio.wait(waits, timeout=WAIT_S, return_when="FIRST_COMPLETED")
    for wait in pending:
        wait.cancel()
    assert done, "neither an error nor a disconnect"


@pytest.mark.env(RATE_LIMIT_EVENTS="1", RATE_LIMIT_DISCONNECT="5")
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_flooding_socket_cannot_come_back_on_its_connection(base_url, token, transport):
    """Its connection ends with it: sending `40{token}` again on it (a new socket, a full
    burst) is no longer possible."""
    flood = '42["leave_room",{"roomId":"availability-1"}]'
    if transport == "websocket":
        raw = await RawSocket(base_url).open()
        try:
            assert (await raw.connect({"token": token("flood")})).startswith("40{")
            for _ in range(20):
                await raw.send(flood)
            await raw.next_frame(lambda frame: frame == "41")  # disconnected
            await raw.wait_closed()  # and its connection closed
        finally:
            await raw.close()
        return
    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40" + json.dumps({"token": token("flood")})) == 200
        assert await raw.post(*[flood] * 12) == 200
        await raw.poll_until(lambda packet: packet == "41")
        assert await raw.post("40" + json.dumps({"token": token("flood")})) == 400
        assert await raw.poll_until_closed() == 400
    finally:
        await raw.close()


@pytest.mark.env(RATE_LIMIT_EVENTS="0.1", RATE_LIMIT_DISCONNECT="1000", BROADCAST_TOKEN=SERVICE)
async def test_a_new_socket_on_an_old_connection_gets_no_fresh_allowance(base_url, token, http):
    """A socket disconnected by the server (here an operator's cut) whose client connects
    the namespace again on the same Engine.IO connection keeps what that connection used."""
    raw = await RawSocket(base_url).open()
    try:
        answer = json.loads((await raw.connect({"token": token("again")}))[2:])
        assert (await raw.call(1, "join_room", {"roomId": "availability-1"}))["ok"] is True
        spent = await raw.call(2, "join_room", {"roomId": "availability-1"})
        assert spent["error"]["code"] == "rate_limited"
        cut = await http.post(
            "/disconnect",
            json={"sids": [answer["sid"]]},
            headers={"Authorization": f"Bearer {SERVICE}"},
        )
        assert cut.status == 202
        await raw.next_frame(lambda frame: frame == "41")
        assert (await raw.connect({"token": token("again")})).startswith("40{")
        again = await raw.call(3, "join_room", {"roomId": "availability-1"})
        assert again["error"]["code"] == "rate_limited"
    finally:
        await raw.close()


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="0.1", BROADCAST_TOKEN=SERVICE)
async def test_a_new_socket_on_an_old_connection_counts_as_a_new_connection(base_url, token, http):
    raw = await RawSocket(base_url).open()  # its address's one connection for a while
    try:
        answer = json.loads((await raw.connect({"token": token("again")}))[2:])
        await http.post(
            "/disconnect",
            json={"sids": [answer["sid"]]},
            headers={"Authorization": f"Bearer {SERVICE}"},
        )
        await raw.next_frame(lambda frame: frame == "41")
        refused = await raw.connect({"token": token("again")})
        assert refused.startswith("44")
        assert json.loads(refused[2:])["data"]["code"] == "rate_limited"
    finally:
        await raw.close()


# -- connections per address -------------------------------------------------------------------
async def raw_connect(
    base_url: str, token: str, transport: str, headers=None
) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    refusal: list = []
    client.on("connect_error", lambda data: refusal.append(data))
    try:
        await client.connect(
            base_url,
            transports=[transport],
            auth={"token": token},
            headers=headers or {},
            wait_timeout=WAIT_S,
        )
    except socketio.exceptions.ConnectionError as exc:
        data = refusal[0] if refusal else {}
        raise Refused(
            str(exc), data.get("data", data) if isinstance(data, dict) else data
        ) from None
    return client


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="2")
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_new_connections_per_address_are_limited(base_url, token, http, transport):
    connected, refusals = [], []
    for _ in range(8):
        try:
            connected.append(await raw_connect(base_url, token("u1"), transport))
        except Refused as refused:
            refusals.append(refused)
    try:
        assert len(connected) >= 4  # the burst (and what refilled meanwhile)
        assert refusals
        assert {r.data["code"] for r in refusals} == {"rate_limited"}
        assert await metric(http, "connections") == len(refusals)
    finally:
        for client in connected:
            await client.disconnect()


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="2", TRUSTED_PROXIES="127.0.0.0/8")
async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit(base_url, token):
    connected = []
    try:
        for n in range(10):
            headers = {"X-Forwarded-For": f"203.0.113.{n}, 127.0.0.1"}
            connected.append(await raw_connect(base_url, token("u1"), "websocket", headers))
        # ...but one address is still one address
        with pytest.raises(Refused) as refused:
            for _ in range(6):
                connected.append(
                    await raw_connect(
                        base_url, token("u1"), "websocket", {"X-Forwarded-For": "203.0.113.1"}
                    )
                )
        assert refused.value.data["code"] == "rate_limited"
    finally:
        for client in connected:
            await client.disconnect()


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="2")
async def test_a_forwarded_address_from_an_untrusted_peer_is_not_believed(base_url, token):
    connected = []
    with pytest.raises(Refused) as refused:
        for n in range(10):
            headers = {"X-Forwarded-For": f"203.0.113.{n}"}
            connected.append(await raw_connect(base_url, token("u1"), "websocket", headers))
    assert refused.value.data["code"] == "rate_limited"
    for client in connected:
        await client.disconnect()


async def bare_opens(http, count: int, headers=None) -> list[int]:
    """Engine.IO handshakes (long-polling) that go no further: their statuses."""
    statuses = []
    for _ in range(count):
        async with http.get("/socket.io/?EIO=4&transport=polling", headers=headers) as answer:
            statuses.append(answer.status)
    return statuses


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="0.1")
async def test_bare_engineio_opens_count_against_the_address(http, clients, token, client_kind):
    """A connection is counted when its Engine.IO handshake comes, not only when it connects
    the namespace: opening transports that never authenticate spends the address's budget,
    and the next client is refused `rate_limited` with a reason it shows."""
    assert await bare_opens(http, 1) == [200]  # the burst (one at this rate), spent
    client = clients(client_kind)
    with pytest.raises(Refused) as refused:
        await client.connect({"token": token("u1")})
    assert refused.value.data["code"] == "rate_limited"
    assert await metric(http, "connections") == 1


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="0.1")
async def test_past_twice_its_rate_a_connection_is_turned_away_before_it_opens(
    http, gateway, base_url
):
    """A client that ignores its refusals holds nothing: past the refused ones' own burst,
    the handshake is answered 429 before any socket is made, over both transports."""
    assert await bare_opens(http, 2) == [200, 200]  # one admitted, one refused in the handshake
    sockets = len(gateway.engine.sio.eio.sockets)
    async with http.get("/socket.io/?EIO=4&transport=polling") as answer:
        assert answer.status == 429
        assert answer.headers["Retry-After"] == "1"
        assert (await answer.json())["error"]["code"] == "rate_limited"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/socket.io/?EIO=4&transport=websocket")
    assert refused.value.status == 429
    assert len(gateway.engine.sio.eio.sockets) == sockets
    assert await metric(http, "connections") == 3


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="0.1")
@pytest.mark.parametrize("query", ["&sid=", "&sid", "&sid=&sid="])
async def test_an_empty_sid_is_a_new_connection_and_counted(http, query):
    """python-engineio reads an empty `sid` as none (a new connection): so does the limit."""
    assert await bare_opens(http, 2) == [200, 200]  # one admitted, one refused in the handshake
    async with http.get("/socket.io/?EIO=4&transport=polling" + query) as answer:
        assert answer.status == 429
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/socket.io/?EIO=4&transport=websocket" + query)
    assert refused.value.status == 429


@pytest.mark.env(RATE_LIMIT_CONNECTIONS="0.1", TRUSTED_PROXIES="127.0.0.0/8")
async def test_an_ipv6_client_is_limited_by_its_64(http):
    """One host is given a whole /64: a new address per connection is the same client."""
    for n in (1, 2):  # one admitted, one refused in the handshake
        assert await bare_opens(http, 1, {"X-Forwarded-For": f"2001:db8:1:2::{n}"}) == [200]
    assert await bare_opens(http, 1, {"X-Forwarded-For": "2001:db8:1:2:ffff::1"}) == [429]
    assert await bare_opens(http, 1, {"X-Forwarded-For": "2001:db8:1:3::1"}) == [200]
    assert await bare_opens(http, 1, {"X-Forwarded-For": "[2001:db8:1:2::99]:443"}) == [429]


def test_a_flood_of_new_addresses_does_not_reset_a_busy_one():
    now = [0.0]
    buckets = KeyedBuckets(rate=1, burst=2, clock=lambda: now[0], most=3)
    assert buckets.take("busy") and buckets.take("busy")
    for n in range(100):  # each new one is kept in place of the least recently used
        assert buckets.take(f"new-{n}")
        assert not buckets.take("busy")  # still spent: it was used last
        now[0] += 0.01
    assert len(buckets) == 3


def test_address_keys():
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("not an address") == "not an address"


# -- connections per user ----------------------------------------------------------------------
@pytest.mark.env(MAX_CONNECTIONS_PER_USER="2")
async def test_a_user_may_hold_so_many_connections(connect, clients, token, http):
    first = await connect("py-websocket", sub="c1")
    await connect("js-polling", sub="c1")
    third = clients("py-websocket")
    with pytest.raises(Refused) as refused:
        await third.connect({"token": token("c1")})
    assert refused.value.data["code"] == "rate_limited"
    # through `authenticate` as well
    late = clients("js-websocket")
    await late.connect({})
    answer = await late.call("authenticate", {"token": token("c1")})
    assert answer["error"]["code"] == "rate_limited"
    # another user is not affected, and a connection closed makes room
    await connect("py-websocket", sub="c2")
    await first.disconnect()
    await first.wait_disconnected()
    answer = await until_ok(lambda: late.call("authenticate", {"token": token("c1")}))
    assert answer["userId"] == "c1"
    assert await metric(http, "user_connections") >= 2
    async with http.get("/metrics") as response:  # counted once: not as a failed authentication
        assert 'realtime_auth_failures_total{code="rate_limited"}' not in await response.text()


# -- rooms per socket --------------------------------------------------------------------------
@pytest.mark.env(MAX_ROOMS_PER_SOCKET="3")
async def test_a_socket_may_be_in_so_many_rooms(connect, client_kind):
    client = await connect(client_kind, sub="c1")  # in user-c1
    for shop in ("1", "2"):
        assert (await client.call("join_room", {"roomId": f"availability-{shop}"}))["ok"]
    refused = await client.call("join_room", {"roomId": "availability-3"})
    assert refused["error"]["code"] == "rate_limited"
    # joining a room it is in is no new room; leaving one makes room
    assert (await client.call("join_room", {"roomId": "availability-2"}))["ok"]
    assert (await client.call("leave_room", {"roomId": "availability-1"}))["ok"]
    assert (await client.call("join_room", {"roomId": "availability-3"}))["ok"]


# -- reservation lookups -----------------------------------------------------------------------
@pytest.mark.env(RESERVATION_CACHE="60", RATE_LIMIT_EVENTS="1000")
async def test_a_join_storm_on_one_reservation_reads_the_store_once(gateway, connect):
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    booking = await gateway.store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    await admin.next_event("reservation_update")  # its creation: emitted before the storm
    reads = []
    read = gateway.store.get_document

    async def counted(collection, document_id):
        reads.append(document_id)
        return await read(collection, document_id)

    gateway.store.get_document = counted
    staff = [await connect(sub=f"st{n}", role="staff", shops=["s1"]) for n in range(5)]
    answers = await asyncio.gather(
        *(s.call("join_room", {"roomId": f"reservation-{booking}"}) for s in staff for _ in (1, 2))
    )
    assert all(a["ok"] for a in answers)
    assert reads == [booking]


@pytest.mark.env(RESERVATION_CACHE="60")
async def test_a_booking_change_forgets_what_was_kept_of_it(gateway, connect):
    booking = await gateway.store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    customer = await connect(sub="c1")
    assert (await customer.call("join_room", {"roomId": f"reservation-{booking}"}))["ok"]
    assert (await customer.call("leave_room", {"roomId": f"reservation-{booking}"}))["ok"]
    # the booking moves to another customer: the old one may not join any more, at once
    await gateway.store.update_document("bookings", booking, {"customerId": "c2"})
    while (await admin.next_event("reservation_update"))["userId"] != "c2":
        pass  # the booking's creation, first
    refused = await customer.call("join_room", {"roomId": f"reservation-{booking}"})
    assert refused["error"]["code"] == "forbidden"
    newcomer = await connect(sub="c2")
    assert (await newcomer.call("join_room", {"roomId": f"reservation-{booking}"}))["ok"]


@pytest.mark.env(RESERVATION_CACHE="60")
async def test_a_booking_changed_while_it_is_read_is_not_kept_as_it_was(gateway, connect):
    """A lookup that read the booking just before it changed is not kept: the join's own
    recheck as the socket enters (after the change's recheck of the room has run) reads
    the booking again, and refuses."""
    booking = await gateway.store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    read, reads = gateway.store.get_document, []
    first_read_done, release = asyncio.Event(), asyncio.Event()

    async def held_after_the_first_read(collection, document_id):
        document = await read(collection, document_id)
        reads.append(document["customerId"])
        if len(reads) == 1:
            first_read_done.set()
            await release.wait()
        return document

    gateway.store.get_document = held_after_the_first_read
    customer = await connect(sub="c1")
    joining = asyncio.create_task(customer.call("join_room", {"roomId": f"reservation-{booking}"}))
    await asyncio.wait_for(first_read_done.wait(), WAIT_S)
    await gateway.store.update_document("bookings", booking, {"customerId": "c2"})
    while (await admin.next_event("reservation_update"))["userId"] != "c2":
        pass  # the booking's creation, first
    release.set()
    assert (await joining)["error"]["code"] == "forbidden"
    assert reads == ["c1", "c2"]
    newcomer = await connect(sub="c2")
    assert (await newcomer.call("join_room", {"roomId": f"reservation-{booking}"}))["ok"]
    assert reads == ["c1", "c2"]  # the recheck's read was kept
