"""One contract for both stores: run on the embedded store always, and on MongoDB when
`MONGODB_URL` names a replica set (no MongoDB server can be installed on this project's build
machines, so there it is skipped, saying so)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import bson
import pytest
from bson import ObjectId
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from storage.base import (
    Change,
    ChangeHistoryLost,
    Checkpoint,
    Fence,
    LeaseLost,
    NewEvent,
    Revocation,
    StoreError,
)
from storage.mongo import MongoStore
from storage.mongo.stream import UNREADABLE
from storage.sqlite.store import SqliteStore

WAIT_S = 10.0
MONGODB_SKIP = (
    "MONGODB_URL is not set: no MongoDB replica set is reachable from this machine "
    "(none can be installed here); set MONGODB_URL=mongodb://host/?replicaSet=rs0 "
    "to run the store contract against MongoDB"
)


@pytest.fixture(params=["sqlite", "mongodb"])
async def stores(request, tmp_path):
    """Opens stores on one set of data: `await stores()` (more than one: concurrent writers,
    or a restart); `retention_s` as `EVENT_RETENTION`."""
    url = os.environ.get("MONGODB_URL")
    if request.param == "mongodb" and not url:
        pytest.skip(MONGODB_SKIP)
    name = f"realtime_contract_{uuid.uuid4().hex[:12]}"
    opened = []

    async def open_store(retention_s: float = 7 * 86400):
        if request.param == "mongodb":
            store = MongoStore(url, name, event_retention_s=retention_s)
        else:
            store = SqliteStore(str(tmp_path / "contract.db"), poll_ms=10, retention_s=retention_s)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    if request.param == "mongodb" and opened:
        await opened[0].client.drop_database(opened[0].db.name)
        await opened[0].client.drop_database(opened[0].state.name)
    for store in opened:
        await store.close()


@pytest.fixture
async def store(stores):
    store = await stores()
    if isinstance(store, MongoStore) and store.images_supported:
        for name in ("bookings", "payments"):
            await store.db.create_collection(name, changeStreamPreAndPostImages={"enabled": True})
    return store


@pytest.fixture
def mongo_store(store):
    if not isinstance(store, MongoStore):
        pytest.skip("MongoDB only: the embedded store has no such behaviour to show")
    return store


def keeps_pre_images(store) -> bool:
    return isinstance(store, SqliteStore) or store.images_supported


async def next_change(stream) -> Change:
    async def wait() -> Change:
        while True:
            event = await stream.try_next()
            if event is not None:
                return Change.from_event(event)

    return await asyncio.wait_for(wait(), WAIT_S)


async def test_documents_round_trip(store):
    doc_id = await store.insert_document("bookings", {"status": "pending", "shopId": "s1"})
    assert isinstance(doc_id, str) and len(doc_id) == 24  # ObjectId hex
    assert (await store.get_document("bookings", doc_id))["status"] == "pending"
    assert await store.insert_document("bookings", {"_id": "b-1", "status": "x"}) == "b-1"
    assert await store.update_document("bookings", doc_id, {"status": "confirmed"}) is True
    assert (await store.get_document("bookings", doc_id))["status"] == "confirmed"
    assert await store.update_document("bookings", "missing", {"status": "x"}) is False
    assert await store.delete_document("bookings", "b-1") is True
    assert await store.get_document("bookings", "b-1") is None
    assert await store.delete_document("bookings", "b-1") is False


async def test_a_stream_from_now_sees_later_writes_in_order(store):
    stream = await store.watch(["bookings", "payments"], None)
    try:
        booking = await store.insert_document("bookings", {"status": "pending", "shopId": "s1"})
        await store.insert_document("reviews", {"stars": 5})  # not watched
        await store.update_document("bookings", booking, {"status": "confirmed"})
        payment = await store.insert_document("payments", {"bookingId": booking, "amount": 5})
        await store.delete_document("bookings", booking)

        inserted = await next_change(stream)
        assert (inserted.operation, inserted.collection) == ("insert", "bookings")
        assert str(inserted.document_id) == booking
        assert inserted.document["status"] == "pending" and inserted.wall_time is not None
        updated = await next_change(stream)
        assert updated.operation == "update"
        assert updated.updated_fields == {"status": "confirmed"}
        assert updated.document["status"] == "confirmed"
        if keeps_pre_images(store):
            assert updated.before["status"] == "pending"
        else:  # the weaker guarantee without pre-images: no previous status
            assert updated.before is None
        paid = await next_change(stream)
        assert (paid.collection, str(paid.document_id)) == ("payments", payment)
        deleted = await next_change(stream)
        assert deleted.operation == "delete" and str(deleted.document_id) == booking
        assert deleted.document is None
        if keeps_pre_images(store):
            assert deleted.before["shopId"] == "s1"
    finally:
        await stream.close()


async def test_a_stream_resumes_after_its_token(store):
    stream = await store.watch(["bookings"], None)
    first = await store.insert_document("bookings", {"n": 1})
    assert str((await next_change(stream)).document_id) == first
    token = stream.resume_token
    await stream.close()
    second = await store.insert_document("bookings", {"n": 2})
    third = await store.insert_document("bookings", {"n": 3})
    resumed = await store.watch(["bookings"], token)
    try:
        assert str((await next_change(resumed)).document_id) == second
        assert str((await next_change(resumed)).document_id) == third
    finally:
        await resumed.close()


async def test_an_idle_stream_token_moves_past_other_collections(store):
    stream = await store.watch(["bookings"], None)
    try:
        start = stream.resume_token
        await store.insert_document("reviews", {"stars": 4})
        await store.insert_document("reviews", {"stars": 5})

        async def advanced():
            while stream.resume_token == start:
                assert await stream.try_next() is None
            return stream.resume_token

        moved = await asyncio.wait_for(advanced(), WAIT_S)
        assert moved != start
    finally:
        await stream.close()


async def test_an_unusable_token_is_history_lost(store):
    bogus = {"_data": "00" * 40} if isinstance(store, MongoStore) else {"_data": "ffffffffffffffff"}
    with pytest.raises(ChangeHistoryLost):
        stream = await store.watch(["bookings"], bogus)
        await stream.try_next()
    with pytest.raises(ChangeHistoryLost):
        stream = await store.watch(["bookings"], {"_data": "not hex"})
        await stream.try_next()
    # empty, not a string, type bits of the wrong type (40649, 40647, 40648 on MongoDB)
    for corrupt in ({"_data": ""}, {"_data": 7}, {"_data": "8200", "_typeBits": "x"}):
        with pytest.raises(ChangeHistoryLost):
            stream = await store.watch(["bookings"], corrupt)
            await stream.try_next()


async def test_resume_tokens_are_kept_by_name(store):
    assert await store.load_resume_token("feed") is None
    await store.save_resume_token("feed", {"_data": "0000000000000007"})
    await store.save_resume_token("other", {"_data": "0000000000000009"})
    assert await store.load_resume_token("feed") == {"_data": "0000000000000007"}
    await store.save_resume_token("feed", None)
    assert await store.load_resume_token("feed") is None
    assert await store.load_resume_token("other") == {"_data": "0000000000000009"}


async def test_the_event_log_orders_and_deduplicates(store):
    first = await store.append_events(
        [
            NewEvent(
                "reservation_update", {"n": 1}, ("user-c1", "admin-reservations"), "change:a:0"
            ),
            NewEvent("availability_update", {"n": 2}, ("availability-s1",), "change:a:1"),
        ]
    )
    again = await store.append_events(
        [
            NewEvent("reservation_update", {"n": 1}, ("user-c1",), "change:a:0"),
            NewEvent("notification", {"n": 3}, ("user-c1",), "broadcast:k1"),
        ]
    )
    assert again[0] is None
    sequences = [first[0].sequence, first[1].sequence, again[1].sequence]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    assert first[0].rooms == ("user-c1", "admin-reservations")
    assert first[0].payload == {"n": 1} and first[0].timestamp_ms > 0


async def test_a_logged_event_is_found_by_its_source(store):
    [stored] = await store.append_events(
        [NewEvent("notification", {"title": "hi"}, ("user-c1",), "broadcast:key-1")]
    )
    assert await store.find_event("broadcast:key-1") == stored
    assert await store.find_event("broadcast:other") is None


async def test_an_idempotency_key_is_claimed_once_for_its_time(store):
    first = await store.claim_request("k1", "hash-a", ttl_s=60)
    assert first.fingerprint == "hash-a" and first.response is None and first.nonce
    assert await store.claim_request("k1", "hash-b", ttl_s=60) == first  # the live record
    await store.complete_request("k1", first.nonce, {"eventId": "0000000000000001"})
    answered = await store.claim_request("k1", "hash-a", ttl_s=60)
    assert (answered.fingerprint, answered.response) == ("hash-a", {"eventId": "0000000000000001"})

    # concurrent first claims of one key get one record
    claims = await asyncio.gather(*(store.claim_request("k2", f"h{n}", 60) for n in range(5)))
    assert len({(claim.fingerprint, claim.nonce) for claim in claims}) == 1

    # past its time, a key is claimed anew: another nonce, no answer; the old claim's late
    # answer does not become the new one's
    expired = await store.claim_request("k3", "h", ttl_s=-1)
    renewed = await store.claim_request("k3", "h", ttl_s=60)
    assert renewed.nonce != expired.nonce and renewed.response is None
    await store.complete_request("k3", expired.nonce, {"eventId": "old"})
    assert (await store.claim_request("k3", "h", ttl_s=60)).response is None


async def test_the_embedded_store_forgets_what_is_older_than_its_retention(tmp_path):
    store = SqliteStore(str(tmp_path / "retention.db"), poll_ms=10, retention_s=-1)  # all old
    await store.open()
    try:
        stream = await store.watch(["bookings"], None)
        token = stream.resume_token
        await store.insert_document("bookings", {"n": 1})
        await store.insert_document("bookings", {"n": 2})
        await store.append_events([NewEvent("notification", {}, ("user-u",), "s1")])
        await store.prune()
        assert await store.find_event("s1") is None
        bounds = await store.event_bounds("user-u")
        assert bounds.oldest is None and bounds.newest == 1  # the ids given are not forgotten
        with pytest.raises(ChangeHistoryLost):  # the change after `token` is gone
            await store.watch(["bookings"], token)
        fresh = await store.watch(["bookings"], None)  # from now still works
        await store.insert_document("bookings", {"n": 3})
        assert (await next_change(fresh)).document["n"] == 3
    finally:
        await store.close()


async def test_the_embedded_store_prunes_in_its_upkeep_while_it_runs(tmp_path):
    store = SqliteStore(str(tmp_path / "upkeep.db"), retention_s=-1, prune_interval_s=0.05)
    await store.open()
    try:
        await store.start_maintenance()
        await store.append_events([NewEvent("notification", {}, ("user-u",), "old")])

        async def pruned() -> None:
            while await store.find_event("old") is not None:
                pass  # each look is a round trip to the store's thread

        await asyncio.wait_for(pruned(), WAIT_S)
    finally:
        await store.close()


async def test_a_checkpoint_is_saved_with_the_events(store):
    token = {"_data": "00000000000000aa"}
    await store.append_events(
        [NewEvent("notification", {}, ("user-u",), "change:aa:0")], Checkpoint("feed", token)
    )
    assert await store.load_resume_token("feed") == token


async def test_events_are_read_back_by_room_in_order(store):
    logged = await store.append_events(
        [
            NewEvent("reservation_update", {"n": n}, ("user-c1", f"shop-s{n % 2}"), f"change:r:{n}")
            for n in range(5)
        ]
    )
    sequences = [e.sequence for e in logged]
    shop0 = await store.room_events("shop-s0", sequences[0] - 1, 10)
    assert [e.payload["n"] for e in shop0] == [0, 2, 4]
    assert [e.payload["n"] for e in await store.room_events("user-c1", sequences[1], 2)] == [2, 3]
    assert await store.room_events("user-nobody", 0, 10) == []
    bounds = await store.event_bounds("shop-s1")
    assert (bounds.oldest, bounds.newest, bounds.room_newest) == (
        sequences[0],
        sequences[4],
        sequences[3],
    )
    assert (await store.event_bounds("user-nobody")).room_newest is None


async def test_the_newest_event_of_a_name_in_a_room_is_found(store):
    """How a replay learns whom a reservation concerned before its cursor."""
    room = "reservation-r1"
    names = ["reservation_update", "payment_update", "reservation_update", "notification"]
    logged = await store.append_events(
        [
            NewEvent(name, {"n": n}, (room, "admin-general"), f"newest:{n}")
            for n, name in enumerate(names)
        ]
    )
    sequences = [e.sequence for e in logged]
    newest = await store.newest_room_event(room, "reservation_update")
    assert newest is not None and (newest.sequence, newest.payload) == (sequences[2], {"n": 2})
    earlier = await store.newest_room_event(room, "reservation_update", until=sequences[1])
    assert earlier is not None and earlier.sequence == sequences[0]
    assert await store.newest_room_event(room, "reservation_update", sequences[0] - 1) is None
    assert await store.newest_room_event("reservation-r2", "reservation_update") is None
    assert (await store.newest_room_event(room, "notification")).sequence == sequences[3]


async def test_room_events_can_be_read_in_slices_bounded_in_bytes(store):
    big = "x" * 1000
    logged = await store.append_events(
        [NewEvent("notification", {"pad": big}, ("user-c1",), f"b:{n}") for n in range(5)]
    )
    start = logged[0].sequence - 1
    assert len(await store.room_events("user-c1", start, 10, max_bytes=2500)) == 3
    assert len(await store.room_events("user-c1", start, 10, max_bytes=1)) == 1  # one at least
    assert len(await store.room_events("user-c1", start, 2, max_bytes=10**6)) == 2
    assert len(await store.room_events("user-c1", start, 10)) == 5


async def test_ids_taken_by_two_writers_become_visible_in_order(stores):
    # two gateways (or a broadcast beside the watcher) appending at once: a replay that has
    # read id n must never find an id below n later, or it would skip it for good
    writers = [await stores(), await stores()]
    reader = writers[0]
    per_writer, room = 30, "user-race"

    async def append(writer, tag: str) -> None:
        for n in range(per_writer):
            await writer.append_events([NewEvent("notification", {"n": n}, (room,), f"{tag}:{n}")])

    appending = asyncio.gather(
        *(append(writer, f"w{i}") for i, writer in enumerate(writers)),
        *(append(writer, f"x{i}") for i, writer in enumerate(writers)),
    )
    seen: list[int] = []
    while True:
        done = appending.done()
        found = [e.sequence for e in await reader.room_events(room, 0, 10_000)]
        assert found == sorted(found)
        assert found[: len(seen)] == seen  # nothing appeared below what was already read
        seen = found
        if done:
            break
        await asyncio.sleep(0)  # let the writers on (the reads themselves yield too)
    await appending
    assert len(seen) == len(set(seen)) == 4 * per_writer


async def rewind_counter(store) -> None:
    """Put the id counter back to 0, as a restore of the log without its counter would."""
    if isinstance(store, MongoStore):
        await store.state["realtime_counters"].update_one({"_id": "events"}, {"$set": {"seq": 0}})
    else:
        await store._run(
            lambda db: db.execute("UPDATE sqlite_sequence SET seq = 0 WHERE name = 'events'")
        )


async def test_a_counter_behind_the_log_never_reads_as_already_logged(stores):
    store = await stores()
    [first] = await store.append_events([NewEvent("notification", {}, ("user-u",), "s1")])
    await rewind_counter(store)
    token = {"_data": "00000000000000bb"}
    try:
        [second] = await store.append_events(
            [NewEvent("notification", {}, ("user-u",), "s2")], Checkpoint("feed", token)
        )
    except StoreError:  # refused whole: nothing logged, no token saved with it
        assert await store.find_event("s2") is None
        assert await store.load_resume_token("feed") is None
    else:  # or given a fresh id; never "already logged", never an id taken
        assert second is not None and second.sequence > first.sequence
    restarted = await stores()  # a restart puts the counter past the log
    [third] = await restarted.append_events([NewEvent("notification", {}, ("user-u",), "s3")])
    assert third.sequence > first.sequence


async def test_documents_are_found_by_any_form_of_their_id(store):
    generated = await store.insert_document("bookings", {"status": "pending"})
    assert (await store.get_document("bookings", generated.upper()))["status"] == "pending"
    assert await store.update_document("bookings", generated.upper(), {"status": "x"})
    assert await store.insert_document("bookings", {"_id": 42, "status": "n"}) == "42"
    assert (await store.get_document("bookings", "42"))["status"] == "n"
    assert await store.delete_document("bookings", "42")
    uid = uuid.uuid4()
    assert await store.insert_document("bookings", {"_id": uid, "status": "u"}) == str(uid)
    assert (await store.get_document("bookings", str(uid)))["status"] == "u"


async def test_mongodb_ids_of_every_type_are_found_by_their_string(mongo_store):
    oid, uid = ObjectId(), uuid.uuid4()
    for doc_id in (oid, 7, 8.0, uid, "plain"):
        await mongo_store.db["bookings"].insert_one({"_id": doc_id, "shopId": "s1"})
    for text in (str(oid), str(oid).upper(), "7", "8", str(uid), str(uid).upper(), "plain"):
        assert await mongo_store.get_document("bookings", text) is not None, text


async def test_mongodb_keeps_the_gateway_state_out_of_the_watched_database(mongo_store):
    await mongo_store.append_events(
        [NewEvent("notification", {}, ("user-u",), "s")], Checkpoint("feed", {"_data": "01"})
    )
    await mongo_store.claim_request("k", "f", 60)
    await mongo_store.insert_document("bookings", {"status": "pending"})
    watched = set(await mongo_store.db.list_collection_names())
    state = set(await mongo_store.state.list_collection_names())
    assert not any(name.startswith("realtime_") for name in watched)
    assert {"realtime_events", "realtime_counters", "realtime_resume_tokens"} <= state
    assert mongo_store.state.name == f"{mongo_store.db.name}_realtime"


async def test_mongodb_applies_a_changed_retention_to_its_ttl_index(stores):
    first = await stores(retention_s=3600)
    if not isinstance(first, MongoStore):
        pytest.skip("MongoDB only: the embedded store prunes by its setting, it has no index")
    await stores(retention_s=7200)  # createIndex alone would fail here (IndexOptionsConflict)
    indexes = await first.state["realtime_events"].index_information()
    assert indexes["created_1"]["expireAfterSeconds"] == 7200


async def test_mongodb_refuses_values_bson_cannot_hold_as_a_store_error(mongo_store):
    for document in ({"n": 2**70}, {"bad\x00key": 1}, {"text": "\ud800"}):
        with pytest.raises(StoreError):
            await mongo_store.insert_document("bookings", document)


async def test_mongodb_reads_a_dropped_or_renamed_collection_as_its_own_change(mongo_store):
    await mongo_store.insert_document("payments", {"amount": 1})
    await mongo_store.insert_document("bookings", {"status": "pending"})
    stream = await mongo_store.watch(["bookings", "payments"], None)
    try:
        await mongo_store.db.drop_collection("payments")
        await mongo_store.db["bookings"].rename("bookings_archive")
        await mongo_store.db["staging"].insert_one({"n": 1})
        await mongo_store.db["staging"].rename("bookings")
        dropped = await next_change(stream)
        assert (dropped.operation, dropped.collection) == ("drop", "payments")
        away = await next_change(stream)
        assert (away.operation, away.collection, away.renamed_to) == (
            "rename",
            "bookings",
            "bookings_archive",
        )
        onto = await next_change(stream)
        assert (onto.operation, onto.renamed_to) == ("rename", "bookings")
        await mongo_store.insert_document("payments", {"amount": 2})  # the stream goes on
        assert (await next_change(stream)).operation == "insert"
    finally:
        await stream.close()


async def test_a_lease_has_one_holder_at_a_time_and_a_new_fence_for_each(store):
    assert await store.read_lease("watcher") is None
    first = await store.acquire_lease("watcher", "a", ttl_s=30)
    assert (first.holder, first.fence) == ("a", 1)
    assert first.expires_ms > store.now_ms()
    refused = await store.acquire_lease("watcher", "b", ttl_s=30)
    assert refused == await store.read_lease("watcher")  # still a's, as it stands
    assert (refused.holder, refused.fence) == ("a", 1)
    renewed = await store.acquire_lease("watcher", "a", ttl_s=60)
    assert (renewed.holder, renewed.fence, renewed.since_ms) == ("a", 1, first.since_ms)
    assert renewed.expires_ms > first.expires_ms  # a renewal moves the expiry, not the fence

    await store.acquire_lease("other", "b", ttl_s=30)  # leases are kept by name
    await store.release_lease("watcher", "b")  # not b's to release: nothing happens
    assert (await store.read_lease("watcher")).holder == "a"
    await store.release_lease("watcher", "a")
    taken = await store.acquire_lease("watcher", "b", ttl_s=30)
    assert (taken.holder, taken.fence) == ("b", 2)


async def test_an_expired_lease_is_taken_over_with_the_next_fence(store):
    await store.acquire_lease("watcher", "a", ttl_s=0.05)

    async def taken_over():
        while True:
            lease = await store.acquire_lease("watcher", "b", ttl_s=30)
            if lease.holder == "b":
                return lease
            await asyncio.sleep(0.01)  # the lease expires with time: asked again a little later

    lease = await asyncio.wait_for(taken_over(), WAIT_S)
    assert lease.fence == 2
    back = await store.acquire_lease("watcher", "a", ttl_s=30)
    assert back.holder == "b"  # a's old lease is gone for good


async def test_writes_with_a_fence_that_no_longer_holds_are_refused_whole(store):
    old = await store.acquire_lease("watcher", "a", ttl_s=30)
    fence = Fence("watcher", old.fence)
    await store.append_events(
        [NewEvent("notification", {}, ("user-u",), "fenced:1")],
        Checkpoint("feed", {"_data": "01"}, fence),
    )
    await store.release_lease("watcher", "a")
    await store.acquire_lease("watcher", "b", ttl_s=30)  # b took over: fence 2
    with pytest.raises(LeaseLost):
        await store.append_events(
            [NewEvent("notification", {}, ("user-u",), "fenced:2")],
            Checkpoint("feed", {"_data": "02"}, fence),
        )
    with pytest.raises(LeaseLost):
        await store.save_resume_token("feed", {"_data": "03"}, fence)
    assert await store.find_event("fenced:1") is not None
    assert await store.find_event("fenced:2") is None  # nothing of the refused append
    assert await store.load_resume_token("feed") == {"_data": "01"}


async def test_the_whole_log_is_read_in_order_past_any_id(store):
    logged = await store.append_events(
        [NewEvent("notification", {"n": n}, (f"user-{n}",), f"all:{n}") for n in range(4)]
    )
    sequences = [e.sequence for e in logged]
    after = await store.events_after(sequences[0], 10)
    assert [e.sequence for e in after] == sequences[1:]
    assert [e.payload["n"] for e in after] == [1, 2, 3] and after[0].rooms == ("user-1",)
    assert [e.sequence for e in await store.events_after(sequences[0] - 1, 2)] == sequences[:2]
    assert await store.events_after(sequences[-1], 10) == []


async def test_room_reads_stop_at_an_upper_id(store):
    logged = await store.append_events(
        [NewEvent("notification", {"n": n}, ("user-c1",), f"until:{n}") for n in range(4)]
    )
    sequences = [e.sequence for e in logged]
    upto = await store.room_events("user-c1", sequences[0] - 1, 10, until=sequences[2])
    assert [e.sequence for e in upto] == sequences[:3]
    bounds = await store.event_bounds("user-c1", until=sequences[1])
    assert (bounds.room_newest, bounds.newest) == (sequences[1], sequences[3])


async def test_an_event_log_keeps_one_name_for_every_instance_and_only_one(stores, tmp_path):
    first, second = await stores(), await stores()
    name = await first.log_identity()
    assert name and await second.log_identity() == name == await first.log_identity()
    if isinstance(first, SqliteStore):
        other = SqliteStore(str(tmp_path / "another.db"))
        await other.open()
        try:
            assert await other.log_identity() != name  # another log, another name
        finally:
            await other.close()


async def test_a_lease_held_by_a_holder_known_dead_is_taken_at_once(store):
    await store.acquire_lease("watcher", "host:41:a", ttl_s=300)
    assert (await store.acquire_lease("watcher", "host:42:b", ttl_s=30)).holder == "host:41:a"
    wrong = await store.acquire_lease("watcher", "host:42:b", ttl_s=30, replacing="host:40:z")
    assert wrong.holder == "host:41:a"  # only the holder named dead is replaced
    taken = await store.acquire_lease("watcher", "host:42:b", ttl_s=30, replacing="host:41:a")
    assert (taken.holder, taken.fence) == ("host:42:b", 2)


async def test_revocations_are_kept_until_their_time_and_across_a_restart(stores):
    store = await stores()
    now_ms = int(time.time() * 1000)
    await store.revoke(Revocation("jti", "t1", now_ms + 60_000))
    await store.revoke(Revocation("sub", "u1", now_ms + 60_000))
    await store.revoke(Revocation("sub", "t1", now_ms + 30_000))  # another kind: another one
    await store.revoke(Revocation("sub", "gone", now_ms - 1))  # already passed: not kept
    assert sorted(await store.revocations(), key=str) == sorted(
        [
            Revocation("jti", "t1", now_ms + 60_000),
            Revocation("sub", "u1", now_ms + 60_000),
            Revocation("sub", "t1", now_ms + 30_000),
        ],
        key=str,
    )
    # a revocation of the same kind and value replaces the one kept: a later time extends it,
    # an earlier one shortens it, a passed one lifts it
    await store.revoke(Revocation("jti", "t1", now_ms + 120_000))
    await store.revoke(Revocation("sub", "t1", now_ms + 10_000))
    await store.revoke(Revocation("sub", "u1", now_ms - 1))
    expected = sorted(
        [Revocation("jti", "t1", now_ms + 120_000), Revocation("sub", "t1", now_ms + 10_000)],
        key=str,
    )
    assert sorted(await store.revocations(), key=str) == expected
    again = await stores()  # another instance, or this one restarted, on the same data
    assert sorted(await again.revocations(), key=str) == expected


async def test_mongodb_reads_past_a_change_it_cannot_decode(mongo_store):
    stream = await mongo_store.watch(["bookings"], None)
    try:
        year_zero = DatetimeMS(-62_200_000_000_000)  # beyond Python's years 1 to 9999
        await mongo_store.db["bookings"].insert_one({"_id": "dated", "startsAt": year_zero})
        dated = await next_change(stream)
        assert dated.document["startsAt"] == year_zero
        # text that is not UTF-8, as a writer in another language can store it
        data = bson.encode({"_id": "garbled", "note": "MARK"}).replace(b"MARK", b"\xff\xfe\xfd\xfc")
        try:
            await mongo_store.db["bookings"].insert_one(RawBSONDocument(data))
        except OperationFailure:  # this server keeps such text out: nothing to read past
            garbled = None
        else:
            garbled = await next_change(stream)
            assert garbled.operation == UNREADABLE and garbled.collection == "bookings"
        after = await mongo_store.insert_document("bookings", {"status": "pending"})
        assert str((await next_change(stream)).document_id) == after  # the stream goes on
    finally:
        await stream.close()
    if garbled is not None:  # and a stream resumed from it starts after it
        resumed = await mongo_store.watch(["bookings"], garbled.token)
        try:
            assert str((await next_change(resumed)).document_id) == after
        finally:
            await resumed.close()


async def test_mongodb_reads_past_a_change_over_16_mb(mongo_store):
    nine_mb = 9 * 1024 * 1024
    await mongo_store.db["bookings"].insert_one({"_id": "big", "pad": "a" * nine_mb})
    stream = await mongo_store.watch(["bookings"], None)
    try:
        # with both images, or the looked-up document, and the updated field: over 16 MB
        await mongo_store.db["bookings"].update_one(
            {"_id": "big"}, {"$set": {"pad": "b" * nine_mb}}
        )
        after = await mongo_store.insert_document("bookings", {"status": "pending"})
        big = await next_change(stream)
        if mongo_store.split_events:  # split by the server (6.0.9, 7.0), joined again
            assert (big.operation, big.document_id) == ("update", "big")
            assert big.document["pad"][:1] == "b" and len(big.document["pad"]) == nine_mb
        else:  # refused by the server: skipped after the token its error names
            assert big.operation == UNREADABLE
        assert str((await next_change(stream)).document_id) == after
    finally:
        await stream.close()


async def test_mongodb_keeps_its_state_on_the_primary_whatever_the_url_reads_from(mongo_store):
    url = os.environ["MONGODB_URL"]
    secondary = url + ("&" if "?" in url else "?") + "readPreference=secondaryPreferred"
    store = MongoStore(secondary, mongo_store.db.name)
    await store.open()
    try:
        token = {"_data": "00000000000000cc"}
        [stored] = await store.append_events(
            [NewEvent("notification", {}, ("user-u",), "primary:1")], Checkpoint("feed", token)
        )
        # read back at once: what this instance delivered is there to replay
        assert await store.find_event("primary:1") == stored
        assert await store.load_resume_token("feed") == token
        assert [e.sequence for e in await store.room_events("user-u", 0, 10)] == [stored.sequence]
    finally:
        await store.close()


async def test_mongodb_rounds_a_fractional_retention_up_to_whole_seconds(stores):
    store = await stores(retention_s=1.5)
    if not isinstance(store, MongoStore):
        pytest.skip("MongoDB only: the embedded store prunes by milliseconds, it has no index")
    indexes = await store.state["realtime_events"].index_information()
    assert indexes["created_1"]["expireAfterSeconds"] == 2


async def test_an_idle_embedded_stream_reads_only_after_a_commit(tmp_path):
    """The embedded store's stream polls every few ms while idle; it reads the log off the
    loop only when something was committed since its last read, by any connection."""
    path = str(tmp_path / "idle.db")
    store, writer = SqliteStore(path, poll_ms=1), SqliteStore(path)
    await store.open()
    await writer.open()
    stream = await store.watch(["bookings"], None)
    reads = 0
    read_changes = stream._read_changes

    async def counted(after: int, limit: int):
        nonlocal reads
        reads += 1
        return await read_changes(after, limit)

    stream._read_changes = counted
    try:
        for _ in range(50):
            assert await stream.try_next() is None
        assert reads <= 1  # (the first look)
        await writer.insert_document("bookings", {"shopId": "s1"})  # another connection's
        change = await asyncio.wait_for(stream.try_next(), WAIT_S)
        assert change is not None and change["operationType"] == "insert"
        assert reads == 2
    finally:
        await stream.close()
        await store.close()
        await writer.close()


async def test_an_in_memory_embedded_store_streams_what_is_written_after_it_idles():
    """`:memory:` is one database per connection: the stream cannot ask another connection
    whether something was committed, so it reads on every poll, as before."""
    store = SqliteStore(":memory:", poll_ms=1)
    await store.open()
    stream = await store.watch(["bookings"], None)
    try:
        for _ in range(5):
            assert await stream.try_next() is None
        await store.insert_document("bookings", {"shopId": "s1"})
        change = await asyncio.wait_for(stream.try_next(), WAIT_S)
        assert change is not None and change["operationType"] == "insert"
    finally:
        await stream.close()
        await store.close()
