"""The Socket.IO Admin UI: namespace `/admin`, behind ADMIN_UI_USERNAME/ADMIN_UI_PASSWORD, read
only by default; talked to here with the official socket.io-client, as the UI itself does."""

from __future__ import annotations

import json

import pytest

from tests.clients import Refused, make_client

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
    assert reported["id"] not in gateway.sio.manager._timestamps


@WITH_ADMIN_UI
async def test_no_token_reaches_the_admin_ui(admin, base_url, settings, token):
    """Whoever holds the Admin UI's password must not learn users' tokens: not from the events
    sockets send (`authenticate`), nor from their handshakes' query."""
    ui = await admin()
    await ui.next_event("all_sockets")
    secret = token("c1")
    customer = make_client("js-websocket", f"{base_url}/?token={secret}", settings.socketio_path)
    try:
        await customer.connect({})
        assert (await customer.call("authenticate", {"token": secret}))["ok"] is True
        while True:
            reported, _at = await ui.next_event("socket_connected")
            if reported["nsp"] == "/":
                break
        assert reported["handshake"]["query"]["token"] == "[redacted]"
        while True:
            _namespace, _sid, (event, *args), _at = await ui.next_event("event_received")
            if event == "authenticate":
                break
        assert args == [{"token": "[redacted]"}]
        assert secret not in json.dumps(ui.log)
    finally:
        await customer.close()


@WITH_ADMIN_UI
async def test_it_is_read_only_by_default(admin):
    ui = await admin()
    features = (await ui.next_event("config"))["supportedFeatures"]
    assert "AGGREGATED_EVENTS" in features
    assert not {"EMIT", "JOIN", "LEAVE", "DISCONNECT"} & set(features)


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


async def post_notification(http, **audience) -> int:
    async with http.post(
        "/broadcast",
        json={"event": "notification", "data": {"title": "hello"}, **audience},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    ) as response:
        return response.status
