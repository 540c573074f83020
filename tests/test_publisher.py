"""Changes become live events for exactly their audience, end to end: a store write (in this
process or from `python -m realtime store` in another), the change feed, the event log, a real
server and real clients of every kind.

"Nobody else" is proven without sleeping: after the event under test, a sentinel booking in a
shop everyone watches is written; events of one socket arrive in emission order, so a client
that has its sentinel would already have had the event under test.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys

import pytest

from realtime.config import load_settings
from realtime.gateway import GATEWAY
from realtime.wire import event_id
from server.app import create_app
from storage.base import NewEvent
from tests.clients import ROOT, Client, make_client

SLOT = {"startsAt": "2026-11-21T10:00:00.000Z", "durationMinutes": 60}


async def audience(connect, kind):
    """The customer, a second customer, staff of the shop, staff of another shop, an admin,
    each watching the sentinel shop's availability."""
    people = {
        "customer": await connect(kind, sub="c1"),
        "other customer": await connect(kind, sub="c2"),
        "staff": await connect(kind, sub="st1", role="staff", shops=["s1"]),
        "other staff": await connect(kind, sub="st2", role="staff", shops=["s2"]),
        "admin": await connect(kind, sub="a1", role="admin"),
    }
    joins = [
        ("staff", "shop-s1"),
        ("other staff", "shop-s2"),
        ("admin", "admin-reservations"),
        ("admin", "admin-payments"),
    ]
    for who, room in joins:
        assert (await people[who].call("join_room", {"roomId": room}))["ok"]
    for client in people.values():
        assert (await client.call("join_room", {"roomId": "availability-sentinel"}))["ok"]
    return people


async def sentinel(store, people) -> None:
    await store.insert_document(
        "bookings", {"customerId": "nobody", "shopId": "sentinel", "status": "pending", **SLOT}
    )
    for client in people.values():
        while (await client.next_event("availability_update"))["shopId"] != "sentinel":
            pass


async def customer_on_each(servers, token, customers: list) -> list:
    """Customer c1 connected to each server (added to `customers`, for closing)."""
    for server in servers:
        customer = make_client("py-websocket", str(server.make_url("")).rstrip("/"))
        customers.append(customer)
        await customer.connect({"token": token("c1")})
        await customer.next_event("auth_success")
    return customers


def received(client, event):
    """What `client` got of `event`, leaving out the sentinel booking's own events."""
    return [
        payload
        for name, payload in client.log
        if name == event and payload.get("shopId") != "sentinel"
    ]


async def test_a_booking_reaches_exactly_its_audience_in_order(gateway, connect, client_kind):
    people = await audience(connect, client_kind)
    store = gateway.store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "PENDING", **SLOT}
    )
    created = await people["customer"].next_event("reservation_update")
    assert created["updateType"] == "created" and created["reservationId"] == booking
    assert (await people["customer"].call("join_room", {"roomId": f"reservation-{booking}"}))["ok"]
    await store.update_document("bookings", booking, {"status": "CONFIRMED"})
    await sentinel(store, people)

    for who in ("customer", "staff", "admin"):
        updates = received(people[who], "reservation_update")
        # once each, although the customer is in both user-c1 and reservation-{id}
        assert [u["updateType"] for u in updates] == ["created", "confirmed"], who
        confirmed = updates[1]
        assert confirmed["status"] == "confirmed" and confirmed["previousStatus"] == "pending"
        assert confirmed["eventId"] > updates[0]["eventId"]
        assert confirmed["timestamp"].endswith("Z")
        assert set(confirmed) == {
            "reservationId",
            "status",
            "previousStatus",
            "updateType",
            "userId",
            "shopId",
            "startsAt",
            "durationMinutes",
            "eventId",
            "timestamp",
        }
    for who in ("other customer", "other staff"):
        assert received(people[who], "reservation_update") == [], who


async def test_payments_and_availability_reach_their_rooms(gateway, connect, client_kind):
    people = await audience(connect, client_kind)
    for client in (people["customer"], people["staff"], people["other staff"]):
        assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"]
    store = gateway.store
    booking = await store.insert_document(
        "bookings",
        {"customerId": "c1", "shopId": "s1", "therapistId": "t1", "status": "confirmed", **SLOT},
    )
    await store.insert_document(
        "payments",
        {
            "bookingId": booking,
            "customerId": "c1",
            "shopId": "s1",
            "status": "paid",
            "amount": 80,
            "currency": "EUR",
        },
    )
    await store.update_document("bookings", booking, {"status": "cancelled"})
    await sentinel(store, people)

    for who in ("customer", "staff", "admin"):
        [payment] = received(people[who], "payment_update")
        assert payment["reservationId"] == booking and payment["amount"] == 80
    for who in ("other customer", "other staff"):
        assert received(people[who], "payment_update") == []
    for who in ("customer", "staff", "other staff"):  # all three watch availability-s1
        slots = [
            (e["available"], e["reservationId"])
            for e in received(people[who], "availability_update")
            if e["shopId"] == "s1"
        ]
        assert slots == [(False, booking), (True, booking)], who
    assert received(people["admin"], "availability_update") == []


async def test_a_write_from_another_process_is_delivered(gateway, settings, connect, client_kind):
    admin = await connect(client_kind, sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    env = {
        "STORE_PATH": settings.store_path,
        "JWT_SECRET": settings.jwt_secret,
        "PYTHONPATH": ROOT,
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime",
        "store",
        "insert",
        "bookings",
        json.dumps(
            {"_id": "from-cli", "customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0 and stdout.decode().strip() == "from-cli"
    update = await admin.next_event("reservation_update")
    assert (update["reservationId"], update["updateType"]) == ("from-cli", "created")


async def watching_admin(server, token, last_event_id: str | None = None) -> Client:
    """An admin in admin-reservations of this server: it hears every booking change the
    server emits, in order, from `last_event_id` on (what came before it joined is replayed)."""
    admin = make_client("py-websocket", str(server.make_url("")).rstrip("/"))
    await admin.connect({"token": token("a1", "admin")})
    join = {"roomId": "admin-reservations", "lastEventId": last_event_id}
    assert (await admin.call("join_room", join))["ok"]
    return admin


async def test_a_restart_emits_every_change_once(aiohttp_server, settings, token):
    # (no server fixture here: a gateway of its own on the same file would take changes too)
    first = create_app(settings)
    server = await aiohttp_server(first)
    admin = await watching_admin(server, token)
    store = first[GATEWAY].store
    for n in range(3):
        await store.insert_document(
            "bookings",
            {"_id": f"before-{n}", "customerId": "c1", "shopId": "s1", "status": "pending", **SLOT},
        )
    for n in range(3):
        assert (await admin.next_event("reservation_update"))["reservationId"] == f"before-{n}"
    seen = admin.last_event_id
    await admin.close()
    await server.close()

    # written while no gateway runs: the next one must emit these, and only these
    from storage.sqlite.store import SqliteStore

    offline = SqliteStore(settings.store_path)
    await offline.open()
    for n in range(2):
        await offline.insert_document(
            "bookings",
            {
                "_id": f"while-down-{n}",
                "customerId": "c1",
                "shopId": "s1",
                "status": "cancelled",
                **SLOT,
            },
        )
    # as after a crash between logging and saving the token: replayed changes are recognised
    await offline.save_resume_token("changes", {"_data": f"{1:016x}"})
    await offline.close()

    second = create_app(settings)
    # the feed starts with the server: the admin may join after the changes went out
    admin = await watching_admin(await aiohttp_server(second), token, last_event_id=seen)
    gateway = second[GATEWAY]
    # from the rewound token: two changes seen before, then two new ones, in that order
    for n in range(2):
        assert (await admin.next_event("reservation_update"))["reservationId"] == f"while-down-{n}"
    await admin.close()
    with sqlite3.connect(settings.store_path) as db:
        rows = db.execute("SELECT source, seq FROM events ORDER BY seq").fetchall()
    sources = [source for source, _ in rows]
    assert len(sources) == len(set(sources)) == 8
    assert gateway.emitter.emitted == {"reservation_update": 2}  # only the two new changes
    ids = [f"{seq:016d}" for _, seq in rows]
    assert ids == sorted(ids)


async def test_two_gateways_on_one_store_watch_once_and_both_deliver_every_change(
    aiohttp_server, settings, token
):
    # no Redis: the instance without the watcher learns of events from the log itself
    apps = [create_app(settings), create_app(settings)]
    servers = [await aiohttp_server(app) for app in apps]
    customers = []
    try:
        await customer_on_each(servers, token, customers)
        store = apps[0][GATEWAY].store
        written = [
            await store.insert_document(
                "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
            )
            for _ in range(5)
        ]
        for customer in customers:  # every change, once each, in order, on both instances
            got = [(await customer.next_event("reservation_update")) for _ in written]
            assert [e["reservationId"] for e in got] == written
            ids = [e["eventId"] for e in got]
            assert ids == sorted(set(ids))
        handled = sorted(app[GATEWAY].feed.changes_handled for app in apps)
        assert handled == [0, 5]  # one watcher: the lease holder's
        assert [app[GATEWAY].watcher.held_here for app in apps].count(True) == 1
    finally:
        for customer in customers:
            await customer.close()
    for customer in customers:
        assert customer.names().count("reservation_update") == 5


async def test_a_non_finite_number_in_a_document_reaches_clients_as_null(
    gateway, connect, client_kind, caplog
):
    # (a MongoDB double can be NaN; socket.io-client cannot parse it and would drop the
    # connection, reconnect, get it again by replay, for ever)
    admin = await connect(client_kind, sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-payments"}))["ok"]
    payment = await gateway.store.insert_document(
        "payments",
        {
            "bookingId": "b1",
            "customerId": "c1",
            "shopId": "s1",
            "status": "paid",
            "amount": float("nan"),
            "currency": "EUR",
        },
    )
    await gateway.store.update_document("payments", payment, {"amount": float("inf")})
    first = await admin.next_event("payment_update")
    second = await admin.next_event("payment_update")
    assert (first["paymentId"], first["amount"]) == (payment, None)
    assert (second["paymentId"], second["amount"]) == (payment, None)
    assert not admin.disconnected.is_set()
    assert "non-finite numbers sent as null" in caplog.text


async def test_a_booking_moved_to_another_customer_or_shop_leaves_their_reservation_room(
    gateway, connect, client_kind
):
    people = {
        "old customer": await connect(client_kind, sub="c1"),
        "old shop": await connect(client_kind, sub="st1", role="staff", shops=["s1"]),
        "new customer": await connect(client_kind, sub="c2"),
        "admin": await connect(client_kind, sub="a1", role="admin"),
    }
    assert (await people["admin"].call("join_room", {"roomId": "admin-reservations"}))["ok"]
    store = gateway.store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    assert (await people["admin"].next_event("reservation_update"))["updateType"] == "created"
    room = f"reservation-{booking}"
    for who in ("old customer", "old shop"):
        assert (await people[who].call("join_room", {"roomId": room}))["ok"], who

    await store.update_document("bookings", booking, {"customerId": "c2", "shopId": "s2"})
    for who in ("old customer", "old shop"):  # they get the change that moved it, then leave
        while (moved := await people[who].next_event("reservation_update"))["userId"] != "c2":
            pass
        assert moved["shopId"] == "s2"
        assert await people[who].next_event("rooms_revoked") == {"rooms": [room]}
    assert (await people["new customer"].call("join_room", {"roomId": room}))["ok"]

    await store.update_document("bookings", booking, {"status": "confirmed"})
    for who in ("new customer", "admin"):
        while (await people[who].next_event("reservation_update"))["status"] != "confirmed":
            pass
    # emitted after the confirmation: once it has arrived, so would have anything before it
    await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": "end"}, "users": ["c1", "st1"]}, None
    )
    for who in ("old customer", "old shop"):
        await people[who].next_event("notification")
        statuses = [p["status"] for p in received(people[who], "reservation_update")]
        assert "confirmed" not in statuses, who
    refused = await people["old customer"].call("join_room", {"roomId": room})
    assert refused["error"]["code"] == "forbidden"
    assert "rooms_revoked" not in people["admin"].names()


async def test_a_join_under_way_when_its_booking_moves_is_refused(gateway, connect, monkeypatch):
    admin = await connect(sub="a1", role="admin")
    assert (await admin.call("join_room", {"roomId": "admin-reservations"}))["ok"]
    store = gateway.store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    created = await admin.next_event("reservation_update")
    customer = await connect(sub="c1")

    # the customer's replay waits for it to read (it reads slowly); meanwhile the booking moves
    reading, waiting = asyncio.Event(), asyncio.Event()
    wait_for_room = gateway.engine.wait_for_room

    async def slow_reader(*args):
        waiting.set()
        await reading.wait()
        await wait_for_room(*args)

    monkeypatch.setattr(gateway.engine, "wait_for_room", slow_reader)
    join = asyncio.create_task(
        customer.call(
            "join_room", {"roomId": f"reservation-{booking}", "lastEventId": created["eventId"]}
        )
    )
    await waiting.wait()
    await store.update_document("bookings", booking, {"customerId": "c2"})
    assert (await admin.next_event("reservation_update"))["userId"] == "c2"  # moved, emitted
    reading.set()
    answer = await join
    assert answer["ok"] is False and answer["error"]["code"] == "forbidden"

    await store.update_document("bookings", booking, {"status": "confirmed"})
    assert (await admin.next_event("reservation_update"))["status"] == "confirmed"
    await gateway.broadcaster.broadcast(  # after the confirmation: a barrier for the customer
        {"event": "notification", "data": {}, "users": ["c1"]}, None
    )
    await customer.next_event("notification")
    assert "confirmed" not in [p["status"] for p in received(customer, "reservation_update")]


async def test_every_instance_takes_its_own_sockets_out_of_a_moved_booking_room(
    aiohttp_server, environ, redis_url, token
):
    # two gateways on one store and one Redis: whichever logs the change first, the sockets
    # of both leave the room
    settings = load_settings({**environ, "REDIS_URL": redis_url})
    apps = [create_app(settings), create_app(settings)]
    servers = [await aiohttp_server(app) for app in apps]
    store = apps[0][GATEWAY].store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    room = f"reservation-{booking}"
    customers = []
    try:
        for customer in await customer_on_each(servers, token, customers):
            assert (await customer.call("join_room", {"roomId": room}))["ok"]
        await store.update_document("bookings", booking, {"customerId": "c2"})
        for customer in customers:
            assert await customer.next_event("rooms_revoked") == {"rooms": [room]}
        assert all(app[GATEWAY].engine.members(room) == [] for app in apps)
    finally:
        for customer in customers:
            await customer.close()


async def test_a_dropped_collection_tells_clients_to_refetch_its_rooms(
    gateway, connect, client_kind
):
    customer = await connect(client_kind, sub="c1")
    store = gateway.store
    await store.insert_document("payments", {"customerId": "c1", "status": "paid", "amount": 5})
    assert (await customer.next_event("payment_update"))["amount"] == 5
    await store.drop_collection("payments")
    resync = await customer.next_event("resync")
    assert resync == {
        "reason": "collection_dropped",
        "rooms": ["reservation-*", "user-*", "shop-*", "admin-payments"],
    }
    # the stream goes on: later changes still arrive
    await store.insert_document("bookings", {"customerId": "c1", "status": "pending", **SLOT})
    assert (await customer.next_event("reservation_update"))["status"] == "pending"


async def test_lost_history_reaches_sockets_on_every_instance_in_order(
    aiohttp_server, settings, token
):
    # no Redis: the resync is logged, so the instance without the watcher sends it too, after
    # the events logged before it
    apps = [create_app(settings), create_app(settings)]
    servers = [await aiohttp_server(app) for app in apps]
    customers: list = []
    try:
        await customer_on_each(servers, token, customers)
        store = apps[0][GATEWAY].store
        await store.insert_document("payments", {"customerId": "c1", "status": "paid"})
        await store.drop_collection("payments")
        for customer in customers:
            resync = await customer.next_event("resync")
            assert set(resync) == {"reason", "rooms"}  # a control event: no eventId
            assert resync["reason"] == "collection_dropped"
            names = [n for n in customer.names() if n in ("payment_update", "resync")]
            assert names == ["payment_update", "resync"]
    finally:
        for customer in customers:
            await customer.close()


@pytest.mark.env(STAFF_SHOP_ROOMS="false")  # in shop-s1 by its join only
async def test_a_client_ahead_of_the_instance_it_joins_gets_nothing_twice(
    aiohttp_server, settings, token
):
    # it saw event n on an instance that delivered it at once; the instance it reconnects to
    # has not heard of n yet (no Redis, and its timer is held back here): it must catch up
    # before the client enters, or n would come again, out of order
    apps = [create_app(settings), create_app(settings)]
    apps[1][GATEWAY].emitter._catch_up_interval_s = 3600  # behind until something asks
    servers = [await aiohttp_server(app) for app in apps]
    staff = []
    try:
        for server in servers:
            member = make_client("py-websocket", str(server.make_url("")).rstrip("/"))
            staff.append(member)
            await member.connect({"token": token("st1", "staff", ["s1"])})
            await member.next_event("auth_success")
        ahead, behind = staff
        assert (await ahead.call("join_room", {"roomId": "shop-s1"}))["ok"]
        first = await apps[0][GATEWAY].emitter.publish(
            [NewEvent("notification", {"n": 1}, ("shop-s1",), "ahead:1")]
        )
        seen = await ahead.next_event("notification")
        assert seen["eventId"] == event_id(first[0].sequence)
        joined = await behind.call(
            "join_room", {"roomId": "shop-s1", "lastEventId": seen["eventId"]}
        )
        assert joined["ok"] and joined["lastEventId"] == seen["eventId"], joined
        await apps[1][GATEWAY].emitter.publish(
            [NewEvent("notification", {"n": 2}, ("shop-s1",), "ahead:2")]
        )
        later = await behind.next_event("notification")
        assert later["n"] == 2  # not n=1 again
    finally:
        for member in staff:
            await member.close()


async def test_deployments_sharing_one_redis_do_not_hear_each_other(
    aiohttp_server, environ, redis_url, token, tmp_path
):
    # Redis pub/sub ignores the database number: each event log speaks on its own channel
    deployments = [
        load_settings({**environ, "REDIS_URL": redis_url, "STORE_PATH": str(tmp_path / name)})
        for name in ("tenant-a.db", "tenant-b.db")
    ]
    apps = [create_app(settings) for settings in deployments]
    servers = [await aiohttp_server(app) for app in apps]
    customers: list = []
    try:
        tenant_a, tenant_b = await customer_on_each(servers, token, customers)
        await apps[0][GATEWAY].emitter.publish(
            [NewEvent("notification", {"tenant": "a"}, ("user-c1",), "tenant:a")]
        )
        assert (await tenant_a.next_event("notification"))["tenant"] == "a"
        await apps[1][GATEWAY].emitter.publish(
            [NewEvent("notification", {"tenant": "b"}, ("user-c1",), "tenant:b")]
        )
        assert (await tenant_b.next_event("notification"))["tenant"] == "b"
        assert [p["tenant"] for n, p in tenant_b.log if n == "notification"] == ["b"]
        assert apps[0][GATEWAY].bus.channel != apps[1][GATEWAY].bus.channel
    finally:
        for customer in customers:
            await customer.close()
