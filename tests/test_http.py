"""The HTTP API end to end: POST /broadcast to real clients, every error, health, metrics, CORS."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from realtime.config import load_settings
from server.app import create_app
from storage.base import StoreError

SERVICE_TOKEN = "service-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)


async def post(http, body, headers=None, **kwargs):
    response = await http.post(
        "/broadcast", json=body, headers={**AUTH, **(headers or {})}, **kwargs
    )
    return response.status, await response.json()


async def until_everyone_has(people, marker: str) -> None:
    """Wait for a final broadcast every client is sent: events of one socket arrive in order,
    so whatever was sent to a client before it has arrived too."""
    for client in people:
        while (await client.next_event("notification"))["title"] != marker:
            pass


def titles(client) -> list[str]:
    return [p["title"] for name, p in client.log if name == "notification"]


async def test_a_broadcast_reaches_exactly_its_rooms_and_users(http, connect, client_kind):
    customer = await connect(client_kind, sub="c1")
    bystander = await connect(client_kind, sub="c2")
    staff = await connect(client_kind, sub="st1", role="staff", shops=["s1"])
    assert (await staff.call("join_room", {"roomId": "shop-s1"}))["ok"]

    status, body = await post(
        http,
        {
            "event": "notification",
            "data": {"title": "hello"},
            "rooms": ["shop-s1"],
            "users": ["c1"],
        },
    )
    assert status == 202
    assert body["rooms"] == ["shop-s1", "user-c1"] and body["eventId"].isdigit()
    got = await customer.next_event("notification")
    assert got == {"title": "hello", "eventId": body["eventId"], "timestamp": got["timestamp"]}
    assert (await staff.next_event("notification"))["eventId"] == body["eventId"]

    await post(
        http, {"event": "notification", "data": {"title": "end"}, "users": ["c1", "c2", "st1"]}
    )
    await until_everyone_has([customer, bystander, staff], "end")
    assert titles(bystander) == ["end"]


async def replayed(http, body, key: str) -> str | None:
    """The `Idempotent-Replayed` header of a broadcast with this Idempotency-Key."""
    response = await http.post("/broadcast", json=body, headers={**AUTH, "Idempotency-Key": key})
    assert response.status == 202, await response.text()
    return response.headers.get("Idempotent-Replayed")


async def test_an_idempotent_retry_returns_the_first_answer_and_emits_once(http, connect):
    customer = await connect(sub="c1")
    body = {"event": "payout_update", "data": {"amount": 10}, "users": ["c1"]}
    first = await post(http, body, {"Idempotency-Key": "payout-42"})
    again = await post(http, body, {"Idempotency-Key": "payout-42"})
    assert first[0] == again[0] == 202 and first[1] == again[1]
    conflict = await post(http, {**body, "data": {"amount": 11}}, {"Idempotency-Key": "payout-42"})
    assert conflict == (
        422,
        {"error": {"code": "idempotency_conflict", "message": conflict[1]["error"]["message"]}},
    )
    await post(http, {"event": "notification", "data": {"title": "end"}, "users": ["c1"]})
    await customer.next_event("notification")
    assert [p["eventId"] for n, p in customer.log if n == "payout_update"] == [first[1]["eventId"]]


async def test_a_replayed_answer_says_so_and_a_first_one_does_not(http):
    body = {"event": "payout_update", "data": {"amount": 3}, "users": ["c1"]}
    assert await replayed(http, body, "payout-43") is None
    assert await replayed(http, body, "payout-43") == "true"
    assert await replayed(http, body, "payout-43") == "true"
    assert await replayed(http, body, "payout-44") is None  # another key: a new event
    without_key = await http.post("/broadcast", json=body, headers=AUTH)
    assert without_key.status == 202 and "Idempotent-Replayed" not in without_key.headers


async def test_a_method_a_route_does_not_take_is_405_with_allow(http):
    for method, path, allowed in [
        ("GET", "/broadcast", "POST"),
        ("PUT", "/disconnect", "POST"),
        ("DELETE", "/revoke", "POST"),
        ("POST", "/health", "GET,HEAD"),
        ("PATCH", "/status", "GET,HEAD"),
    ]:
        response = await http.request(method, path, headers=AUTH)
        assert response.status == 405, (method, path)
        assert response.headers["Allow"] == allowed
        error = (await response.json())["error"]
        assert error["code"] == "method_not_allowed" and path in error["message"]
    unknown = await http.get("/no-such-route")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"data": {}, "users": ["c1"]}, "event"),
        ({"event": "notification", "users": ["c1"]}, "data"),
        ({"event": "notification", "data": [], "users": ["c1"]}, "data"),
        ({"event": "notification", "data": {}}, "_schema"),
        ({"event": "notification", "data": {}, "rooms": ["lobby"]}, "rooms"),
        ({"event": "notification", "data": {}, "users": ["a b"]}, "users"),
        ({"event": "reservation_update", "data": {}, "users": ["c1"]}, "event"),
        ({"event": "auth_success", "data": {}, "users": ["c1"]}, "event"),
        ({"event": "notification", "data": {}, "users": ["c1"], "extra": 1}, "extra"),
        ("just a string", "_schema"),
    ],
)
async def test_invalid_broadcasts_are_400_with_field_errors(http, body, field):
    status, answer = await post(http, body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_payload"
    assert field in answer["error"]["details"]


async def test_the_http_error_statuses(http):
    body = {"event": "notification", "data": {}, "users": ["c1"]}
    no_token = await http.post("/broadcast", json=body)
    assert no_token.status == 401
    assert (await no_token.json())["error"]["code"] == "unauthenticated"
    wrong = await http.post("/broadcast", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    text = await http.post(
        "/broadcast", data="hello", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert text.status == 415
    assert (await text.json())["error"]["code"] == "unsupported_media_type"
    broken = await http.post(
        "/broadcast", data="{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert broken.status == 400 and (await broken.json())["error"]["code"] == "invalid_payload"
    unknown = await http.get("/nowhere")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"
    status_without_token = await http.get("/status")
    assert status_without_token.status == 401


@pytest.mark.env(MAX_PAYLOAD_BYTES="2048")
async def test_a_body_over_the_limit_is_413(http):
    status, answer = await post(
        http, {"event": "notification", "data": {"x": "y" * 4096}, "users": ["c1"]}
    )
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


@pytest.mark.env(BROADCAST_TOKEN="")
async def test_without_a_configured_token_every_call_is_403(http):
    for token in ("", SERVICE_TOKEN):
        response = await http.post(
            "/broadcast", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    assert (await http.get("/status", headers=AUTH)).status == 403


async def test_health_status_and_metrics_count_what_happened(http, connect):
    assert (await (await http.get("/health")).json()) == {"status": "ok"}
    ready = await http.get("/ready")
    assert ready.status == 200
    assert (await ready.json()) == {"status": "ready", "checks": {"store": "ok", "watcher": "ok"}}
    await connect(sub="c1")
    await connect(sub="st1", role="staff", shops=["s1"])
    await post(http, {"event": "notification", "data": {"t": 1}, "users": ["c1"]})
    await http.post("/broadcast", json={})  # 401
    status = await (await http.get("/status", headers=AUTH)).json()
    assert status["connections"] == 2 and status["authenticated"] == 2 and status["users"] == 2
    # staff are put in their shops' rooms too (STAFF_SHOP_ROOMS, true by default)
    assert status["rooms"] == {"user-c1": 1, "user-st1": 1, "shop-s1": 1}
    assert status["watcher"]["running"] is True
    assert status["watcher"]["heldHere"] is True and status["watcher"]["fence"] == 1
    assert status["watcher"]["holder"] == status["instance"]
    assert status["eventsEmitted"] == {"notification": 1}
    assert status["uptimeSeconds"] >= 0 and status["version"]
    metrics = await (await http.get("/metrics")).text()
    assert 'realtime_broadcast_requests_total{status="202"} 1.0' in metrics
    assert 'realtime_broadcast_requests_total{status="401"} 1.0' in metrics
    assert 'realtime_events_emitted_total{event="notification"} 1.0' in metrics
    assert "realtime_connections 2.0" in metrics
    assert "realtime_watcher_lease_held 1.0" in metrics
    assert "realtime_watcher_takeovers_total 1.0" in metrics
    assert "realtime_events_caught_up_total 0.0" in metrics  # one instance: nothing missed


async def test_metrics_count_auth_failures(http, clients):
    client = clients()
    await client.connect()
    await client.call("authenticate", {"token": "bad"})
    metrics = await (await http.get("/metrics")).text()
    assert 'realtime_auth_failures_total{code="invalid_token"} 1.0' in metrics


async def test_ready_is_503_while_redis_is_down_and_200_when_it_returns(
    aiohttp_server, environ, free_port
):
    redis_port = free_port()  # nothing listens there yet
    settings = load_settings({**environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"})
    server = await aiohttp_server(create_app(settings))
    http = aiohttp.ClientSession(str(server.make_url("")))
    down = await http.get("/ready")
    assert down.status == 503
    error = (await down.json())["error"]
    assert error["code"] == "unavailable" and error["message"] == "not ready: redis"
    assert error["details"]["store"] == "ok" and error["details"]["redis"].startswith("down")
    redis = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:

        async def until_ready():
            while (await http.get("/ready")).status != 200:
                pass  # each probe waits on the network; redis is starting

        await asyncio.wait_for(until_ready(), 20)
    finally:
        redis.terminate()
        await redis.wait()
        await http.close()


async def test_ready_is_503_when_the_watcher_stops(http, gateway):
    await gateway.feed.stop()
    answer = await http.get("/ready")
    assert answer.status == 503
    assert (await answer.json())["error"]["details"]["watcher"] == (
        "not running here, and no other instance holds the lease"
    )


@pytest.mark.env(CORS_ORIGINS="https://app.example")
async def test_cors_allows_only_the_configured_origins(http):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    allowed = await http.options(
        "/broadcast", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.status == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    refused = await http.options(
        "/broadcast", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    # a browser's script may read whether an answer was replayed
    body = {"event": "notification", "data": {}, "users": ["c1"]}
    cross = await http.post(
        "/broadcast", json=body, headers={**AUTH, "Origin": "https://app.example"}
    )
    assert cross.status == 202
    exposed = cross.headers["Access-Control-Expose-Headers"].lower().replace(" ", "").split(",")
    assert "idempotent-replayed" in exposed
    handshake = "/socket.io/?EIO=4&transport=polling"
    ok = await http.get(handshake, headers={"Origin": "https://app.example"})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert (await http.get(handshake, headers={"Origin": "https://evil.example"})).status == 400


async def test_a_store_outage_is_503_unavailable(http, gateway):
    await gateway.store.close()  # the store goes away under the running gateway
    status, answer = await post(http, {"event": "notification", "data": {}, "users": ["c1"]})
    assert status == 503 and answer["error"]["code"] == "unavailable"
    ready = await http.get("/ready")
    assert ready.status == 503 and (await ready.json())["error"]["details"]["store"] != "ok"


# -- what a hostile or broken service sends ------------------------------------------------------
async def raw_post(http, text: str, content_type: str = "application/json"):
    response = await http.post(
        "/broadcast", data=text.encode(), headers={**AUTH, "Content-Type": content_type}
    )
    return response.status, await response.json()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_a_non_finite_number_is_refused(http, number):
    status, answer = await raw_post(
        http, f'{{"event": "notification", "data": {{"x": {number}}}, "users": ["c1"]}}'
    )
    assert status == 400 and answer["error"]["code"] == "invalid_payload"
    assert number in answer["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        "[" * 5000 + "]" * 5000,  # nested deeper than Python reads
        '{"event": "notification", "data": {"x": ' + "9" * 5000 + '}, "users": ["c1"]}',
        '{"event": "notification", "data": {}, "users": ["c1"]',  # cut short
        "\udcff",  # not UTF-8 once encoded (surrogate escape)
    ],
    ids=["deep nesting", "5000 digits", "truncated", "not utf-8"],
)
async def test_a_body_python_cannot_read_is_400_not_500(http, body):
    raw = body.encode("utf-8", "surrogateescape")
    response = await http.post(
        "/broadcast", data=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_payload"


async def test_an_unknown_charset_is_415(http):
    status, answer = await raw_post(http, "{}", "application/json; charset=x-bogus")
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("target", [{"users": ["c1\n"]}, {"rooms": ["shop-s1\n"]}])
async def test_an_id_with_a_trailing_newline_is_refused(http, target):
    status, answer = await post(http, {"event": "notification", "data": {}, **target})
    assert status == 400 and set(answer["error"]["details"]) == set(target)


async def test_a_key_reused_after_its_time_is_a_new_request(http, connect, settings):
    customer = await connect(sub="c1")
    body = {"event": "payout_update", "data": {"amount": 10}, "users": ["c1"]}
    first = await post(http, body, {"Idempotency-Key": "payout-7"})
    with sqlite3.connect(settings.store_path) as db:  # IDEMPOTENCY_TTL has passed for the key
        db.execute("UPDATE idempotency_keys SET expires_ms = 0 WHERE key = 'payout-7'")
    again = await post(http, body, {"Idempotency-Key": "payout-7"})
    assert first[0] == again[0] == 202 and again[1]["eventId"] > first[1]["eventId"]
    got = [(await customer.next_event("payout_update"))["eventId"] for _ in range(2)]
    assert got == [first[1]["eventId"], again[1]["eventId"]]
    retried = await post(http, body, {"Idempotency-Key": "payout-7"})  # within the new time
    assert retried == again
    assert await replayed(http, body, "payout-7") == "true"


async def test_a_retry_after_an_unanswered_attempt_returns_the_logged_event_once(
    http, connect, gateway, monkeypatch
):
    customer = await connect(sub="c1")
    complete = gateway.store.complete_request

    async def lost_answer(*args):  # the attempt logs and emits, then its answer is lost
        monkeypatch.setattr(gateway.store, "complete_request", complete)
        raise StoreError("the store went away before the answer was kept")

    monkeypatch.setattr(gateway.store, "complete_request", lost_answer)
    body = {"event": "payout_update", "data": {"amount": 5}, "users": ["c1"]}
    failed = await post(http, body, {"Idempotency-Key": "payout-8"})
    assert failed[0] == 503
    assert await replayed(http, body, "payout-8") == "true"  # the first attempt's event
    retried = await post(http, body, {"Idempotency-Key": "payout-8"})
    assert retried[0] == 202
    await post(http, {"event": "notification", "data": {"title": "end"}, "users": ["c1"]})
    await customer.next_event("notification")
    assert [p["eventId"] for n, p in customer.log if n == "payout_update"] == [
        retried[1]["eventId"]
    ]


@pytest.mark.parametrize("number", ["1e400", "-1e999"])
async def test_a_number_that_reads_as_infinity_is_refused(http, number):
    status, answer = await raw_post(
        http, f'{{"event": "notification", "data": {{"x": {number}}}, "users": ["c1"]}}'
    )
    assert status == 400 and answer["error"]["code"] == "invalid_payload"


def nested(levels: int) -> dict:
    data: dict = {}
    for _ in range(levels - 1):
        data = {"a": data}
    return data


async def test_data_nested_past_the_limit_is_refused(http):
    deep = await post(http, {"event": "notification", "data": nested(33), "users": ["c1"]})
    assert deep[0] == 400 and "data" in deep[1]["error"]["details"]
    fine = await post(http, {"event": "notification", "data": nested(32), "users": ["c1"]})
    assert fine[0] == 202
