"""The Socket.IO contract, end to end: a real server, real clients of every kind."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.clients import Refused
from tests.raw import RawPolling, RawSocket


# -- authentication ----------------------------------------------------------------------------
async def test_handshake_token_authenticates_and_joins_the_user_room(clients, token, client_kind):
    client = clients(client_kind)
    await client.connect({"token": token("alice", "customer")})
    success = await client.next_event("auth_success")
    assert success["userId"] == "alice"
    assert success["role"] == "customer"
    assert success["rooms"] == ["user-alice"]
    assert success["expiresAt"].endswith("Z") and len(success["expiresAt"]) == 24
    # in the room already: joining it again is answered, an admin room stays closed
    assert (await client.call("join_room", {"roomId": "user-alice"}))["ok"] is True
    refused = await client.call("join_room", {"roomId": "admin-general"})
    assert refused["error"]["code"] == "forbidden"


async def test_admin_is_also_put_in_admin_general(clients, token, client_kind):
    client = clients(client_kind)
    await client.connect({"token": token("root", "admin")})
    assert (await client.next_event("auth_success"))["rooms"] == ["admin-general", "user-root"]


async def test_authenticate_event_after_connecting(clients, token, client_kind):
    client = clients(client_kind)
    await client.connect()
    answer = await client.call("authenticate", {"token": token("bob", "staff", ["s1"])})
    assert answer["ok"] is True
    assert answer["userId"] == "bob" and answer["role"] == "staff"
    assert answer["rooms"] == ["shop-s1", "user-bob"]  # a staff member's shop's room too
    event = await client.next_event("auth_success")
    assert event == {k: v for k, v in answer.items() if k != "ok"}


async def test_a_user_id_sent_by_the_client_is_ignored(clients, token, client_kind):
    client = clients(client_kind)
    await client.connect()
    answer = await client.call("authenticate", {"token": token("bob"), "userId": "mallory"})
    assert answer["userId"] == "bob"
    refused = await client.call("join_room", {"roomId": "user-mallory", "userId": "mallory"})
    assert refused["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "case", ["other_key", "alg_none", "no_exp", "expired", "garbage", "bad_role"]
)
async def test_bad_handshake_token_is_refused_with_a_code(clients, raw_token, case, client_kind):
    now = int(time.time())
    tokens = {
        "other_key": raw_token(
            {"sub": "u", "role": "customer", "exp": now + 60},
            key="another-secret-0123456789-0123456789",
        ),
        "alg_none": raw_token(
            {"sub": "u", "role": "customer", "exp": now + 60}, key=None, algorithm="none"
        ),
        "no_exp": raw_token({"sub": "u", "role": "customer"}),
        "expired": raw_token({"sub": "u", "role": "customer", "exp": now - 10}),
        "garbage": "not.a.token",
        "bad_role": raw_token({"sub": "u", "role": "superuser", "exp": now + 60}),
    }
    client = clients(client_kind)
    with pytest.raises(Refused) as refused:
        await client.connect({"token": tokens[case]})
    expected = "token_expired" if case == "expired" else "invalid_token"
    assert refused.value.data["code"] == expected
    assert refused.value.data["message"]
    assert refused.value.message == refused.value.data["message"]


async def test_bad_authenticate_event_answers_auth_error_and_keeps_the_socket(
    clients, token, raw_token, client_kind
):
    client = clients(client_kind)
    await client.connect()
    answer = await client.call("authenticate", {"token": "x.y.z"})
    assert answer == {
        "ok": False,
        "error": {"code": "invalid_token", "message": answer["error"]["message"]},
    }
    assert (await client.next_event("auth_error"))["code"] == "invalid_token"
    missing = await client.call("authenticate", {})
    assert missing["error"]["code"] == "missing_token"
    assert (await client.next_event("auth_error"))["code"] == "missing_token"
    wrong_type = await client.call("authenticate", {"token": 42})
    assert wrong_type["error"]["code"] == "invalid_payload"
    assert wrong_type["error"]["details"] == {"token": ["Not a valid string."]}
    # the socket still works
    assert (await client.call("authenticate", {"token": token("u1")}))["ok"] is True


@pytest.mark.env(AUTH_TIMEOUT="0.3")
async def test_unauthenticated_socket_is_disconnected_after_the_auth_timeout(clients, client_kind):
    client = clients(client_kind)
    await client.connect()
    error = await client.next_event("auth_error")
    assert error["code"] == "auth_timeout"
    await client.wait_disconnected()


@pytest.mark.env(AUTH_EXPIRING_LEAD="1")
async def test_expiring_token_is_warned_then_refreshed_then_expires(clients, token, client_kind):
    client = clients(client_kind)
    await client.connect({"token": token("u1", ttl=2)})
    await client.next_event("auth_success")
    expiring = await client.next_event("auth_expiring")
    assert 0 <= expiring["secondsLeft"] <= 1
    refreshed = await client.call("authenticate", {"token": token("u1", ttl=3)})
    assert refreshed["ok"] is True and refreshed["expiresAt"] > expiring["expiresAt"]
    # the refreshed token is warned about and expires in its turn
    assert (await client.next_event("auth_expiring"))["expiresAt"] == refreshed["expiresAt"]
    assert (await client.next_event("auth_error"))["code"] == "token_expired"
    await client.wait_disconnected()


async def test_a_token_for_another_user_is_refused_and_the_identity_stays(
    connect, token, client_kind
):
    client = await connect(client_kind, sub="alice")
    answer = await client.call("authenticate", {"token": token("bob")})
    assert answer["error"]["code"] == "identity_changed"
    assert (await client.next_event("auth_error"))["code"] == "identity_changed"
    assert (await client.call("join_room", {"roomId": "user-alice"}))["ok"] is True
    assert (await client.call("join_room", {"roomId": "user-bob"}))["error"]["code"] == "forbidden"


async def test_refresh_with_fewer_rights_revokes_rooms(connect, token, client_kind):
    client = await connect(client_kind, sub="st", role="staff", shops=["s1", "s2"])
    assert (await client.call("join_room", {"roomId": "shop-s1"}))["ok"]
    assert (await client.call("join_room", {"roomId": "shop-s2"}))["ok"]
    answer = await client.call("authenticate", {"token": token("st", "staff", ["s2"])})
    assert answer["rooms"] == ["shop-s2", "user-st"]
    assert (await client.next_event("rooms_revoked")) == {"rooms": ["shop-s1"]}


# -- rooms -------------------------------------------------------------------------------------
async def test_join_and_leave_answer_through_the_ack(connect, client_kind):
    client = await connect(client_kind, sub="st", role="staff", shops=["s1"])
    joined = await client.call("join_room", {"roomId": "shop-s1"})
    assert joined == {"ok": True, "roomId": "shop-s1", "replayed": 0, "lastEventId": None}
    left = await client.call("leave_room", {"roomId": "shop-s1"})
    assert left == {"ok": True, "roomId": "shop-s1"}


async def test_refused_join_answers_and_sends_an_error_event(connect, client_kind):
    client = await connect(client_kind, sub="c1")
    answer = await client.call("join_room", {"roomId": "admin-payments"})
    assert answer["ok"] is False
    assert answer["error"]["code"] == "forbidden"
    error = await client.next_event("error")
    assert error == {**answer["error"], "event": "join_room"}


async def test_join_before_authenticating_is_unauthenticated(clients, client_kind):
    client = clients(client_kind)
    await client.connect()
    answer = await client.call("join_room", {"roomId": "availability-s1"})
    assert answer["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(
    "payload, code",
    [
        (None, "invalid_payload"),
        ("shop-s1", "invalid_payload"),
        ({}, "invalid_payload"),
        ({"roomId": 5}, "invalid_payload"),
        ({"roomId": "lobby"}, "unknown_room"),
        ({"roomId": "shop-"}, "unknown_room"),
        ({"roomId": "shop-a b"}, "unknown_room"),
        ({"roomId": "x" * 500}, "invalid_payload"),
    ],
)
async def test_malformed_join_payloads_get_coded_errors(connect, payload, code):
    client = await connect("py-websocket")
    answer = await client.call("join_room", payload)
    assert answer["ok"] is False and answer["error"]["code"] == code
    assert (await client.next_event("error"))["code"] == code
    assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"] is True


async def test_an_unknown_event_gets_an_error_event_and_the_socket_stays(connect, client_kind):
    client = await connect(client_kind)
    await client.emit("joinRoom", {"roomId": "availability-s1"})
    error = await client.next_event("error")
    assert error["code"] == "invalid_payload" and error["event"] == "joinRoom"
    assert "unknown event" in error["message"]
    assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"] is True


@pytest.mark.env(MAX_PAYLOAD_BYTES="2048")
async def test_a_message_over_the_size_limit_closes_only_that_transport(connect, client_kind):
    big = await connect(client_kind, sub="u1")
    small = await connect("py-websocket", sub="u2")
    await big.emit("join_room", {"roomId": "availability-s1", "padding": "x" * 4096})
    await big.wait_disconnected()
    assert (await small.call("join_room", {"roomId": "availability-s1"}))["ok"] is True


async def test_a_store_outage_is_answered_unavailable_and_the_socket_stays(
    gateway, connect, client_kind
):
    client = await connect(client_kind, sub="c1")
    await gateway.store.close()  # the store goes away under the running gateway
    answer = await client.call("join_room", {"roomId": "reservation-b1"})
    assert answer["ok"] is False and answer["error"]["code"] == "unavailable"
    assert (await client.next_event("error"))["code"] == "unavailable"
    # what needs no store still works on the same socket
    assert (await client.call("leave_room", {"roomId": "user-c1"}))["ok"] is True


# -- what a hostile client tries -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["disconnect", "connect", "connect_error"])
async def test_a_client_event_with_a_reserved_name_is_refused(base_url, token, name):
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect({"token": token("c1")})).startswith("40{")
        await raw.next_event("auth_success")
        answer = await raw.call(1, name, {"token": token("c2")})
        assert answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
        assert name in answer["error"]["message"]
        assert (await raw.next_event("error"))["code"] == "invalid_payload"
        # the socket is still what it was: c1, in its room, not c2
        assert (await raw.call(2, "join_room", {"roomId": "user-c1"}))["ok"] is True
        assert (await raw.call(3, "join_room", {"roomId": "user-c2"}))["ok"] is False
    finally:
        await raw.close()


@pytest.mark.env(AUTH_EXPIRING_LEAD="0")
@pytest.mark.parametrize("kind", ["py-websocket", "py-polling"])
async def test_a_disconnect_event_does_not_spare_a_socket_its_expiry(clients, token, kind):
    client = clients(kind)
    await client.connect({"token": token("c1", ttl=2)})
    await client.next_event("auth_success")
    answer = await client.call("disconnect", {})
    assert answer["error"]["code"] == "invalid_payload"
    assert (await client.next_event("auth_error"))["code"] == "token_expired"
    await client.wait_disconnected()


@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_a_disconnect_event_does_not_spare_an_unauthenticated_socket_its_timeout(
    base_url,
):
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect()).startswith("40{")
        await raw.send('42["disconnect"]')
        assert (await raw.next_event("error"))["code"] == "invalid_payload"
        assert (await raw.next_event("auth_error"))["code"] == "auth_timeout"
        await raw.wait_closed()
    finally:
        await raw.close()


@pytest.mark.env(AUTH_EXPIRING_LEAD="0")
@pytest.mark.parametrize("kind", ["py-websocket", "py-polling"])
async def test_a_connect_event_cannot_swap_the_identity(connect, token, kind):
    # an admin whose token expires presents a customer's token through a `connect` event
    admin = await connect(kind, sub="a1", role="admin", ttl=2)
    assert (await admin.call("join_room", {"roomId": "admin-payments"}))["ok"]
    answer = await admin.call("connect", {"token": token("c9", "customer", ttl=3600)})
    assert answer["error"]["code"] == "invalid_payload"
    assert (await admin.next_event("auth_error"))["code"] == "token_expired"  # the admin's exp
    await admin.wait_disconnected()


@pytest.mark.parametrize("case", ["19 digits", "17 digits", "arabic digits", "trailing newline"])
async def test_a_last_event_id_out_of_bounds_is_invalid_payload(
    gateway, clients, connect, token, client_kind, case
):
    last_event_id = {
        "19 digits": "9999999999999999999",
        "17 digits": "1" * 17,
        "arabic digits": "\u0663",
        "trailing newline": "0000000000000001\n",
    }[case]
    client = await connect(client_kind, sub="c1")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": last_event_id})
    assert answer["error"]["code"] == "invalid_payload"
    refused = clients(client_kind)
    with pytest.raises(Refused) as error:
        await refused.connect({"token": token("c2"), "lastEventId": last_event_id})
    assert error.value.data["code"] == "invalid_payload"
    assert gateway.sessions.counts()["connections"] == 1  # nothing left of the refused one


@pytest.mark.parametrize("exp", [1e20, 1e300, 10**400])
async def test_an_absurd_exp_is_an_invalid_token_and_leaves_no_session(
    gateway, clients, raw_token, client_kind, exp
):
    client = clients(client_kind)
    with pytest.raises(Refused) as error:
        await client.connect({"token": raw_token({"sub": "u1", "role": "customer", "exp": exp})})
    assert error.value.data["code"] == "invalid_token"
    assert gateway.sessions.counts()["connections"] == 0
    anonymous = clients(client_kind)
    await anonymous.connect()
    answer = await anonymous.call(
        "authenticate", {"token": raw_token({"sub": "u1", "role": "customer", "exp": exp})}
    )
    assert answer["error"]["code"] == "invalid_token"


async def test_a_failure_while_announcing_closes_the_socket(
    gateway, clients, connect, token, monkeypatch, client_kind
):
    first = await connect(client_kind, sub="c1")
    cursor = (
        await gateway.broadcaster.broadcast(
            {"event": "notification", "data": {}, "users": ["c1"]}, None
        )
    )["eventId"]
    await first.next_event("notification")

    async def broken(*args, **kwargs):
        raise RuntimeError("the replay failed")

    monkeypatch.setattr(gateway.store, "room_events", broken)
    client = clients(client_kind)
    await client.connect({"token": token("c1"), "lastEventId": cursor})
    # never authenticated half-way (no auth_success, no expiry armed): closed instead
    await client.wait_disconnected()
    assert "auth_success" not in client.names()
    assert gateway.sessions.counts()["connections"] == 1


@pytest.mark.env(AUTH_TIMEOUT="0.5")
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_transport_that_never_connects_the_namespace_is_closed(
    base_url, gateway, transport
):
    async with aiohttp.ClientSession() as http:
        if transport == "websocket":
            raw = await RawSocket(base_url).open()  # answers pings, never sends "40"
            await raw.wait_closed()
            await raw.close()
        else:
            url = f"{base_url}/socket.io/?EIO=4&transport=polling"
            opening = await (await http.get(url)).text()
            sid = json.loads(opening[1:])["sid"]

            async def polled_until_gone() -> int:
                while True:
                    answer = await http.get(f"{url}&sid={sid}")
                    if answer.status != 200:
                        return answer.status

            assert await asyncio.wait_for(polled_until_gone(), 10) == 400
    assert gateway.sessions.counts()["transports"] == 0


@pytest.mark.env(AUTH_TIMEOUT="1")
async def test_connecting_the_namespace_again_does_not_extend_the_auth_deadline(base_url):
    raw = await RawSocket(base_url).open()

    async def connect_and_disconnect_for_ever() -> None:
        while True:  # each connection of the namespace would once have had a deadline of its own
            assert (await raw.connect()).startswith("40{")
            await raw.send("41")

    cycling = asyncio.create_task(connect_and_disconnect_for_ever())
    try:
        await raw.wait_closed(timeout=5)  # at the deadline of the transport, ~1 s after it opened
    finally:
        cycling.cancel()
        await asyncio.gather(cycling, return_exceptions=True)
        await raw.close()


async def test_authenticating_cancels_the_transports_auth_deadline(
    clients, gateway, token, client_kind
):
    # a timer per idle connection otherwise, held for its life; armed again when the
    # authenticated socket goes and its transport stays
    client = clients(client_kind)
    await client.connect()
    assert len(gateway.sessions._auth_deadlines) == 1
    answer = await client.call("authenticate", {"token": token("bob")})
    assert answer["ok"] is True
    assert len(gateway.sessions._auth_deadlines) == 0


@pytest.mark.env(AUTH_TIMEOUT="1")
async def test_a_transport_whose_authenticated_socket_leaves_has_a_deadline_again(
    base_url, gateway, token
):
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect({"token": token("c1")})).startswith("40{")
        await raw.next_event("auth_success")
        assert len(gateway.sessions._auth_deadlines) == 0
        await raw.send("41")  # the socket leaves, the transport stays: closed at its deadline
        await raw.wait_closed(timeout=5)
    finally:
        await raw.close()


async def test_a_room_name_with_a_trailing_newline_is_unknown(connect, client_kind):
    client = await connect(client_kind, sub="c1")
    for room in ("user-c1\n", "availability-s1\n"):
        answer = await client.call("join_room", {"roomId": room})
        assert answer["error"]["code"] == "unknown_room"


@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_a_refresh_racing_a_disconnect_leaves_the_transport_its_deadline(
    base_url, gateway, token
):
    # the refresh asks the store about the socket's reservation room while the disconnect is
    # handled (two polling POSTs in flight at once)
    await gateway.store.insert_document(
        "bookings", {"_id": "r1", "customerId": "c1", "shopId": "s1", "status": "pending"}
    )
    for _ in range(5):
        client = await RawPolling(base_url).open()
        try:
            await client.post("40" + json.dumps({"token": token("c1")}))
            await client.poll_until(lambda packet: "auth_success" in packet)
            await client.post('421["join_room",{"roomId":"reservation-r1"}]')
            await client.poll_until(lambda packet: packet.startswith("431"))
            refresh = '422["authenticate",' + json.dumps({"token": token("c1")}) + "]"
            await asyncio.gather(client.post(refresh), client.post("41"))
            await client.post("40")  # then a socket that never authenticates, same transport
            assert await client.poll_until_closed() == 400
        finally:
            await client.close()


@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_a_handshake_racing_a_disconnect_leaves_no_room_member_behind(
    base_url, gateway, token
):
    # something to replay, so that the handshake's replay is under way when the socket goes
    await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {}, "users": ["c1"]}, None
    )
    handshake = "40" + json.dumps({"token": token("c1"), "lastEventId": "0"})
    for _ in range(10):
        client = await RawPolling(base_url).open()
        try:
            await asyncio.gather(client.post(handshake), client.post("41"))
            assert await client.poll_until_closed() == 400
        finally:
            await client.close()
    assert gateway.sessions.counts()["connections"] == 0
    assert gateway.engine.room_figures(1) == (0, 0, {})
