"""The embedded store's file failing under a running gateway (disk full, read-only, I/O
errors), and recovering: /ready names the store, /broadcast is 503 `unavailable` and logs
nothing half-way, the change feed retries with backoff, and once the file works again every
change and broadcast reaches real clients exactly once.

The change feed's own policy is held to the same file: a resync the failing file refuses is
told again, never lost (tests at the end).

The failure is injected at the store's boundary: the real `SqliteStore` runs underneath, and
while a switch is on the statements SQLite would refuse raise what SQLite raises
(`sqlite3.OperationalError`) on the store's own connection thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator

import pytest

from realtime.backoff import Backoff
from realtime.changes.feed import ChangeFeed
from server.app import create_app
from storage.base import NewEvent, StoreError
from storage.sqlite.store import SqliteStore
from tests.gateways import until

SERVICE_TOKEN = "service-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
SLOT = {"startsAt": "2026-11-23T10:00:00.000Z", "durationMinutes": 60}
WAIT_S = 10.0
# what SQLite says when the disk is full, the file read-only, or the disk failing
DISK_FULL = "database or disk is full"
READ_ONLY = "attempt to write a readonly database"
IO_ERROR = "disk I/O error"
WRITES = ("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE", "REPLACE")
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)


class FailingStore(SqliteStore):
    """The embedded store, whose file refuses statements while `fail()` is in force: writes
    (a full disk, a read-only file) or everything (I/O errors), optionally only in some of
    the store's transactions (`only`: their functions' names, e.g. `_append`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._failing: str | None = None
        self._writes_only = True
        self._only: frozenset[str] | None = None
        self.refused: collections.Counter[str] = collections.Counter()  # by transaction
        self._waiters: list[tuple[str, int, asyncio.Future]] = []

    def fail(self, message: str, writes_only: bool = True, only=None) -> None:
        self._failing, self._writes_only = message, writes_only
        self._only = frozenset(only) if only is not None else None

    def recover(self) -> None:
        self._failing = None

    async def _run(self, function, *args):
        loop = asyncio.get_running_loop()
        name = getattr(function, "__name__", "?")

        def guarded(db, *rest):
            failing = self._failing
            if failing is None or (self._only is not None and name not in self._only):
                return function(db, *rest)
            return function(_Refusing(db, failing, self._writes_only, refused), *rest)

        def refused() -> None:  # on the store's thread
            loop.call_soon_threadsafe(self._note, name)

        return await super()._run(guarded, *args)

    def _note(self, name: str) -> None:
        self.refused[name] += 1
        for waited, count, future in self._waiters:
            if waited == name and self.refused[name] >= count and not future.done():
                future.set_result(None)

    async def refusals(self, name: str, count: int) -> None:
        """Return once `count` transactions of `name` were refused."""
        if self.refused[name] >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((name, count, future))
        await asyncio.wait_for(future, WAIT_S)


class _Refusing:
    """An `sqlite3.Connection` whose statements fail as a failing file makes them fail."""

    def __init__(self, db: sqlite3.Connection, message: str, writes_only: bool, refused):
        self._db, self._message, self._writes_only, self._refused = (
            db,
            message,
            writes_only,
            refused,
        )

    def _check(self, sql: str) -> None:
        if not self._writes_only or sql.lstrip().upper().startswith(WRITES):
            self._refused()
            raise sqlite3.OperationalError(self._message)

    def execute(self, sql: str, *params):
        self._check(sql)
        return self._db.execute(sql, *params)

    def executemany(self, sql: str, *params):
        self._check(sql)
        return self._db.executemany(sql, *params)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


@pytest.fixture
def store(settings) -> FailingStore:
    return FailingStore(settings.store_path, poll_ms=settings.watcher_poll_ms)


@pytest.fixture
def app(settings, store):
    return create_app(settings, store)


@pytest.fixture
async def writer(server, settings) -> AsyncIterator[SqliteStore]:
    """The booking service: another writer of the same file, which works."""
    other = SqliteStore(settings.store_path)
    await other.open()
    yield other
    await other.close()


def count_rows(path: str, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


async def post(http, body, key: str | None = None):
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    response = await http.post("/broadcast", json=body, headers=headers)
    return response.status, await response.json()


async def ready(http) -> tuple[int, dict]:
    response = await http.get("/ready")
    return response.status, await response.json()


async def until_ready(http) -> dict:
    """/ready once it answers 200 (the store's probe write gets through again)."""

    async def answered():
        status, body = await ready(http)
        return body if status == 200 else None

    return await until(answered, WAIT_S)


def booking(customer: str = "c1") -> dict:
    return {"customerId": customer, "shopId": "s1", "status": "pending", **SLOT}


@pytest.mark.parametrize(
    ("message", "writes_only"), [(DISK_FULL, True), (READ_ONLY, True), (IO_ERROR, False)]
)
async def test_ready_is_503_naming_the_store_while_its_file_fails_and_200_once_it_works(
    http, store, message, writes_only
):
    assert (await ready(http))[0] == 200
    store.fail(message, writes_only)
    body = {"event": "notification", "data": {}, "users": ["c1"]}
    status, answer = await post(http, body)
    assert status == 503 and answer["error"]["code"] == "unavailable"
    status, answer = await ready(http)
    # reads may still work: after a refused call the probe is a write, which does not
    assert status == 503 and answer["error"]["message"] == "not ready: store"
    assert message in answer["error"]["details"]["store"]
    assert answer["error"]["details"]["watcher"] == "ok"
    store.recover()
    assert (await until_ready(http))["checks"]["store"] == "ok"
    assert (await post(http, body))[0] == 202


@pytest.mark.parametrize("only", [None, {"_append"}], ids=["every-write", "the-append"])
async def test_a_broadcast_refused_by_a_failing_store_logs_nothing_and_its_retry_emits_once(
    http, connect, store, settings, only
):
    customer = await connect(sub="c1")
    events_before = count_rows(settings.store_path, "events")
    body = {"event": "payout_update", "data": {"amount": 5}, "users": ["c1"]}
    store.fail(DISK_FULL, only=only)  # `the-append`: the key is claimed, the event not logged
    for _ in range(2):
        status, answer = await post(http, body, key="payout-1")
        assert status == 503 and answer["error"]["code"] == "unavailable"
    assert (await post(http, body))[0] == 503  # without a key
    assert count_rows(settings.store_path, "events") == events_before  # nothing half-way
    answered = count_rows(settings.store_path, "idempotency_keys")
    assert answered == (0 if only is None else 1)

    store.recover()
    first = await post(http, body, key="payout-1")
    again = await post(http, body, key="payout-1")
    assert first[0] == again[0] == 202 and again[1] == first[1]
    marker = await post(http, {"event": "notification", "data": {"end": 1}, "users": ["c1"]})
    assert (await customer.next_event("notification"))["eventId"] == marker[1]["eventId"]
    # events of one socket arrive in order: everything sent before the marker is here
    payouts = [p["eventId"] for name, p in customer.log if name == "payout_update"]
    assert payouts == [first[1]["eventId"]]
    assert count_rows(settings.store_path, "events") == events_before + 2


async def test_a_booking_written_while_the_log_append_fails_is_emitted_once_after_recovery(
    http, connect, store, writer, settings, caplog
):
    staff = await connect("py-websocket", sub="st1", role="staff", shops=["s1"])
    assert (await staff.call("join_room", {"roomId": "shop-s1"}))["ok"]
    customer = await connect("py-polling", sub="c1")
    caplog.set_level(logging.WARNING, logger="realtime.changes.feed")

    store.fail(READ_ONLY)
    written = [await writer.insert_document("bookings", booking())]  # the service still writes
    # the feed read it, and its append failed: a 4th attempt means the 3rd failure was handled
    # (logged, waited out) before it, so 3 retries are on the record
    await store.refusals("_append", 4)
    retries = [
        r.retry_in_s
        for r in caplog.records
        if r.getMessage() == "change stream interrupted" and READ_ONLY in r.error
    ]
    assert len(retries) >= 3 and retries[2] > retries[0]  # backing off
    assert count_rows(settings.store_path, "events") == 0
    assert staff.pending("reservation_update") == customer.pending("reservation_update") == 0

    store.recover()
    written.append(await writer.insert_document("bookings", booking()))
    for client in (staff, customer):
        got = [await client.next_event("reservation_update", WAIT_S) for _ in written]
        assert [event["reservationId"] for event in got] == written
    written.append(await writer.insert_document("bookings", booking()))
    for client in (staff, customer):  # the next one comes after: nothing came twice before it
        assert (await client.next_event("reservation_update"))["reservationId"] == written[-1]
        assert client.pending("reservation_update") == 0
    logged = [
        e.payload["reservationId"]
        for e in await writer.events_after(0, 100)
        if e.name == "reservation_update"
    ]
    assert logged == written  # each change logged once
    await until_ready(http)


@pytest.mark.env(WATCHER_LEASE_TTL="1.5")
async def test_a_failure_longer_than_the_watcher_lease_stops_the_feed_and_it_resumes_after(
    http, connect, store, writer, gateway
):
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    assert (await staff.call("join_room", {"roomId": "shop-s1"}))["ok"]
    store.fail(DISK_FULL)
    written = [await writer.insert_document("bookings", booking())]
    await store.refusals("_acquire_lease", 4)  # not renewed for longer than its time

    async def stopped():
        return not gateway.feed.running

    await until(stopped, WAIT_S)  # lapsed: whoever takes it next must be alone
    status, answer = await ready(http)
    assert status == 503 and answer["error"]["details"]["watcher"] != "ok"
    written.append(await writer.insert_document("bookings", booking()))

    store.recover()
    got = [await staff.next_event("reservation_update", WAIT_S) for _ in written]
    assert [event["reservationId"] for event in got] == written
    await until_ready(http)
    written.append(await writer.insert_document("bookings", booking()))
    assert (await staff.next_event("reservation_update"))["reservationId"] == written[-1]
    assert staff.pending("reservation_update") == 0
    logged = [
        e.payload["reservationId"]
        for e in await writer.events_after(0, 100)
        if e.name == "reservation_update"
    ]
    assert logged == written


async def test_a_resync_the_failing_file_refuses_is_told_once_it_works_and_not_lost(tmp_path):
    """History lost at start (a token ahead of the change log: the file was replaced) while the
    log refuses the resync: the dead token is kept, so the feed finds the loss again, tells it
    once the file works, and only then watches from now."""
    store = FailingStore(str(tmp_path / "resync.db"), poll_ms=10)
    await store.open()
    await store.save_resume_token("changes", {"_data": "00000000000000ff"})
    handled: list[str] = []

    async def handle(changes, checkpoint) -> bool:
        handled.extend(str(change.document_id) for change in changes)
        return False

    async def resync(reason, collections) -> None:  # logged, as the emitter does
        payload = {"reason": reason, "rooms": list(collections)}
        await store.append_events(
            [NewEvent("resync", payload, ("everyone",), f"resync:{uuid.uuid4().hex}")]
        )

    feed = ChangeFeed(store, ["bookings"], handle, resync, backoff=Backoff(0.01, 0.05))
    try:
        store.fail(DISK_FULL, only={"_append"})
        with contextlib.suppress(StoreError):  # as the watcher does: logged, then it runs
            await feed.open()
        feed.start()
        await store.refusals("_append", 3)  # told and refused, again and again
        assert await store.load_resume_token("changes") == {"_data": "00000000000000ff"}
        store.recover()

        async def told():
            return [e for e in await store.events_after(0, 10) if e.name == "resync"]

        [event] = await until(told, WAIT_S)
        assert event.payload == {"reason": "change_history_lost", "rooms": ["bookings"]}
        written = await store.insert_document("bookings", booking())

        async def watched():
            return written in handled

        await until(watched, WAIT_S)  # from now on
    finally:
        await feed.stop()
        await store.close()
