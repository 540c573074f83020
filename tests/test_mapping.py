"""Booking and payment changes -> events and rooms, without a server."""

from __future__ import annotations

import datetime as dt
import logging

from bson import ObjectId

from realtime.changes.mapping import DocumentMapping
from realtime.config import load_settings
from storage.base import Change

BOOKING = {
    "_id": "b1",
    "customerId": "c1",
    "shopId": "s1",
    "therapistId": "t1",
    "status": "PENDING",
    "startsAt": "2026-11-21T10:00:00.000Z",
    "durationMinutes": 60,
    "notes": "private",
    "phone": "+33 6",
}


def mapping(tmp_path, **environ) -> DocumentMapping:
    return DocumentMapping(
        load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32, **environ})
    )


def change(
    operation, document=None, before=None, updated=None, collection="bookings", doc_id="b1"
) -> Change:
    return Change(
        token={"_data": "01"},
        operation=operation,
        collection=collection,
        document_id=doc_id,
        document=document,
        before=before,
        updated_fields=updated,
        wall_time=None,
    )


def names(outgoing):
    return [(e.name, e.payload.get("updateType", e.payload.get("available"))) for e in outgoing]


def test_insert_is_created_and_takes_the_slot(tmp_path):
    events = mapping(tmp_path).events_for_change(change("insert", BOOKING))
    update, slot = events
    assert update.name == "reservation_update"
    assert update.payload == {
        "reservationId": "b1",
        "status": "pending",
        "previousStatus": None,
        "updateType": "created",
        "userId": "c1",
        "shopId": "s1",
        "therapistId": "t1",
        "startsAt": "2026-11-21T10:00:00.000Z",
        "durationMinutes": 60,
    }
    assert update.rooms == ("reservation-b1", "user-c1", "user-t1", "shop-s1", "admin-reservations")
    assert slot.name == "availability_update"
    assert slot.payload == {
        "shopId": "s1",
        "therapistId": "t1",
        "startsAt": "2026-11-21T10:00:00.000Z",
        "durationMinutes": 60,
        "available": False,
        "reservationId": "b1",
    }
    assert slot.rooms == ("availability-s1",)


def test_status_change_with_a_pre_image(tmp_path):
    after = {**BOOKING, "status": "cancelled"}
    events = mapping(tmp_path).events_for_change(
        change("update", after, before=BOOKING, updated={"status": "cancelled"})
    )
    assert names(events) == [("reservation_update", "cancelled"), ("availability_update", True)]
    assert events[0].payload["previousStatus"] == "pending"


def test_status_change_without_a_pre_image_uses_the_update_description(tmp_path):
    after = {**BOOKING, "status": "confirmed"}
    events = mapping(tmp_path).events_for_change(
        change("update", after, updated={"status": "confirmed"})
    )
    assert events[0].payload["updateType"] == "confirmed"
    assert events[0].payload["previousStatus"] is None
    freed = mapping(tmp_path).events_for_change(
        change("update", {**BOOKING, "status": "NO_SHOW"}, updated={"status": "NO_SHOW"})
    )
    assert names(freed) == [("reservation_update", "no_show"), ("availability_update", True)]


def test_back_to_pending_and_other_edits_are_modified(tmp_path):
    confirmed = {**BOOKING, "status": "confirmed"}
    back = mapping(tmp_path).events_for_change(
        change("update", BOOKING, before=confirmed, updated={"status": "pending"})
    )
    assert back[0].payload["updateType"] == "modified"
    assert len(back) == 1  # the slot stays taken
    edit = mapping(tmp_path).events_for_change(
        change("update", {**BOOKING, "notes": "x"}, before=BOOKING, updated={"notes": "x"})
    )
    assert names(edit) == [("reservation_update", "modified")]


def test_a_reschedule_frees_the_old_slot_and_takes_the_new(tmp_path):
    moved = {**BOOKING, "startsAt": "2026-11-22T15:00:00.000Z"}
    events = mapping(tmp_path).events_for_change(
        change("update", moved, before=BOOKING, updated={"startsAt": moved["startsAt"]})
    )
    assert names(events) == [
        ("reservation_update", "modified"),
        ("availability_update", True),
        ("availability_update", False),
    ]
    assert events[1].payload["startsAt"] == BOOKING["startsAt"]
    assert events[2].payload["startsAt"] == moved["startsAt"]


def test_delete_with_and_without_a_pre_image(tmp_path):
    with_before = mapping(tmp_path).events_for_change(change("delete", before=BOOKING))
    assert names(with_before) == [("reservation_update", "deleted"), ("availability_update", True)]
    assert with_before[0].rooms == (
        "reservation-b1",
        "user-c1",
        "user-t1",
        "shop-s1",
        "admin-reservations",
    )
    bare = mapping(tmp_path).events_for_change(change("delete"))
    assert names(bare) == [("reservation_update", "deleted")]
    assert bare[0].rooms == ("reservation-b1", "admin-reservations")


def test_payment(tmp_path):
    payment = {
        "_id": ObjectId("64b7f0c2a1b2c3d4e5f60718"),
        "bookingId": ObjectId("64b7f0c2a1b2c3d4e5f60719"),
        "customerId": "c1",
        "shopId": "s1",
        "status": "PAID",
        "amount": 80,
        "currency": "EUR",
    }
    [event] = mapping(tmp_path).events_for_change(
        change("insert", payment, collection="payments", doc_id=payment["_id"])
    )
    assert event.name == "payment_update"
    assert event.payload == {
        "paymentId": "64b7f0c2a1b2c3d4e5f60718",
        "reservationId": "64b7f0c2a1b2c3d4e5f60719",
        "status": "paid",
        "amount": 80,
        "currency": "EUR",
        "userId": "c1",
        "shopId": "s1",
    }
    assert event.rooms == (
        "reservation-64b7f0c2a1b2c3d4e5f60719",
        "user-c1",
        "shop-s1",
        "admin-payments",
    )


def test_partial_and_odd_documents(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    m = mapping(tmp_path)
    assert m.events_for_change(change("insert", {"status": "pending"}, doc_id=None)) == []
    assert "change without a document id skipped" in caplog.text
    odd = m.events_for_change(
        change(
            "insert",
            {"_id": "b2", "status": "teleported", "durationMinutes": "long", "shopId": 7},
            doc_id="b2",
        )
    )
    assert names(odd) == [("reservation_update", "created")]
    assert odd[0].payload["status"] == "teleported"
    assert odd[0].payload["durationMinutes"] is None and odd[0].payload["shopId"] == "7"
    assert "unknown booking status" in caplog.text
    assert m.events_for_change(change("insert", {}, collection="reviews")) == []


def test_configured_names_dates_and_published_fields(tmp_path):
    m = mapping(
        tmp_path,
        BOOKINGS_COLLECTION="appointments",
        BOOKING_FIELDS='{"customerId": "client.id", "startsAt": "slot.start"}',
        PUBLISHED_BOOKING_FIELDS="notes,slot",
    )
    document = {
        "_id": "a1",
        "client": {"id": "c9"},
        "shopId": "s1",
        "status": "confirmed",
        "slot": {"start": dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)},
        "notes": "window seat",
        "phone": "secret",
    }
    update = m.events_for_change(
        change("insert", document, collection="appointments", doc_id="a1")
    )[0]
    assert update.payload["userId"] == "c9"
    assert update.payload["startsAt"] == "2026-11-21T10:00:00.000Z"
    assert update.payload["data"] == {
        "notes": "window seat",
        "slot": {"start": "2026-11-21T10:00:00.000Z"},
    }
    assert "data" not in mapping(tmp_path).events_for_change(change("insert", BOOKING))[0].payload
