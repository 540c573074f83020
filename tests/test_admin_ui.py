"""The Socket.IO Admin UI: namespace `/admin`, behind ADMIN_UI_USERNAME/ADMIN_UI_PASSWORD, read
only by default; talked to here with the official socket.io-client, as the UI itself does."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from tests.clients import Refused, make_client
from tests.raw import RawPolling, RawSocket
from tests.test_transport import eventually

SERVICE_TOKEN = "admin-ui-tests-service-token"
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
ADMIN = {"username": "ops", "password": "correct horse battery"}
WITH_ADMIN_UI = pytest.mark.env(
    ADMIN_UI_USERNAME=ADMIN["username"], ADMIN_UI_PASSWORD=ADMIN["password"]
)


@pytest.fixture
async def admin(base_url, settings):
    """admin(auth, transport) -> a socket.io-client connected to namespace /admin."""
    made = []

    async def connect(auth=ADMIN, transport: str = "websocket"):
        client = make_client(f"js-{transport}", base_url + "/admin", settings.socketio_path)
        made.append(client)
        await client.connect(auth)
        return client

    yield connect
    for client in made:
        await client.close()


@WITH_ADMIN_UI
@pytest.mark.parametrize(
    "auth",
    [
        {"username": "ops", "password": "wrong password here"},
        {"username": "someone", "password": ADMIN["password"]},
        {"username": "ops"},
        {"username": "ops", "password": 12},
        {},
    ],
    ids=["wrong-password", "wrong-user", "no-password", "number", "nothing"],
)
async def test_the_admin_namespace_refuses_wrong_credentials(admin, auth):
    with pytest.raises(Refused) as refused:
        await admin(auth)
    assert "authentication failed" in refused.value.message


@WITH_ADMIN_UI
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_with_the_right_credentials_it_reports_the_gateways_sockets(
    admin, connect, http, transport
):
    customer = await connect("py-websocket", sub="c1")
    ui = await admin(transport=transport)
    sockets = await ui.next_event("all_sockets")
    ours = [s for s in sockets if s["nsp"] == "/"]
    assert len(ours) == 1
    assert "user-c1" in ours[0]["rooms"]
    # a socket that connects later is reported as it connects
    await connect("js-polling", sub="c2")
    while True:
        reported, _at = await ui.next_event("socket_connected")
        if reported["nsp"] == "/":
            break
    assert reported["transport"] == "polling"
    # what the gateway delivers is reported too
    status = await post_notification(http, users=["c1"])
    assert status == 202
    while True:
        namespace, sid, (event, payload), _at = await ui.next_event("event_sent")
        if event == "notification":
            break
    assert namespace == "/" and sid == ours[0]["id"]
    assert payload["title"] == "hello"
    await customer.next_event("notification")
    # and what sockets send, still answered as always
    answer = await customer.call("join_room", {"roomId": "availability-1"})
    assert answer["ok"] is True
    while True:
        namespace, sid, (event, *args), _at = await ui.next_event("event_received")
        if event == "join_room":
            break
    assert sid == ours[0]["id"] and args == [{"roomId": "availability-1"}]


@WITH_ADMIN_UI
async def test_a_refused_socket_is_reported_gone_and_forgotten(admin, clients, gateway):
    ui = await admin()
    await ui.next_event("all_sockets")
    stranger = clients("js-websocket")
    with pytest.raises(Refused):
        await stranger.connect({"token": "not-a-token"})
    while True:
        reported, _at = await ui.next_event("socket_connected")
        if reported["nsp"] == "/":
            break
    while True:
        namespace, sid, reason, _at = await ui.next_event("socket_disconnected")
        if sid == reported["id"]:
            break
    assert (namespace, reason) == ("/", "refused")
    # the instrumentation keeps each socket's connection time: not the refused one's
    assert reported["id"] not in gateway.engine.sio.manager._timestamps


@WITH_ADMIN_UI
async def test_no_token_reaches_the_admin_ui(admin, base_url, token, gateway):
    """Whoever holds the Admin UI's password must not learn users' tokens, wherever a client
    put one: the handshake's query (any key) and headers (the User-Agent too), the events it
    sends (any field, a room name, the event's name), and what the gateway answers it (an
    `error` quotes the event it refuses)."""
    ui = await admin()
    await ui.next_event("all_sockets")
    secret = token("c1")
    raw = RawSocket(
        base_url,
        query=f"token={secret}&jwt={secret}&t={secret}&access_token={secret}"
        f"&transport={secret}",  # a second value of a key the UI is shown
        headers={"User-Agent": secret, "Authorization": f"Bearer {secret}", "X-Jwt": secret},
    )
    await raw.open()
    try:
        assert (await raw.connect({"token": secret})).startswith("40{")
        await raw.next_event("auth_success")
        assert (await raw.call(1, "authenticate", {"token": secret}))["ok"] is True
        joined = await raw.call(2, "join_room", {"roomId": "availability-1", "jwt": secret})
        assert joined["ok"] is True
        for ack_id, event, payload in [
            (3, "join_room", {"roomId": secret}),
            (4, secret, {"token": secret}),
            (5, "nope", secret),
            (6, "leave_room", {"roomId": secret, "token": secret}),
            (7, "leave_room", {"roomId": "availability-1"}),
        ]:
            await raw.call(ack_id, event, payload)
        while True:
            reported, _at = await ui.next_event("socket_connected")
            if reported["nsp"] == "/":
                break
        received = []
        while len(received) < 7:
            _namespace, _sid, event, _at = await ui.next_event("event_received")
            received.append(event)
        assert received == [
            ["authenticate", {}],
            ["join_room", {"roomId": "availability-1"}],
            ["join_room", {"roomId": "[redacted]"}],
            ["[unknown event]"],
            ["[unknown event]"],
            ["leave_room", {"roomId": "[redacted]"}],
            ["leave_room", {"roomId": "availability-1"}],
        ]
        assert reported["handshake"]["query"] == {"EIO": "4"}  # one value, and a known one
        # its user, once it has authenticated: an id and a role, nothing of the token
        assert reported["data"] == {"userId": None, "role": None}
        updated = await ui.next_event("socket_updated")
        assert updated == {
            "id": reported["id"],
            "nsp": "/",
            "data": {"userId": "c1", "role": "customer"},
        }
        assert set(reported["handshake"]["headers"]) <= {"origin"}
        shown = json.dumps(ui.log)
        assert secret not in shown
        assert secret.split(".")[1] not in shown  # nor its claims
        [session] = gateway.sessions._sessions.values()
        assert session.connection not in shown
    finally:
        await raw.close()


@WITH_ADMIN_UI
@pytest.mark.parametrize("kind", ["js-polling", "py-polling", "js-upgrade", "js-websocket"])
async def test_nothing_the_ui_shows_opens_a_users_session(
    admin, connect, gateway, http, base_url, kind
):
    """A long-polling client's Engine.IO id is its whole session credential: a viewer who
    knew it could poll its events, post as it, or upgrade its session to a WebSocket of
    their own. The UI never shows it, and nothing it shows is one."""
    victim = await connect(kind, sub="victim")
    assert (await victim.call("join_room", {"roomId": "availability-v"}))["ok"] is True
    ui = await admin()
    sockets = await ui.next_event("all_sockets")
    [shown] = [s for s in sockets if s["nsp"] == "/"]
    await post_notification(http, users=["victim"])
    await victim.next_event("notification")
    while True:
        _namespace, sid, (event, _payload), _at = await ui.next_event("event_sent")
        if event == "notification":
            break
    [session] = gateway.sessions._sessions.values()
    assert session.connection not in json.dumps(ui.log)
    for candidate in {shown["id"], shown["clientId"], sid, *shown["rooms"]}:
        poll = await http.get(f"/socket.io/?EIO=4&transport=polling&sid={candidate}")
        assert poll.status == 400, candidate
        post = await http.post(
            f"/socket.io/?EIO=4&transport=polling&sid={candidate}", data='42["leave_room"]'
        )
        assert post.status == 400, candidate
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"/socket.io/?EIO=4&transport=websocket&sid={candidate}")
        assert refused.value.status == 400, candidate
    # the victim's session is untouched: what is addressed to it still reaches it
    assert await post_notification(http, users=["victim"]) == 202
    await victim.next_event("notification")


@pytest.fixture
def stats_every_tenth(gateway):
    """The Admin UI's `server_stats` every 0.1 s (2 s in production): set before the first
    connection starts them."""
    gateway.engine.admin.stats_interval_s = 0.1


@WITH_ADMIN_UI
async def test_the_stats_list_the_gateways_namespace_and_its_sockets(
    stats_every_tenth, admin, connect
):
    """python-socketio lists the namespaces of decorated handlers, once: the gateway's `/` (a
    namespace class) was missing, and the UI's dashboard showed `/admin` alone."""
    await connect("py-websocket", sub="c1")
    await connect("js-polling", sub="c2")
    ui = await admin()
    stats = await ui.next_event("server_stats")
    assert set(stats) == {  # python-socketio's fields (tests/test_engine_internals.py)
        "serverId",
        "hostname",
        "pid",
        "uptime",
        "clientsCount",
        "pollingClientsCount",
        "aggregatedEvents",
        "namespaces",
    }
    assert stats["namespaces"] == [
        {"name": "/", "socketsCount": 2},
        {"name": "/admin", "socketsCount": 1},
    ]
    assert stats["clientsCount"] == 3 and stats["pollingClientsCount"] == 1
    third = await connect("py-polling", sub="c3")
    await third.disconnect()
    await connect("py-websocket", sub="c4")
    while (await ui.next_event("server_stats"))["namespaces"][0]["socketsCount"] != 3:
        pass  # counted anew at each report (bounded: next_event times out)


@WITH_ADMIN_UI
async def test_a_sockets_data_is_its_user_kept_up_to_date(admin, clients, connect, token):
    """Each gateway socket's `data` is its user's id and role (the keys are always there: the
    UI redraws only the keys it had); it follows a socket that authenticates after it was
    listed, and a refresh that changes its role."""
    await connect("py-websocket", sub="c1")
    ui = await admin()
    sockets = await ui.next_event("all_sockets")
    [listed] = [s for s in sockets if s["nsp"] == "/"]
    assert listed["data"] == {"userId": "c1", "role": "customer"}
    [viewer] = [s for s in sockets if s["nsp"] == "/admin"]
    assert viewer["data"] == {}
    # connected without a token: listed as nobody, then its user once it authenticates
    later = clients("js-websocket")
    await later.connect({})
    while True:
        reported, _at = await ui.next_event("socket_connected")
        if reported["nsp"] == "/":
            break
    assert reported["data"] == {"userId": None, "role": None}
    # (an update sent for nothing would be the next one taken here)
    answer = await later.call("authenticate", {"token": token("s1", role="staff", shops=["a"])})
    assert answer["ok"] is True
    updated = await ui.next_event("socket_updated")
    assert updated == {"id": reported["id"], "nsp": "/", "data": {"userId": "s1", "role": "staff"}}
    # a refresh as the same user with another role
    answer = await later.call("authenticate", {"token": token("s1", role="admin")})
    assert answer["ok"] is True
    updated = await ui.next_event("socket_updated")
    assert updated["data"] == {"userId": "s1", "role": "admin"}
    # a refresh that changes nothing shown is not reported
    assert (await later.call("authenticate", {"token": token("s1", role="admin")}))["ok"]
    assert (await later.call("join_room", {"roomId": "availability-1"}))["ok"]
    while True:  # (the join's report comes after any update of the refresh before it)
        _namespace, _sid, (event, *_args), _at = await ui.next_event("event_received")
        if event == "join_room":
            break
    assert ui.pending("socket_updated") == 0


async def reported_bytes(ui, exchange) -> tuple[int, int, tuple[int, int]]:
    """The bytes received and sent that the UI's stats report while `exchange()` runs (each
    report counts since the one before: those after the last one before it starts, to the
    second after it ends), and what `exchange` returned."""
    while ui.pending("server_stats"):
        await ui.next_event("server_stats")
    await ui.next_event("server_stats")  # what came before is reported
    exchanged = await exchange()
    reports = [await ui.next_event("server_stats") for _ in range(ui.pending("server_stats") + 2)]
    counts = {"bytesIn": 0, "bytesOut": 0}
    for report in reports:
        for aggregated in report["aggregatedEvents"]:
            if aggregated["type"] in counts:
                counts[aggregated["type"]] += aggregated["count"]
    return counts["bytesIn"], counts["bytesOut"], exchanged


BIG = "x" * 10_000


@WITH_ADMIN_UI
async def test_the_bytes_of_a_websocket_client_are_counted(
    stats_every_tenth, admin, base_url, http, token
):
    ui = await admin()
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect({"token": token("c1")})).startswith("40{")
        await raw.next_event("auth_success")

        async def exchange() -> tuple[int, int]:
            sent = received = 0
            for n in range(10):
                frame = f'42{n}["unknown-{n}",' + json.dumps(BIG) + "]"
                await raw.send(frame)
                sent += len(frame)
                await post_notification(http, users=["c1"], data={"title": BIG})
                received += len(await raw.next_frame(lambda f: BIG in f))
                received += len(await raw.next_frame(lambda f, n=n: f.startswith(f"43{n}")))
            return sent, received

        bytes_in, bytes_out, (sent, received) = await reported_bytes(ui, exchange)
    finally:
        await raw.close()
    # every frame with its header (a client's masked); what else the window held is small
    assert sent <= bytes_in < sent + 5_000
    # what the client read, and the UI's own reports of the events sent (with their payload)
    assert received <= bytes_out < 2 * received + 20_000


@WITH_ADMIN_UI
async def test_the_bytes_of_a_long_polling_client_are_counted(
    stats_every_tenth, admin, base_url, http, token
):
    ui = await admin()
    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40" + json.dumps({"token": token("c1")})) == 200
        await raw.poll_until(lambda packet: "auth_success" in packet)

        async def exchange() -> tuple[int, int]:
            sent = received = 0
            for n in range(10):
                packets = [f'42["unknown-{n}",' + json.dumps(BIG) + "]", '42["nope"]']
                assert await raw.post(*packets) == 200
                sent += len("\x1e".join(packets))
                await post_notification(http, users=["c1"], data={"title": BIG})
                await raw.poll_until(lambda _, n=n: sum(BIG in p for p in raw.received) > n)
            received = sum(len(packet) for packet in raw.received if BIG in packet)
            return sent, received

        bytes_in, bytes_out, (sent, received) = await reported_bytes(ui, exchange)
    finally:
        await raw.close()
    assert sent <= bytes_in < sent + 5_000  # the POSTs' bodies (and pongs)
    assert received <= bytes_out < 2 * received + 20_000


@WITH_ADMIN_UI
async def test_a_sockets_own_room_is_what_the_ui_labels_private(stats_every_tenth, admin, connect):
    """The UI calls a room private when it is named after a socket it lists (python-socketio's
    notion), public otherwise; a room it first hears of in a `room_joined` is public. A
    socket's own room is listed with the socket, before any `room_joined` names it, so that
    label holds; the gateway's rooms, whoever may join them, are all labelled public
    (docs/security.md says so)."""
    ui = await admin()
    await ui.next_event("all_sockets")
    await connect("py-websocket", sub="c1")
    while True:
        reported, _at = await ui.next_event("socket_connected")
        if reported["nsp"] == "/":
            break
    assert reported["id"] in reported["rooms"]
    joined = set()
    while not {reported["id"], "user-c1"} <= joined:
        _namespace, room, sid, _at = await ui.next_event("room_joined")
        if sid == reported["id"]:
            joined.add(room)
    order = [
        event
        for event, args in ui.log
        if (event == "socket_connected" and args[0]["id"] == reported["id"])
        or (event == "room_joined" and args[1:3] == [reported["id"], reported["id"]])
    ]
    assert order == ["socket_connected", "room_joined"]


# -- logging in -----------------------------------------------------------------------------------
@pytest.fixture
def no_login_refill(monkeypatch):
    """Failed logins are not forgiven during a test (they are, slowly, in production)."""
    import realtime.limits

    monkeypatch.setattr(realtime.limits, "LOGIN_FAILURES_PER_ADDRESS_PER_MINUTE", 1e-9)
    monkeypatch.setattr(realtime.limits, "LOGIN_FAILURES_PER_MINUTE", 1e-9)


async def login(base_url: str, credentials: dict, address: str | None = None) -> str:
    """One Admin UI login over a raw WebSocket of its own (closed afterwards, as the UI's
    client closes a connection whose namespace was refused): the answer frame."""
    headers = {"X-Forwarded-For": address} if address else None
    raw = await RawSocket(base_url, headers=headers).open()
    try:
        return await raw.connect(credentials, namespace="/admin")
    finally:
        await raw.close()


def refusal(answer: str) -> dict:
    assert answer.startswith("44/admin,"), answer
    return json.loads(answer.split(",", 1)[1])


@WITH_ADMIN_UI
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_refused_login_takes_no_other_on_its_connection(base_url, transport):
    """A second guess on the connection of a refused login is not compared (not even the
    right password): it ends the connection."""
    wrong = {"username": "ops", "password": "a wrong password"}
    if transport == "websocket":
        raw = await RawSocket(base_url).open()
        try:
            answer = await raw.connect(wrong, namespace="/admin")
            assert refusal(answer)["message"] == "authentication failed"
            await raw.send("40/admin," + json.dumps(ADMIN))
            await raw.wait_closed()
            assert not [f for f in raw.received if f.startswith("40/admin,{")]
        finally:
            await raw.close()
        return
    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40/admin," + json.dumps(wrong)) == 200
        await raw.poll_until(lambda packet: packet.startswith("44/admin,"))
        await raw.post("40/admin," + json.dumps(ADMIN), "40/admin," + json.dumps(ADMIN))
        assert await raw.poll_until_closed() == 400
        assert not [p for p in raw.received if p.startswith("40/admin,{")]
    finally:
        await raw.close()


@WITH_ADMIN_UI
async def test_guessing_from_one_address_stops_before_the_password_is_found(
    no_login_refill, base_url, http, caplog
):
    caplog.set_level(logging.INFO)
    for n in range(10):
        answer = await login(base_url, {"username": "ops", "password": f"guess {n}"})
        assert refusal(answer)["message"] == "authentication failed"
    # the right password, now, is refused without being compared
    answer = await login(base_url, ADMIN)
    assert refusal(answer)["data"]["code"] == "rate_limited"
    refused = [r for r in caplog.records if r.getMessage() == "admin ui login refused"]
    assert len(refused) == 11 and all(r.levelno == logging.WARNING for r in refused)
    assert {r.reason for r in refused} == {"credentials", "rate_limited"}
    assert all(r.address == "127.0.0.1" for r in refused)
    metrics = await (await http.get("/metrics")).text()
    assert 'realtime_admin_logins_refused_total{reason="credentials"} 10.0' in metrics
    assert 'realtime_admin_logins_refused_total{reason="rate_limited"} 1.0' in metrics


@WITH_ADMIN_UI
@pytest.mark.env(TRUSTED_PROXIES="127.0.0.1")
async def test_guessing_from_many_addresses_stops_too(no_login_refill, base_url):
    """Each address within its own bound: the bound on all failed logins together stops
    them, and the right password from yet another address is refused too."""
    for n in range(60):
        address = f"10.0.{n // 5}.{n % 5 + 1}"  # five guesses from each address
        answer = await login(base_url, {"username": "ops", "password": f"g{n}"}, address)
        assert refusal(answer)["message"] == "authentication failed"
    answer = await login(base_url, ADMIN, "10.99.0.1")
    assert refusal(answer)["data"]["code"] == "rate_limited"


@WITH_ADMIN_UI
async def test_logins_at_once_are_bounded_as_if_they_came_one_by_one(no_login_refill, base_url):
    """Each login takes its allowance before it is compared: thirty at once do not all pass
    the check before the first failure is counted."""
    answers = await asyncio.gather(
        *(login(base_url, {"username": "ops", "password": f"race {n}"}) for n in range(30))
    )
    messages = [refusal(answer)["message"] for answer in answers]
    assert messages.count("authentication failed") == 10
    assert refusal(await login(base_url, ADMIN))["data"]["code"] == "rate_limited"


@WITH_ADMIN_UI
async def test_a_refused_login_hears_nothing_of_the_admin_namespace(admin, connect, http, base_url):
    """Nothing the namespace is sent reaches a socket before its login is decided: a refused
    one gets its refusal and nothing else (no socket list, no users' events)."""
    ui = await admin()  # a viewer, so that there is something to hear
    await ui.next_event("all_sockets")
    victim = await connect("py-websocket", sub="victim")
    for n in range(5):
        assert await post_notification(http, users=["victim"]) == 202
        raw = await RawSocket(base_url).open()
        try:
            answer = await raw.connect({"username": "ops", "password": f"no {n}"}, "/admin")
            assert refusal(answer)["message"] == "authentication failed"
            # frames of one WebSocket arrive in the order they were sent
            assert raw.received == [answer]
        finally:
            await raw.close()
        await victim.next_event("notification")


@WITH_ADMIN_UI
async def test_a_few_wrong_passwords_do_not_lock_the_operator_out(base_url):
    for n in range(3):
        refusal(await login(base_url, {"username": "ops", "password": f"typo {n}"}))
    assert (await login(base_url, ADMIN)).startswith("40/admin,{")


ACTING_FEATURES = {"EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"}


async def next_refusal(ui) -> dict:
    """The next `order_refused` the UI got, and the report of it that the UI lists (an event
    sent to its own socket, in namespace `/admin`)."""
    refusal = await ui.next_event("order_refused")
    while True:
        namespace, _sid, (event, *args), _at = await ui.next_event("event_sent")
        if event == "order_refused":
            break
    assert namespace == "/admin" and args == [refusal]
    return refusal


@WITH_ADMIN_UI
async def test_it_is_read_only_by_default(admin, connect, gateway, caplog):
    customer = await connect("py-websocket", sub="c1")
    ui = await admin()
    features = (await ui.next_event("config"))["supportedFeatures"]
    assert "AGGREGATED_EVENTS" in features
    assert not ACTING_FEATURES & set(features)
    ours = next(s for s in await ui.next_event("all_sockets") if s["nsp"] == "/")
    # the UI's join form is shown whatever the features: what it sends is refused, visibly
    await ui.emit("join", "/", "vip", ours["id"])
    refusal = await next_refusal(ui)
    assert refusal["order"] == "join" and refusal["reason"] == "read_only"
    assert "read-only" in refusal["message"]
    assert "vip" not in gateway.engine.rooms_of(ours["id"])
    for order, args in [
        ("leave", ["/", "user-c1", ours["id"]]),
        ("emit", ["/", ours["id"], "notification", {"title": "forged"}]),
        ("_disconnect", ["/", False, ours["id"]]),
    ]:
        await ui.emit(order, *args)
        assert (await next_refusal(ui))["order"] == order
    assert "user-c1" in gateway.engine.rooms_of(ours["id"])
    assert customer.pending("notification") == 0 and not customer.disconnected.is_set()
    refused = [r for r in caplog.records if r.getMessage() == "admin ui order refused"]
    assert [r.order for r in refused] == ["join", "leave", "emit", "_disconnect"]


@WITH_ADMIN_UI
@pytest.mark.env(ADMIN_UI_READ_ONLY="false")
async def test_it_may_act_when_read_only_is_turned_off(admin, connect):
    customer = await connect("py-websocket", sub="c1")
    ui = await admin()
    assert "DISCONNECT" in (await ui.next_event("config"))["supportedFeatures"]
    sockets = await ui.next_event("all_sockets")
    ours = next(s for s in sockets if s["nsp"] == "/")
    await ui.emit("_disconnect", "/", False, ours["id"])
    assert await customer.wait_disconnected() is not None


@WITH_ADMIN_UI
@pytest.mark.env(ADMIN_UI_READ_ONLY="false")
async def test_a_room_the_operator_puts_a_socket_in_is_not_the_policys_to_revoke(
    admin, connect, token, gateway
):
    """With its full powers, the Admin UI may put a socket in a room that is none of the
    gateway's: a refreshed token keeps it there (the policy judges its own rooms only), and
    the socket's rooms say so."""
    customer = await connect("py-websocket", sub="c1")
    ui = await admin()
    sockets = await ui.next_event("all_sockets")
    ours = next(s for s in sockets if s["nsp"] == "/")
    # a socket's own room is no room to put another in: refused, where the UI shows it
    other = await connect("py-websocket", sub="c2")
    while True:
        reported, _at = await ui.next_event("socket_connected")
        if reported["nsp"] == "/":
            break
    other_sid = reported["id"]
    await ui.emit("join", "/", other_sid, ours["id"])
    assert (await next_refusal(ui))["reason"] == "room"
    assert other_sid not in gateway.engine.rooms_of(ours["id"])
    await other.disconnect()
    await ui.emit("join", "/", "vip", ours["id"])
    await eventually(lambda: "vip" in gateway.engine.rooms_of(ours["id"]))
    refreshed = await customer.call("authenticate", {"token": token("c1")})
    assert refreshed["ok"] and refreshed["rooms"] == ["user-c1", "vip"]
    assert customer.pending("rooms_revoked") == 0  # it would have come before the answer
    assert "vip" in gateway.engine.rooms_of(ours["id"])


@WITH_ADMIN_UI
@pytest.mark.env(AUTH_TIMEOUT="0.5")
async def test_an_admin_ui_connection_is_not_closed_by_the_auth_deadline(admin, clients):
    ui = await admin()
    # an unauthenticated gateway socket, connected after the UI, is closed at its deadline...
    stranger = clients("py-websocket")
    await stranger.connect({})
    assert (await stranger.next_event("auth_error"))["code"] == "auth_timeout"
    await stranger.wait_disconnected()
    # ...the UI's (connected for longer) still hears the server's stats, every two seconds
    ui.log.clear()
    stats = await ui.next_event("server_stats")
    assert stats["clientsCount"] >= 1
    assert not ui.disconnected.is_set()


async def test_without_credentials_there_is_no_admin_ui(admin, http):
    with pytest.raises(Refused):
        await admin()
    async with http.get("/admin-ui/") as response:
        assert response.status == 404


@WITH_ADMIN_UI
async def test_the_ui_is_served_from_the_package(http):
    async with http.get("/admin-ui/") as response:
        assert response.status == 200
        page = await response.text()
    assert "Socket.IO Admin UI" in page and "https://" not in page
    scripts = [part.split('"')[0] for part in page.split('<script src="')[1:]]
    assert scripts, page
    for script in scripts:
        async with http.get("/admin-ui/" + script) as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
    async with http.get("/admin-ui", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == "/admin-ui/"


async def post_notification(http, data=None, **audience) -> int:
    async with http.post(
        "/broadcast",
        json={"event": "notification", "data": data or {"title": "hello"}, **audience},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    ) as response:
        return response.status
