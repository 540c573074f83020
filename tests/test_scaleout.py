"""Several gateway processes on one store and one Redis: one watcher at a time under a lease,
every event to every socket of its rooms exactly once and in order, whichever instance logged
it, through joins with replay, a killed or paused instance, and a Redis outage.

Everything here is a real process: gateways (`python -m realtime`), a private redis-server,
clients of both kinds over both transports.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from storage.sqlite.store import SqliteStore
from tests.clients import Client, make_client
from tests.gateways import GatewayProcess, get_json, post, received, until

SLOT = {"startsAt": "2026-11-23T10:00:00.000Z", "durationMinutes": 60}


@pytest.fixture
async def store(environ) -> AsyncIterator[SqliteStore]:
    """The embedded store the gateways share, opened by the test as one more writer."""
    store = SqliteStore(environ["STORE_PATH"])
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def people(token) -> AsyncIterator[Callable]:
    """`await people(gateway, kind, sub, role, shops)`: an authenticated client."""
    made: list[Client] = []

    async def connect(gateway, kind="py-websocket", sub="c1", role="customer", shops=()):
        client = make_client(kind, gateway.url)
        made.append(client)
        await client.connect({"token": token(sub, role, shops)})
        await client.next_event("auth_success")
        return client

    yield connect
    for client in made:
        await client.close()


async def holder_of_the_lease(*candidates) -> GatewayProcess:
    async def held():
        for gateway in candidates:
            status, body = await get_json(gateway, "/status")
            if status == 200 and body["watcher"]["heldHere"] and body["watcher"]["running"]:
                return gateway
        return None

    return await until(held)


async def to_shop(gateway, numbers) -> None:
    """Broadcast notifications numbered `numbers` to shop-s1 through `gateway`; each is
    answered 202 (logged: the log is the truth), whatever Redis is doing."""
    for n in numbers:
        body = {"event": "notification", "data": {"n": n}, "rooms": ["shop-s1"]}
        assert await post(gateway, body) == 202


async def ready_says(gateway, code: int):
    """/ready's body when it answers `code`, else None."""
    status, body = await get_json(gateway, "/ready")
    return body if status == code else None


@pytest.fixture
async def redis_admin(redis_server) -> AsyncIterator[redis.asyncio.Redis]:
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    yield admin
    await admin.aclose()


async def staff_listening(people, gateway, kind: str) -> Client:
    """Staff of shop s1 on `gateway`, in room shop-s1."""
    listener = await people(gateway, kind, sub="st1", role="staff", shops=["s1"])
    assert (await listener.call("join_room", {"roomId": "shop-s1"}))["ok"]
    return listener


async def write_bookings(store, count: int, customer: str = "c1") -> list[str]:
    return [
        await store.insert_document(
            "bookings", {"customerId": customer, "shopId": "s1", "status": "pending", **SLOT}
        )
        for _ in range(count)
    ]


async def test_two_instances_deliver_every_broadcast_and_change_once_to_sockets_on_both(
    gateways, people, store
):
    first, second = await gateways(), await gateways()
    on_first = await people(first, "py-websocket")
    on_second = await people(second, "js-polling")
    statuses = [
        await post(gateway, {"event": "notification", "data": {"n": n}, "users": ["c1"]})
        for n, gateway in zip(range(20), [first, second] * 10, strict=False)
    ]
    assert statuses == [202] * 20
    written = await write_bookings(store, 10)
    for client in (on_first, on_second):
        notes = await received(client, "notification", 20)
        assert [note["n"] for note in notes] == list(range(20))
        changes = await received(client, "reservation_update", 10)
        assert [change["reservationId"] for change in changes] == written
    assert [name for name, _ in on_first.log] == [name for name, _ in on_second.log]


async def test_a_killed_watcher_is_replaced_and_no_change_is_skipped_or_repeated(
    gateways, people, store
):
    first = await gateways()
    second = await gateways()
    assert await holder_of_the_lease(first, second) is first  # the first to start took it
    watching = await people(second, "py-polling")
    written = await write_bookings(store, 5)
    first.process.kill()  # kill -9 the holder, changes still coming
    written += await write_bookings(store, 15)
    changes = await received(watching, "reservation_update", 20)
    assert [change["reservationId"] for change in changes] == written
    assert await holder_of_the_lease(second) is second

    # and in turn: a new instance, then the second killed while changes flow
    third = await gateways()
    on_third = await people(third, "js-websocket")
    later = await write_bookings(store, 5)
    second.process.kill()
    later += await write_bookings(store, 15)
    changes = await received(on_third, "reservation_update", 20)
    assert [change["reservationId"] for change in changes] == later
    _, status = await get_json(await holder_of_the_lease(third), "/status")
    assert status["watcher"]["fence"] == 3  # first, second, third: one new fence each
    assert on_third.pending("reservation_update") == 0


async def test_a_paused_holder_logs_nothing_once_another_took_over(gateways, people, store):
    first = await gateways()
    second = await gateways()
    assert await holder_of_the_lease(first, second) is first
    watching = await people(second, "py-websocket")
    written = await write_bookings(store, 3)
    await received(watching, "reservation_update", 3)
    _, before = await get_json(first, "/status")
    handled_before = before["watcher"]["changesHandled"]

    first.process.send_signal(signal.SIGSTOP)  # paused past its lease, still "holding" it
    written += await write_bookings(store, 5)
    assert await holder_of_the_lease(second) is second
    first.process.send_signal(signal.SIGCONT)  # it wakes up with a stream full of changes
    written += await write_bookings(store, 5)

    changes = await received(watching, "reservation_update", 10)
    assert [change["reservationId"] for change in changes] == written[3:]

    async def stood_down():
        status, body = await get_json(first, "/status")
        return status == 200 and not body["watcher"]["running"] and body["watcher"]

    watcher = await until(stood_down)
    assert watcher["heldHere"] is False and watcher["holder"] != before["instance"]
    assert watcher["changesHandled"] == handled_before  # it logged nothing after the takeover
    events = await store.events_after(0, 1000)
    updates = [e for e in events if e.name == "reservation_update"]
    assert [e.payload["reservationId"] for e in updates] == written  # each change logged once


@pytest.mark.parametrize("round_", range(3))  # the race it guards against is timing-dependent
async def test_a_join_with_replay_on_one_instance_while_another_publishes_misses_nothing(
    gateways, people, round_
):
    # in shop-s1 by its join only (not put there on authentication, with no cursor)
    publishing, joining = await gateways(), await gateways(STAFF_SHOP_ROOMS="false")
    reference = await people(joining, "py-websocket", sub="st0", role="staff", shops=["s1"])
    assert (await reference.call("join_room", {"roomId": "shop-s1"}))["ok"]
    total = 400
    publisher = asyncio.create_task(to_shop(publishing, range(total)))
    seen = await received(reference, "notification", 100 + 40 * round_)
    cursor = seen[-1]["eventId"]
    late = await people(
        joining, ["py-polling", "js-websocket", "js-polling"][round_], "st1", "staff", ["s1"]
    )
    joined = await late.call("join_room", {"roomId": "shop-s1", "lastEventId": cursor})
    assert joined["ok"], joined
    await publisher
    rest = await received(reference, "notification", total - len(seen))
    expected = [note["eventId"] for note in rest]
    got = await received(late, "notification", len(expected))
    assert [note["eventId"] for note in got] == expected  # after its cursor: all, once, in order
    assert late.pending("notification") == 0


async def test_a_redis_outage_loses_nothing_and_ready_says_so(gateways, people, redis_server):
    publishing, other = await gateways(), await gateways()
    listener = await staff_listening(people, other, "js-websocket")

    await to_shop(publishing, range(0, 20))
    await redis_server.stop(kill=True)
    down = await until(lambda: ready_says(other, 503))
    assert "redis" in down["error"]["details"] and down["error"]["details"]["store"] == "ok"
    await to_shop(publishing, range(20, 40))  # while Redis is down
    await redis_server.start()
    await until(lambda: ready_says(other, 200))
    await until(lambda: ready_says(publishing, 200))
    await to_shop(publishing, range(40, 60))
    notes = await received(listener, "notification", 60)
    assert [note["n"] for note in notes] == list(range(60))


async def test_an_instance_whose_subscription_is_cut_while_redis_stays_up_misses_nothing(
    gateways, people, redis_admin
):
    # every subscriber is cut (CLIENT KILL TYPE pubsub) while Redis stays up: each instance
    # subscribes again, and what was published meanwhile comes from the log
    publishing, other = await gateways(), await gateways()
    listener = await staff_listening(people, other, "py-websocket")
    killed = await redis_admin.client_kill_filter(_type="pubsub")
    assert killed >= 2  # every subscriber, the gateways' buses among them
    await to_shop(publishing, range(30))
    notes = await received(listener, "notification", 30)
    assert [note["n"] for note in notes] == list(range(30))


async def test_an_instance_deaf_to_its_own_heartbeat_is_not_ready_and_misses_nothing(
    gateways, people, redis_admin
):
    # Redis answers (PING works) but delivers nothing: writes paused, so no message reaches a
    # subscriber, as with a listener that died without an error (python-socketio issue 1581)
    publishing, other = await gateways(), await gateways()
    listener = await staff_listening(people, other, "py-polling")
    await redis_admin.execute_command("CLIENT", "PAUSE", "8000", "WRITE")
    deaf = await until(lambda: ready_says(other, 503))
    assert "heartbeat" in deaf["error"]["details"]["redis"]
    await to_shop(publishing, range(20))  # answered at once: announcing never waits for Redis
    notes = await received(listener, "notification", 20)  # from the log, in order
    assert [note["n"] for note in notes] == list(range(20))
    await redis_admin.execute_command("CLIENT", "UNPAUSE")
    await until(lambda: ready_says(other, 200))
    assert listener.pending("notification") == 0


async def test_redis_killed_mid_stream_loses_and_repeats_nothing_on_either_instance(
    gateways, people, redis_server
):
    # test_a_redis_outage_loses_nothing_and_ready_says_so stops Redis between two batches
    # posted through one instance; here it dies while broadcasts are being posted through both,
    # and both instances have listeners of both kinds over both transports
    first, second = await gateways(), await gateways()
    listeners = [
        await staff_listening(people, first, "py-websocket"),
        await staff_listening(people, first, "js-polling"),
        await staff_listening(people, second, "py-polling"),
        await staff_listening(people, second, "js-websocket"),
    ]
    total = 120
    stages = {20: asyncio.Event(), 60: asyncio.Event()}  # posted so far: Redis killed, started

    async def stream() -> None:
        for n in range(total):
            body = {"event": "notification", "data": {"n": n}, "rooms": ["shop-s1"]}
            assert await post((first, second)[n % 2], body) == 202  # whatever Redis does
            if n + 1 in stages:
                stages[n + 1].set()

    posting = asyncio.create_task(stream())
    await asyncio.wait_for(stages[20].wait(), 20)
    await redis_server.stop(kill=True)  # the stream goes on while it is down
    await asyncio.wait_for(stages[60].wait(), 20)
    await redis_server.start()
    await posting
    for listener in listeners:
        notes = await received(listener, "notification", total)
        assert [note["n"] for note in notes] == list(range(total)), listener.kind
    await until(lambda: ready_says(first, 200))
    await until(lambda: ready_says(second, 200))
    marker = {"event": "notification", "data": {"n": total}, "rooms": ["shop-s1"]}
    assert await post(first, marker) == 202
    for listener in listeners:  # after the marker, nothing came twice before it
        assert (await listener.next_event("notification"))["n"] == total
        assert listener.pending("notification") == 0
