"""The MongoDB adapter at its boundary with the driver, without a MongoDB server (none can be
installed here; the store contract in test_store_contract.py runs against a real replica set
when MONGODB_URL is set): PyMongo's real exception classes and error codes, and the real
driver failing to reach a server, come out as the store's own errors."""

from __future__ import annotations

import configparser
import datetime as dt
import inspect
import logging
import os
import re
import struct
import uuid

import bson
import pymongo
import pytest
from bson import Int64, ObjectId, Timestamp
from bson.binary import Binary
from bson.codec_options import DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient, ReadPreference
from pymongo import client_session_shared as driver_sessions
from pymongo.cursor_shared import _CURSOR_DOC_FIELDS
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
)
from pymongo.message import _OpMsg

from realtime.changes import feed
from realtime.errors import answer_for
from realtime.wire import id_string, json_safe, time_string
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
from storage.mongo.stream import SPLIT_LARGE_EVENTS_FROM, SPLIT_STAGE, UNREADABLE


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
    """A MongoStore whose databases are stand-ins: they raise the driver's real exceptions, and
    each change stream they open hands on one script of getMore replies as the driver decodes
    them (`DriverStream`). Its client is the real one the store makes, never connected, so the
    codec options are the store's own (server 5.0 unless told: no image check)."""

    def __init__(
        self,
        watch_error=None,
        create_index_error=None,
        command_error=None,
        create_collection_error=None,
        streams=(),
        server_version=(5, 0, 0),
    ):
        super().__init__("mongodb://127.0.0.1/", "booking")
        self._client = self._new_client()
        self.server_version = server_version
        self.split_events = server_version >= SPLIT_LARGE_EVENTS_FROM
        self.commands: list = []
        self.indexes: list = []  # (keys, options) of each index made
        self.watched: list = []  # (pipeline, start_after) of each stream opened
        self._watch_error = watch_error  # every watch, or a function of the pipeline
        self._create_index_error = create_index_error
        self._command_error = command_error
        self._create_collection_error = create_collection_error
        self._streams = list(streams)

    @property
    def db(self):
        return self._stand_in(self.client.codec_options)

    @property
    def state(self):
        return self._stand_in(self.client.codec_options)

    def _stand_in(self, codec_options):
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
            def __init__(self):
                self.codec_options = codec_options

            def __getitem__(self, name):
                return Collection()

            def with_options(self, codec_options):
                return store._stand_in(codec_options)

            async def list_collections(self, filter):
                async def infos():  # every watched collection records its images
                    for name in filter["name"]["$in"]:
                        enabled = {"changeStreamPreAndPostImages": {"enabled": True}}
                        yield {"name": name, "options": enabled}

                return infos()

            async def create_collection(self, name):
                if store._create_collection_error is not None:
                    raise store._create_collection_error

            async def watch(self, pipeline, **options):
                store.watched.append((pipeline, options.get("start_after")))
                error = store._watch_error
                error = error(pipeline) if callable(error) else error
                if error is not None:
                    raise error
                script = store._streams.pop(0) if store._streams else []
                return DriverStream(script, self.codec_options, options.get("start_after"))

            async def command(self, name, value=None, **kwargs):
                store.commands.append((name, value, kwargs))
                if name == "collMod" and store._command_error is not None:
                    raise store._command_error
                if name == "buildInfo":
                    return {"versionArray": [*store.server_version, 0]}
                return {"ok": 1}

        return Database()


class DriverStream:
    """Stands in for pymongo's AsyncChangeStream over scripted getMore replies (OP_MSG bytes,
    or an exception to raise): each reply is decoded by the driver's own
    `_OpMsg.unpack_response`, with the watched database's codec options and a cursor's
    fields, then read as the driver reads it (driver, change_stream.py): `change["_id"]` is
    the token, the post-batch token after a batch's last change."""

    def __init__(self, script: list, codec_options, start_after):
        self._script = list(script)
        self._codec_options = codec_options
        self._batch: list = []
        self._post_batch_token = None
        self.resume_token = start_after

    async def try_next(self):
        if not self._batch:
            if not self._script:
                return None
            step = self._script.pop(0)
            if isinstance(step, Exception):
                raise step
            [reply] = _OpMsg.unpack(step).unpack_response(
                7, self._codec_options, user_fields=_CURSOR_DOC_FIELDS
            )
            self._batch = list(reply["cursor"]["nextBatch"])
            self._post_batch_token = reply["cursor"]["postBatchResumeToken"]
            if not self._batch:
                self.resume_token = self._post_batch_token
                return None
        change = self._batch.pop(0)
        self.resume_token = change["_id"] if self._batch else self._post_batch_token
        return change

    async def close(self):
        pass


def getmore(*events, token: str) -> bytes:
    """A getMore's reply as the server sends it: OP_MSG flags, a body section, the document."""
    reply = {
        "cursor": {
            "nextBatch": list(events),
            "postBatchResumeToken": {"_data": token},
            "id": Int64(7),
            "ns": "booking.$cmd.aggregate",
        },
        "ok": 1.0,
    }
    return struct.pack("<IB", 0, 0) + bson.encode(reply)


def change_event(n: int, collection: str = "bookings", **document) -> dict:
    return {
        "_id": {"_data": f"82{n:04d}"},
        "operationType": "insert",
        "clusterTime": Timestamp(1_800_000_000, n),
        "wallTime": dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC),
        "ns": {"db": "booking", "coll": collection},
        "documentKey": {"_id": f"b{n}"},
        "fullDocument": {"_id": f"b{n}", **document},
    }


def not_utf8(event: dict) -> RawBSONDocument:
    """`event` with its text "MARK" replaced by bytes that are not UTF-8: another language's
    driver can store them, Python's encoder cannot."""
    data = bson.encode(event)
    assert data.count(b"MARK") == 1
    return RawBSONDocument(data.replace(b"MARK", b"\xff\xfe\xfd\xfc"))


def test_a_value_mongodb_cannot_hold_is_answered_as_the_callers_fault_not_an_outage():
    log = logging.getLogger("test")
    rejected = translate_error(OverflowError("MongoDB can only handle up to 8-byte ints"))
    answer = answer_for(rejected, "broadcast", log)
    assert (answer.code, answer.http_status) == ("invalid_payload", 400)  # retrying cannot help
    outage = answer_for(translate_error(AutoReconnect("gone")), "broadcast", log)
    assert (outage.code, outage.http_status) == ("unavailable", 503)


# -- changes that can never be read (issue 24, finding 1) -----------------------------------


async def test_a_date_python_cannot_hold_is_read_and_text_not_utf8_is_handed_on_unreadable():
    year_zero = DatetimeMS(-62_200_000_000_000)  # 2 BC: beyond Python's years 1 to 9999
    batch = getmore(
        change_event(1, startsAt=year_zero),
        not_utf8(change_event(2, note="MARK")),
        change_event(3),
        token="820004",
    )
    store = StandInStore(streams=[[batch]])
    stream = await store.watch(["bookings", "payments"], None)
    dated = await stream.try_next()
    assert dated["fullDocument"]["startsAt"] == year_zero
    assert dated["wallTime"] == dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
    unreadable = await stream.try_next()
    assert unreadable == {
        "_id": {"_data": "820002"},
        "operationType": UNREADABLE,
        "ns": {"db": "booking", "coll": "bookings"},
    }
    assert UNREADABLE == feed.UNREADABLE  # the feed skips it with a resync of its collection
    assert stream.resume_token == {"_data": "820002"}  # past it: never read again
    assert (await stream.try_next())["documentKey"] == {"_id": "b3"}
    assert stream.resume_token == {"_data": "820004"}  # the post-batch token, a plain dict


def test_the_client_reads_dates_beyond_pythons_years_instead_of_refusing_them():
    client = MongoStore("mongodb://127.0.0.1/", "booking")._new_client()
    assert client.codec_options.datetime_conversion == DatetimeConversion.DATETIME_AUTO
    assert client.codec_options.tz_aware  # and the rest as before


def test_a_date_beyond_pythons_years_travels_as_an_expanded_iso_year():
    assert time_string(DatetimeMS(-62_200_000_000_000)) == "-000002-12-17T14:13:20.000Z"
    assert time_string(DatetimeMS(253_402_300_800_000)) == "+010000-01-01T00:00:00.000Z"
    assert time_string(DatetimeMS(-62_135_596_800_001)) == "0000-12-31T23:59:59.999Z"
    assert time_string(DatetimeMS(8_640_000_000_000_001)) is None  # beyond a JavaScript Date
    assert json_safe({"at": [DatetimeMS(0)]}) == {"at": ["1970-01-01T00:00:00.000Z"]}
    moment = dt.datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert time_string(moment) == "2026-11-21T10:00:00.123Z"  # within them, as before


async def test_an_event_over_16_mb_that_the_server_split_is_joined_again():
    whole = change_event(5, status="confirmed")
    whole["fullDocumentBeforeChange"] = {"_id": "b5", "status": "pending"}
    first = {key: value for key, value in whole.items() if key != "fullDocumentBeforeChange"}
    first.update(_id={"_data": "8200051A"}, splitEvent={"fragment": 1, "of": 2})
    second = {
        "_id": {"_data": "8200052A"},
        "fullDocumentBeforeChange": whole["fullDocumentBeforeChange"],
        "splitEvent": {"fragment": 2, "of": 2},
    }
    batches = [
        getmore(first, token="8200051A"),
        getmore(token="8200051A"),  # the next fragment not there yet
        getmore(second, change_event(6), token="820006"),
    ]
    store = StandInStore(streams=[batches], server_version=(7, 0, 2))
    stream = await store.watch(["bookings"], {"_data": "820004"})
    assert store.watched[0][0][-1] == SPLIT_STAGE  # the last stage (manual)
    assert await stream.try_next() is None
    assert stream.resume_token == {"_data": "820004"}  # never in the middle of an event
    joined = await stream.try_next()
    assert joined == {**whole, "_id": {"_data": "8200052A"}}
    assert stream.resume_token == {"_data": "8200052A"}
    assert (await stream.try_next())["documentKey"] == {"_id": "b6"}


async def test_a_split_event_missing_its_first_fragment_is_handed_on_unreadable():
    middle = {
        "_id": {"_data": "8200072A"},
        "ns": {"db": "booking", "coll": "payments"},
        "fullDocumentBeforeChange": {"_id": "p7"},
        "splitEvent": {"fragment": 2, "of": 2},
    }
    store = StandInStore(streams=[[getmore(middle, token="8200072A")]], server_version=(7, 0, 0))
    stream = await store.watch(["payments"], None)
    assert await stream.try_next() == {
        "_id": {"_data": "8200072A"},
        "operationType": UNREADABLE,
        "ns": {"db": "booking", "coll": "payments"},
    }


async def test_a_server_whose_feature_version_lacks_the_split_stage_is_watched_without_it(caplog):
    unknown = OperationFailure("Unrecognized pipeline stage name", code=40324)
    store = StandInStore(
        watch_error=lambda pipeline: unknown if SPLIT_STAGE in pipeline else None,
        streams=[[getmore(change_event(1), token="820001")]],
        server_version=(6, 0, 9),
    )
    stream = await store.watch(["bookings"], None)
    assert [SPLIT_STAGE in pipeline for pipeline, _ in store.watched] == [True, False]
    assert store.split_events is False  # not asked again
    assert (await stream.try_next())["documentKey"] == {"_id": "b1"}
    assert "cannot be split" in caplog.text
    older = StandInStore(server_version=(6, 0, 8))
    await older.watch(["bookings"], None)
    assert SPLIT_STAGE not in older.watched[0][0]


def too_large(first_element: str) -> OperationFailure:
    """BSONObjectTooLarge as the server words it for a change event over 16 MB."""
    message = (
        "PlanExecutor error during aggregation :: caused by :: BSONObj size: 17701268"
        " (0x10E1994) is invalid. Size must be between 0 and 16793600(16MB) First element: "
        + first_element
    )
    return OperationFailure(message, code=10334, details={"errmsg": message, "code": 10334})


async def test_an_event_too_large_to_return_is_skipped_after_the_token_its_error_names(caplog):
    refused = too_large('_id: { _data: "8263AA0001" }')
    store = StandInStore(
        streams=[
            [getmore(change_event(1), token="820001"), refused],
            [getmore(change_event(3), token="820003")],
        ]
    )
    stream = await store.watch(["bookings"], {"_data": "820000"})
    assert (await stream.try_next())["documentKey"] == {"_id": "b1"}
    skipped = await stream.try_next()
    assert skipped == {"_id": {"_data": "8263AA0001"}, "operationType": UNREADABLE}
    assert stream.resume_token == {"_data": "8263AA0001"}
    assert (await stream.try_next())["documentKey"] == {"_id": "b3"}
    assert store.watched[-1][1] == {"_data": "8263AA0001"}  # started again after it
    assert "too large" in caplog.text


async def test_an_event_too_large_in_the_first_batch_is_skipped_once_handed_on():
    store = StandInStore(streams=[[getmore(change_event(3), token="820003")]])
    refused = [too_large('_id: { _data: "8263AA0002" }')]
    store._watch_error = lambda pipeline: refused.pop() if refused else None
    stream = await store.watch(["bookings"], {"_data": "820001"})
    assert stream.resume_token == {"_data": "820001"}  # not past it before it is handed on
    assert (await stream.try_next())["operationType"] == UNREADABLE
    assert stream.resume_token == {"_data": "8263AA0002"}
    assert (await stream.try_next())["documentKey"] == {"_id": "b3"}
    assert store.watched[-1][1] == {"_data": "8263AA0002"}


async def test_an_event_too_large_whose_token_is_not_named_is_retried_not_skipped():
    with_type_bits = too_large('_id: { _data: "8263AA", _typeBits: BinData(0, 40) }')
    store = StandInStore(streams=[[with_type_bits]])
    stream = await store.watch(["bookings"], {"_data": "820001"})
    with pytest.raises(StoreError) as raised:
        await stream.try_next()
    assert not isinstance(raised.value, ChangeHistoryLost)


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
