"""Replay on reconnect: a client that comes back with its last event id gets, in order, what it
missed (changes and broadcasts), then live events, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from realtime.access.auth import issue_token
from realtime.config import load_settings
from realtime.wire import event_id
from tests.clients import Refused
from tests.gateways import GatewayProcess
from tests.raw import stalled_websocket

SLOT = {"startsAt": "2026-11-21T10:00:00.000Z", "durationMinutes": 60}


async def notify(gateway, user: str, title: str) -> str:
    answer = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": title}, "users": [user]}, None
    )
    return answer["eventId"]


def data_events(client) -> list[tuple[str, dict]]:
    return [(name, payload) for name, payload in client.log if "eventId" in (payload or {})]


async def test_a_handshake_last_event_id_replays_the_user_room(
    gateway, clients, connect, token, client_kind
):
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    first = await connect(client_kind, sub="c1")
    seen = await notify(gateway, "c1", "before")
    assert (await first.next_event("notification"))["eventId"] == seen
    await first.disconnect()
    await first.wait_disconnected()

    # missed while away: a booking change and a broadcast
    booking = await gateway.store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    await admin.next_event("reservation_update")  # logged: the broadcast comes after it
    missed_broadcast = await notify(gateway, "c1", "while away")

    again = clients(client_kind)
    await again.connect({"token": token("c1"), "lastEventId": seen})
    success = await again.next_event("auth_success")
    assert success["replayed"] == 2 and success["gap"] is False
    assert success["rooms"] == ["user-c1"]
    replayed = data_events(again)
    assert [name for name, _ in replayed] == ["reservation_update", "notification"]
    assert replayed[0][1]["reservationId"] == booking
    assert replayed[1][1]["eventId"] == missed_broadcast
    assert replayed[0][1]["eventId"] < replayed[1][1]["eventId"]
    assert again.names().index("auth_success") == len(replayed)  # replay came first
    live = await notify(gateway, "c1", "live")
    assert (await again.next_event("notification"))["eventId"] == missed_broadcast
    assert (await again.next_event("notification"))["eventId"] == live


async def test_join_room_replays_before_the_ack_and_gives_a_cursor(gateway, connect, client_kind):
    staff = await connect(client_kind, sub="st1", role="staff", shops=["s1"])
    empty = await staff.call("join_room", {"roomId": "shop-s1"})
    assert empty == {"ok": True, "roomId": "shop-s1", "replayed": 0, "lastEventId": None}
    first = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": "one"}, "rooms": ["shop-s1"]}, None
    )
    await staff.next_event("notification")
    assert (await staff.call("leave_room", {"roomId": "shop-s1"}))["ok"]
    later = [
        (
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"title": f"n{n}"}, "rooms": ["shop-s1"]}, None
            )
        )["eventId"]
        for n in range(3)
    ]
    answer = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": first["eventId"]})
    assert answer == {
        "ok": True,
        "roomId": "shop-s1",
        "replayed": 3,
        "lastEventId": later[-1],
        "gap": False,
    }
    assert [p["eventId"] for n, p in staff.log if n == "notification"][1:] == later


@pytest.mark.env(STAFF_SHOP_ROOMS="false")  # not in shop-s1 before its join
async def test_live_events_during_a_replay_arrive_after_it_without_gap_or_duplicate(
    gateway, connect
):
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    start = await notify(gateway, "nobody", "start")
    for n in range(300):
        await gateway.broadcaster.broadcast(
            {"event": "notification", "data": {"title": f"old {n}"}, "rooms": ["shop-s1"]}, None
        )

    async def keep_publishing():
        for n in range(100):
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"title": f"live {n}"}, "rooms": ["shop-s1"]},
                None,
            )

    publishing = asyncio.create_task(keep_publishing())
    answer = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": start})
    await publishing
    end = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": "end"}, "rooms": ["shop-s1"]}, None
    )
    while (await staff.next_event("notification"))["eventId"] != end["eventId"]:
        pass
    received = [p["eventId"] for n, p in staff.log if n == "notification"]
    logged = [
        event_id(e.sequence) for e in await gateway.store.room_events("shop-s1", int(start), 1000)
    ]
    assert received == logged  # every event of the room after `start`, once, in order
    assert len(received) == 401 and answer["replayed"] >= 300


async def test_an_id_older_than_the_retention_window_is_a_gap(gateway, connect):
    client = await connect(sub="c1")
    old = await notify(gateway, "c1", "old")
    await notify(gateway, "c1", "lost")
    await gateway.store.prune(before_ms=int(time.time() * 1000) + 1)  # retention has passed
    kept = await notify(gateway, "c1", "kept")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": old})
    assert answer["gap"] is True and answer["replayed"] == 1 and answer["lastEventId"] == kept


@pytest.mark.env(REPLAY_MAX_EVENTS="2")
async def test_more_than_can_be_replayed_is_a_gap(gateway, connect):
    client = await connect(sub="c1")
    start = await notify(gateway, "c1", "start")
    for n in range(4):
        await notify(gateway, "c1", f"n{n}")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": start})
    assert answer["replayed"] == 2 and answer["gap"] is True


async def test_a_malformed_last_event_id_is_refused(clients, connect, token):
    client = await connect(sub="c1")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": "yesterday"})
    assert answer["error"]["code"] == "invalid_payload"
    refused = clients()
    with pytest.raises(Refused) as error:
        await refused.connect({"token": token("c1"), "lastEventId": "yesterday"})
    assert error.value.data["code"] == "invalid_payload"


async def test_an_id_beyond_the_log_is_a_gap(gateway, clients, connect, token):
    # as after the store was replaced: the client holds an id this log never gave
    newest = await notify(gateway, "c1", "the newest")
    beyond = event_id(int(newest) + 1000)
    client = await connect(sub="c1")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": beyond})
    assert answer == {
        "ok": True,
        "roomId": "user-c1",
        "replayed": 0,
        "lastEventId": newest,
        "gap": True,
    }
    again = clients()
    await again.connect({"token": token("c1"), "lastEventId": beyond})
    success = await again.next_event("auth_success")
    assert success["gap"] is True and success["replayed"] == 0
    live = await notify(gateway, "c1", "live")
    assert (await again.next_event("notification"))["eventId"] == live


SERVICE_TOKEN = "replay-service-token-0123456789"


async def test_replays_to_clients_that_do_not_read_are_bounded_in_bytes(environ, free_port):
    """Three clients replay 15 MB each without reading: the server holds about a backlog's
    worth of bytes for each (not the replay), then cuts them off."""
    event_bytes, events = 100_000, 150
    gateway = await GatewayProcess(
        {
            "STORE_PATH": environ["STORE_PATH"],
            "JWT_SECRET": environ["JWT_SECRET"],
            "BROADCAST_TOKEN": SERVICE_TOKEN,
            "MAX_PAYLOAD_BYTES": str(2 * event_bytes),
            "CLIENT_BACKLOG_MAX_BYTES": "400000",
            "CLIENT_STALL_TIMEOUT": "2",
        },
        free_port(),
    ).start()
    writers = []
    try:
        async with aiohttp.ClientSession(gateway.url) as http:
            auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
            for n in range(events):
                body = {
                    "event": "notification",
                    "data": {"n": n, "pad": "x" * event_bytes},
                    "rooms": ["availability-big"],
                }
                assert (await http.post("/broadcast", json=body, headers=auth)).status == 202
            before_kb = gateway.memory_kb()
            token = issue_token(load_settings(environ), "c1", "customer")
            join = '421["join_room",{"roomId":"availability-big","lastEventId":"0"}]'
            for _ in range(3):
                writers.append((await stalled_websocket(gateway.url, token, join))[1])

            async def until_cut_off() -> None:
                while (await (await http.get("/status", headers=auth)).json())["connections"]:
                    pass  # each look is a round trip to the gateway

            cut_off = True
            try:
                await asyncio.wait_for(until_cut_off(), 30)
            except TimeoutError:
                cut_off = False
        growth_mb = (gateway.memory_kb() - before_kb) / 1024
        # unbounded, each replay would hold its 15 MB twice over (read, then queued)
        assert growth_mb < 25, f"peak memory grew by {growth_mb:.0f} MB"
        assert cut_off, "the clients that read nothing are still connected"
    finally:
        for writer in writers:
            writer.close()
        await gateway.stop()


async def test_an_id_behind_a_log_pruned_to_nothing_is_a_gap(gateway, connect):
    old = await notify(gateway, "c1", "old")
    await notify(gateway, "c1", "lost")
    await gateway.store.prune(before_ms=int(time.time() * 1000) + 1)  # retention took all
    client = await connect(sub="c1")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": old})
    assert answer["gap"] is True and answer["replayed"] == 0


async def test_auth_success_gives_a_cursor_to_a_client_that_has_seen_nothing(
    gateway, clients, connect, token, client_kind
):
    """A client that comes back with the cursor its first auth_success gave gets what its
    user room was sent meanwhile, though it had no event to take a cursor from."""
    await notify(gateway, "someone-else", "before")  # the log is not empty
    first = await connect(client_kind, sub="c1")
    cursor = first.log[-1][1]["lastEventId"]
    assert cursor is not None and cursor == gateway.emitter.delivered_event_id()
    await first.disconnect()
    await first.wait_disconnected()
    missed = await notify(gateway, "c1", "while away")

    again = clients(client_kind)
    await again.connect({"token": token("c1"), "lastEventId": cursor})
    success = await again.next_event("auth_success")
    assert success["replayed"] == 1 and success["gap"] is False
    assert success["lastEventId"] == missed
    assert [payload["eventId"] for _, payload in data_events(again)] == [missed]


# -- a replay gives a socket only what it was allowed to see ------------------------------------
async def broadcast_to(gateway, room: str, title: str) -> str:
    answer = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": title}, "rooms": [room]}, None
    )
    return answer["eventId"]


def replayed_names(client, after: int = 0) -> list[str]:
    return [
        payload.get("updateType") or payload.get("status") or payload.get("title")
        for _, payload in data_events(client)[after:]
    ]


async def pay(store, booking: str, customer: str, shop: str, amount: int) -> None:
    """A payment of this booking, written to the store as the booking API would."""
    await store.insert_document(
        "payments",
        {
            "bookingId": booking,
            "customerId": customer,
            "shopId": shop,
            "status": "succeeded",
            "amount": amount,
            "currency": "EUR",
        },
    )


async def test_a_moved_booking_does_not_hand_its_history_over(gateway, connect, client_kind):
    """c1's booking at s1, paid, talked about, then moved to c2 at s2: c2 and s2's staff
    replaying its room get what happened from the move on, not c1's payment; c1, once it is
    theirs again, gets its own era and the moves, not c2's."""
    admin = await connect(sub="a1", role="admin")
    store = gateway.store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    room = f"reservation-{booking}"
    assert (await admin.call("join_room", {"roomId": room, "lastEventId": "0"}))["ok"]
    await pay(store, booking, "c1", "s1", 120)
    await admin.next_event("payment_update")  # logged (broadcasts are logged at once)
    await broadcast_to(gateway, room, "c1 era")
    await store.update_document("bookings", booking, {"customerId": "c2", "shopId": "s2"})
    while (await admin.next_event("reservation_update"))["userId"] != "c2":
        pass
    await broadcast_to(gateway, room, "c2 era")
    await store.update_document("bookings", booking, {"status": "confirmed"})
    # every one of them is delivered (the admin's room sees them all, in order)
    while replayed_names(admin)[-1:] != ["confirmed"]:
        await admin.next_event("reservation_update")

    for sub, role, shops in [("c2", "customer", ()), ("st2", "staff", ("s2",))]:
        newcomer = await connect(client_kind, sub=sub, role=role, shops=shops)
        before = len(data_events(newcomer))
        answer = await newcomer.call("join_room", {"roomId": room, "lastEventId": "0"})
        assert answer["ok"] and answer["replayed"] == 3, (sub, answer)
        assert replayed_names(newcomer, before) == ["modified", "c2 era", "confirmed"], sub
        assert not [name for name, _ in newcomer.log if name == "payment_update"], sub
    admin_replay = await connect(client_kind, sub="a2", role="admin")
    answer = await admin_replay.call("join_room", {"roomId": room, "lastEventId": "0"})
    assert answer["replayed"] == 6  # an admin sees everything

    await store.update_document("bookings", booking, {"customerId": "c1", "shopId": "s1"})
    while replayed_names(admin)[-1:] != ["modified"]:
        await admin.next_event("reservation_update")
    owner = await connect(client_kind, sub="c1")
    before = len(data_events(owner))
    answer = await owner.call("join_room", {"roomId": room, "lastEventId": "0"})
    assert replayed_names(owner, before) == [
        "created",
        "succeeded",
        "c1 era",
        "modified",  # the move away: c1 had it live
        "modified",  # and back
    ]
    assert answer["replayed"] == 5


@pytest.fixture
async def booked_before_the_gateway(settings) -> str:
    """A booking of c1 at s1 written to the store before the gateway first ran: the event
    log holds nothing of its creation."""
    from storage.sqlite.store import SqliteStore

    store = SqliteStore(settings.store_path)
    await store.open()
    try:
        return await store.insert_document(
            "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
        )
    finally:
        await store.close()


async def test_history_older_than_the_log_s_record_of_a_booking_is_judged_safely(
    booked_before_the_gateway, gateway, connect
):
    """Events of a booking's room with no `reservation_update` before them in the log: while
    the log holds none of the booking at all, its parties are today's (they may replay them);
    once it records a move, what came before the move is nobody's to replay but an admin's."""
    booking = booked_before_the_gateway
    room = f"reservation-{booking}"
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": room}))["ok"]
    await broadcast_to(gateway, room, "before any change")
    await admin.next_event("notification")
    owner = await connect(sub="c1")
    answer = await owner.call("join_room", {"roomId": room, "lastEventId": "0"})
    assert answer["replayed"] == 1 and replayed_names(owner) == ["before any change"]

    await gateway.store.update_document("bookings", booking, {"customerId": "c2"})
    await admin.next_event("reservation_update")
    newcomer = await connect(sub="c2")
    answer = await newcomer.call("join_room", {"roomId": room, "lastEventId": "0"})
    assert answer["replayed"] == 1 and replayed_names(newcomer) == ["modified"]


async def test_a_cursor_ahead_of_this_instance_is_judged_by_the_log(
    settings, aiohttp_server, token, monkeypatch
):
    """Two instances on one store, without Redis: the one a client joins on has not yet
    delivered what its cursor names (it reads the log on a timer). Whom the booking
    concerned at the cursor is read from the log, not from what this instance delivered:
    c2, back in its booking, does not get c1's payment from the time it was c1's."""
    from realtime.gateway import GATEWAY
    from server.app import create_app
    from tests.clients import make_client
    from tests.test_transport import eventually

    # two instances of one process, as if of two hosts (each would take the other's lease
    # for a dead process's of its own host)
    monkeypatch.setattr("realtime.changes.watcher.dead_on_this_host", lambda holder: False)
    first = create_app(settings)
    first_server = await aiohttp_server(first)
    await eventually(lambda: first[GATEWAY].watcher.held_here)  # the other one never will
    lagging = create_app(settings)
    lagging[GATEWAY].emitter._catch_up_interval_s = 3600  # hears of nothing by itself
    lagging_server = await aiohttp_server(lagging)
    clients = []

    async def connect(server, sub, role="customer"):
        client = make_client("py-websocket", str(server.make_url("")).rstrip("/"))
        clients.append(client)
        await client.connect({"token": token(sub, role)})
        await client.next_event("auth_success")
        return client

    try:
        admin = await connect(first_server, "a1", "admin")
        for room in ("admin-reservations", "admin-payments"):
            assert (await admin.call("join_room", {"roomId": room}))["ok"]
        store = first[GATEWAY].store
        booking = await store.insert_document(
            "bookings", {"customerId": "c2", "shopId": "s1", "status": "pending", **SLOT}
        )
        created = await admin.next_event("reservation_update")
        # the lagging instance has delivered the booking's creation (c2's), and no more
        lagging[GATEWAY].emitter.catch_up_soon()
        await eventually(lambda: lagging[GATEWAY].emitter.delivered >= int(created["eventId"]))
        await store.update_document("bookings", booking, {"customerId": "c1"})
        to_c1 = await admin.next_event("reservation_update")
        await pay(store, booking, "c1", "s1", 4200)
        await admin.next_event("payment_update")
        await store.update_document("bookings", booking, {"customerId": "c2"})
        await admin.next_event("reservation_update")
        assert lagging[GATEWAY].emitter.delivered < int(to_c1["eventId"])

        c2 = await connect(lagging_server, "c2")
        answer = await c2.call(
            "join_room", {"roomId": f"reservation-{booking}", "lastEventId": to_c1["eventId"]}
        )
        assert answer["ok"] and answer["replayed"] == 1, answer  # the move back
        assert "payment_update" not in c2.names()
        # (its own room's events, delivered as this instance caught up, concern it too)
        assert {p["userId"] for n, p in data_events(c2) if n == "reservation_update"} == {"c2"}
    finally:
        for client in clients:
            await client.close()
