"""The MongoDB adapter at its boundary with the driver, without a MongoDB server (none can be
installed here; the store contract in test_store_contract.py runs against a real replica set
when MONGODB_URL is set): PyMongo's real exception classes and error codes, and the real
driver failing to reach a server, come out as the store's own errors."""

from __future__ import annotations

import configparser
import inspect
import logging
import os
import re
import uuid

import pymongo
import pytest
from bson import ObjectId
from bson.binary import Binary
from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient, ReadPreference
from pymongo import client_session_shared as driver_sessions
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
)

from realtime.errors import answer_for
from realtime.wire import id_string
from storage.base import (
    ChangeHistoryLost,
    Checkpoint,
    DocumentRejected,
    NewEvent,
    Revocation,
    Store,
    StoreError,
)
from storage.mongo import (
    EVENTS,
    MongoChangeStream,
    MongoStore,
    _index_of,
    id_filter,
    translate_error,
)


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
        f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=100",
        "realtime_unreachable",
        transaction_timeout_s=1,
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
            "newest_room_event": lambda: store.newest_room_event("user-c1", "notification"),
            "events_after": lambda: store.events_after(0, 10),
            "log_identity": lambda: store.log_identity(),
            "acquire_lease": lambda: store.acquire_lease("watcher", "me", 10),
            "release_lease": lambda: store.release_lease("watcher", "me"),
            "read_lease": lambda: store.read_lease("watcher"),
            "revoke": lambda: store.revoke(Revocation("jti", "t", 2**40)),
            "revocations": lambda: store.revocations(),
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


# -- what the adapter decides from the driver's real exceptions (none of these run MongoDB) --


# what the server raises while it reads a client's token (resume_token.cpp, key_string.cpp)
UNREADABLE_TOKEN_ERRORS = [
    OperationFailure("Failed to parse resume token", code=9),  # FailedToParse
    OperationFailure("KeyString format error: Unknown type: 123", code=50811),
    OperationFailure("BadValue", code=2),
    OperationFailure("uuid must be a 16-byte binary field with UUID (4) subtype", code=207),
    OperationFailure("invalid oversized resume token", code=40646),
    OperationFailure("Bad resume token: _data of missing or of wrong type", code=40647),
    OperationFailure("Bad resume token: _typeBits of wrong type", code=40648),
    OperationFailure("invalid empty resume token", code=40649),
    OperationFailure("Resume Token does not contain txnOpIndex", code=50793),
    OperationFailure("Invalid Resume Token: txnOpIndex should be non-negative", code=50794),
    OperationFailure("Invalid Resume Token: only supports version 0, 1 and 2", code=50795),
    OperationFailure("Resume Token does not contain version", code=50796),
    OperationFailure("Invalid resume token: wrong type for version", code=50854),
    OperationFailure("Resume Token txnOpIndex is not an integer", code=50855),
    OperationFailure("Resume Token fromInvalidate is not a boolean.", code=50870),
    OperationFailure("Resume Token does not contain fromInvalidate", code=50872),
    OperationFailure("Resume Token does not contain tokenType", code=51055),
    OperationFailure("Resume Token tokenType is not an int.", code=51056),
    OperationFailure("Token type 7 not recognized", code=51057),
    OperationFailure("Expected UUID or null", code=6189500),
    OperationFailure("Expected an eventIdentifier for an event resume token", code=6189501),
    OperationFailure("Resume Token eventIdentifier is not an object", code=6189503),
    OperationFailure("Invalid high water mark token", code=6189504),
    OperationFailure("Resume token 'fragmentNum' must be a non-negative integer.", code=7182501),
    # a KeyString check this list does not name: read by the message every one of them has
    OperationFailure("KeyString format error: Failed to find null terminator", code=50816),
    OperationFailure("KeyString format error: Invalid type bits for decimal", code=99999),
]


@pytest.mark.parametrize("error", UNREADABLE_TOKEN_ERRORS, ids=lambda e: str(e.code))
async def test_without_mongodb_a_token_the_server_cannot_parse_is_history_lost(error):
    store = StandInStore(watch_error=error)
    with pytest.raises(ChangeHistoryLost):
        await store.watch(["bookings"], {"_data": "foreign"})
    with pytest.raises(StoreError) as raised:  # from now, the same failure is not about a token
        await store.watch(["bookings"], None)
    assert not isinstance(raised.value, ChangeHistoryLost)


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("not primary", code=10107),
        OperationFailure("interrupted at shutdown", code=11600),
        OperationFailure("not authorized", code=13),
        OperationFailure("labelled", code=1, details={"errorLabels": ["RetryableError"]}),
        OperationFailure("operation exceeded time limit", code=50),
        OperationFailure("interrupted", code=11601),
        OperationFailure("stale config", code=13388),
        # raised when the server builds a token, not when it reads the client's
        OperationFailure("Expected an eventIdentifier for an event resume token", code=6189502),
        OperationFailure("Invalid high water mark token", code=6189505),
        OperationFailure("Unexpected resume token with a eventIdentifier but no UUID", code=50788),
        OperationFailure("Tokens of version 1 cannot have a fragmentNum", code=7182504),
        AutoReconnect("connection reset"),
    ],
)
async def test_without_mongodb_a_transient_failure_to_open_keeps_the_token(error):
    store = StandInStore(watch_error=error)
    with pytest.raises(StoreError) as raised:
        await store.watch(["bookings"], {"_data": "8265"})
    assert not isinstance(raised.value, ChangeHistoryLost)


async def test_without_mongodb_a_changed_retention_is_applied_with_collmod():
    conflict = OperationFailure("IndexOptionsConflict: expireAfterSeconds differs", code=85)
    store = StandInStore(create_index_error=conflict)
    await store._ensure_ttl(EVENTS, "created", 3600)
    assert store.commands == [
        ("collMod", EVENTS, {"index": {"keyPattern": {"created": 1}, "expireAfterSeconds": 3600}})
    ]
    other = StandInStore(create_index_error=OperationFailure("no space", code=14031))
    with pytest.raises(OperationFailure):
        await other._ensure_ttl(EVENTS, "created", 3600)
    assert other.commands == []


@pytest.mark.parametrize(
    "error, rejected",
    [
        (OverflowError("MongoDB can only handle up to 8-byte ints"), True),
        (InvalidDocument("Key names must not contain the NULL byte"), True),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
        (DuplicateKeyError("E11000", 11000), False),
    ],
)
def test_values_mongodb_cannot_hold_are_rejected_not_retried(error, rejected):
    translated = translate_error(error)
    assert isinstance(translated, StoreError)
    assert isinstance(translated, DocumentRejected) is rejected


def test_only_a_duplicate_source_reads_as_already_logged():
    on_source = DuplicateKeyError(
        "E11000 duplicate key error collection: x.realtime_events index: source_1",
        11000,
        {"keyPattern": {"source": 1}, "keyValue": {"source": "change:a:0"}},
    )
    on_id = DuplicateKeyError(
        "E11000 duplicate key error collection: x.realtime_events index: _id_",
        11000,
        {"keyPattern": {"_id": 1}, "keyValue": {"_id": 11}},
    )
    legacy = DuplicateKeyError("E11000", 11000, {"errmsg": "E11000 ... index: source_1 dup key"})
    assert _index_of(on_source) == {"source": 1}
    assert _index_of(on_id) == {"_id": 1}
    assert _index_of(legacy) == {"source": 1}
    # insert_many reports duplicates as a bulk write error (what append_events runs)
    bulk_on_id = BulkWriteError(
        {"writeErrors": [{"index": 0, "code": 11000, "keyPattern": {"_id": 1}}], "nInserted": 0}
    )
    bulk_on_source = BulkWriteError(
        {"writeErrors": [{"index": 1, "code": 11000, "keyPattern": {"source": 1}}]}
    )
    bulk_other = BulkWriteError({"writeErrors": [{"index": 0, "code": 121, "errmsg": "invalid"}]})
    assert _index_of(bulk_on_id) == {"_id": 1}
    assert _index_of(bulk_on_source) == {"source": 1}
    assert _index_of(bulk_other) is None


def test_ids_are_looked_up_in_every_form_mongodb_may_hold_them():
    oid = ObjectId()
    assert id_filter(str(oid).upper()) == {"_id": {"$in": [str(oid).upper(), oid]}}
    assert id_filter("42") == {"_id": {"$in": ["42", 42]}}
    assert id_filter("-7") == {"_id": {"$in": ["-7", -7]}}
    assert id_filter("9" * 20) == {"_id": "9" * 20}  # beyond 64 bits: only a string
    uid = uuid.uuid4()
    assert id_filter(str(uid)) == {"_id": {"$in": [str(uid), uid]}}
    assert id_filter("b-1") == {"_id": "b-1"}


def test_uuid_ids_travel_in_their_canonical_form():
    uid = uuid.uuid4()
    assert id_string(uid) == str(uid)
    assert id_string(Binary.from_uuid(uid)) == str(uid)  # read without a uuidRepresentation
    assert id_string(Binary(b"\x00" * 16, 0)) is None  # plain binary is no id


def test_the_state_database_is_never_the_watched_one():
    with pytest.raises(ValueError):
        MongoStore("mongodb://127.0.0.1/", "booking", state_database="booking")
    assert "booking_realtime" in MongoStore("mongodb://127.0.0.1/", "booking").describe()


class StandInStore(MongoStore):
    """A MongoStore whose databases are stand-ins raising the driver's real exceptions: only
    the calls these tests make (server 5.0, so no image check)."""

    def __init__(
        self,
        watch_error=None,
        create_index_error=None,
        command_error=None,
        create_collection_error=None,
    ):
        super().__init__("mongodb://127.0.0.1/", "booking")
        self.server_version = (5, 0)
        self.commands: list = []
        self.indexes: list = []  # (keys, options) of each index made
        self._watch_error = watch_error
        self._create_index_error = create_index_error
        self._command_error = command_error
        self._create_collection_error = create_collection_error

    @property
    def db(self):
        return self._stand_in()

    @property
    def state(self):
        return self._stand_in()

    def _stand_in(self):
        store = self

        class Collection:
            async def create_index(self, keys, **options):
                if store._create_index_error is not None:
                    raise store._create_index_error
                store.indexes.append((keys, options))

            async def find_one(self, *args, **kwargs):
                return None

            async def update_one(self, *args, **kwargs):
                pass

        class Database:
            def __getitem__(self, name):
                return Collection()

            async def create_collection(self, name):
                if store._create_collection_error is not None:
                    raise store._create_collection_error

            async def watch(self, pipeline, **options):
                raise store._watch_error

            async def command(self, name, value=None, **kwargs):
                store.commands.append((name, value, kwargs))
                if name == "collMod" and store._command_error is not None:
                    raise store._command_error
                if name == "buildInfo":
                    return {"versionArray": [*store.server_version, 0, 0]}
                return {"ok": 1}

        return Database()


def test_a_value_mongodb_cannot_hold_is_answered_as_the_callers_fault_not_an_outage():
    log = logging.getLogger("test")
    rejected = translate_error(OverflowError("MongoDB can only handle up to 8-byte ints"))
    answer = answer_for(rejected, "broadcast", log)
    assert (answer.code, answer.http_status) == ("invalid_payload", 400)  # retrying cannot help
    outage = answer_for(translate_error(AutoReconnect("gone")), "broadcast", log)
    assert (outage.code, outage.http_status) == ("unavailable", 503)


# -- the gateway's own state on the primary (finding 2) -------------------------------------


async def test_the_gateways_own_state_is_read_from_the_primary_whatever_the_url_says():
    url = "mongodb://127.0.0.1:1/?readPreference=secondaryPreferred&serverSelectionTimeoutMS=50"
    store = MongoStore(url, "booking")
    store._client = AsyncMongoClient(url)  # the driver's own, never connected
    try:
        assert store.db.read_preference == ReadPreference.SECONDARY_PREFERRED  # as the URL says
        assert store.state.read_preference == ReadPreference.PRIMARY
        assert store.state["realtime_events"].read_preference == ReadPreference.PRIMARY
        seen = []

        class Stop(Exception):
            pass

        async def callback(session):
            # what a `find` in the transaction is read with (driver, `_read_preference_for`)
            seen.append(store.state["realtime_events"]._read_preference_for(session))
            raise Stop

        with pytest.raises(Stop):
            await store._in_transaction(callback)
        assert seen == [ReadPreference.PRIMARY]
    finally:
        await store._client.close()


# -- access, retention (finding 5) ----------------------------------------------------------


async def test_a_changed_retention_without_the_role_for_collmod_fails_naming_the_role():
    conflict = OperationFailure("IndexOptionsConflict: expireAfterSeconds differs", code=85)
    refused = OperationFailure("not authorized on booking_realtime to execute command", code=13)
    store = StandInStore(create_index_error=conflict, command_error=refused)
    with pytest.raises(StoreError) as raised:
        await store._ensure_ttl(EVENTS, "created", 3600)
    message = str(raised.value)
    assert "dbAdmin" in message and "booking_realtime" in message
    assert 'collMod: "realtime_events"' in message and "expireAfterSeconds: 3600" in message


async def test_a_user_who_may_not_set_up_the_state_database_is_told_which_roles_it_needs():
    refused = OperationFailure("not authorized on booking_realtime", code=13)
    store = StandInStore(create_collection_error=refused)
    with pytest.raises(StoreError) as raised:
        await store.open()
    assert "readWrite on the state database" in str(raised.value)
    anywhere = translate_error(OperationFailure("not authorized on booking", code=13))
    assert "read on the watched database" in str(anywhere)


def test_a_store_refuses_a_retention_under_one_second():
    for seconds in (0, 0.5, -1):
        with pytest.raises(ValueError):
            MongoStore("mongodb://127.0.0.1/", "booking", event_retention_s=seconds)


async def test_a_fractional_retention_keeps_the_log_the_next_whole_second():
    store = StandInStore()
    store._event_retention_s = 1.5
    await store.open()
    assert ("created", {"expireAfterSeconds": 2}) in store.indexes


# -- the driver required (finding 6) --------------------------------------------------------


def test_the_pymongo_required_retries_transactions_with_backoff_within_pymongo_timeout():
    """PyMongo 4.17.0 is the first whose `with_transaction` waits (jittered, growing) between
    retries and stops at `pymongo.timeout`'s deadline; 4.16.0 retries at once and stops by its
    own 120 s limit alone (read from the released wheels)."""
    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(__file__), "..", "setup.cfg"))
    [pin] = re.findall(r"pymongo>=([0-9.]+)", setup["options"]["install_requires"])
    assert tuple(map(int, pin.split("."))) >= (4, 17)
    assert pymongo.version_tuple[:2] >= (4, 17)
    assert driver_sessions._BACKOFF_INITIAL > 0
    assert "_csot.remaining()" in inspect.getsource(driver_sessions._within_time_limit)
