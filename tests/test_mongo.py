"""The MongoDB adapter at its boundary with the driver, without a MongoDB server (none can be
installed here; the store contract in test_store_contract.py runs against a real replica set
when MONGODB_URL is set): PyMongo's real exception classes and error codes, and the real
driver failing to reach a server, come out as the store's own errors."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout, OperationFailure

from storage.base import ChangeHistoryLost, Checkpoint, NewEvent, Store, StoreError
from storage.mongo import MongoChangeStream, MongoStore, translate_error


@pytest.mark.parametrize(
    "error, lost",
    [
        (OperationFailure("history lost", code=286), True),
        (OperationFailure("invalid resume token", code=260), True),
        (OperationFailure("fatal", code=280), True),
        (OperationFailure("interrupted at shutdown", code=11600), False),
        (ConnectionFailure("no route"), False),
        (NetworkTimeout("timed out"), False),
        (AutoReconnect("not primary"), False),
    ],
)
def test_pymongo_errors_are_read_as_lost_history_or_transient(error, lost):
    translated = translate_error(error)
    assert isinstance(translated, StoreError)
    assert isinstance(translated, ChangeHistoryLost) is lost


async def test_the_mongodb_stream_translates_what_pymongo_raises():
    class PyMongoStream:  # stands in for pymongo's AsyncChangeStream: only what we call
        resume_token = {"_data": "82"}

        async def try_next(self):
            raise OperationFailure("resume point gone", code=286)

    stream = MongoChangeStream(PyMongoStream())
    assert stream.resume_token == {"_data": "82"}
    with pytest.raises(ChangeHistoryLost):
        await stream.try_next()


async def test_without_a_reachable_server_every_call_is_a_store_error_not_a_driver_error(free_port):
    # (does not run MongoDB: the real driver, pointed at a port where nothing listens)
    store = MongoStore(
        f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=100", "realtime_unreachable"
    )
    try:
        calls = {
            "open": lambda: store.open(),
            "ping": lambda: store.ping(),
            "get_document": lambda: store.get_document("bookings", "b1"),
            "insert_document": lambda: store.insert_document("bookings", {"status": "pending"}),
            "update_document": lambda: store.update_document("bookings", "b1", {"x": 1}),
            "delete_document": lambda: store.delete_document("bookings", "b1"),
            "watch": lambda: store.watch(["bookings"], None),
            "load_resume_token": lambda: store.load_resume_token("changes"),
            "save_resume_token": lambda: store.save_resume_token("changes", {"_data": "82"}),
            "append_events": lambda: store.append_events(
                [NewEvent("notification", {}, ("user-c1",), "broadcast:k")],
                Checkpoint("changes", {"_data": "82"}),
            ),
            "find_event": lambda: store.find_event("broadcast:k"),
            "room_events": lambda: store.room_events("user-c1", 0, 10),
            "event_bounds": lambda: store.event_bounds("user-c1"),
            "claim_request": lambda: store.claim_request("k", "fingerprint", 60),
            "complete_request": lambda: store.complete_request("k", "nonce", {}),
        }
        assert set(calls) >= Store.__abstractmethods__ - {"describe"}  # every one of them
        for name, call in calls.items():
            with pytest.raises(StoreError):
                await call()
                pytest.fail(f"{name} did not raise")
    finally:
        await store.close()
