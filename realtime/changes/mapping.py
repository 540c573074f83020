"""Booking and payment documents -> events and rooms: the one place that knows their shape.

Field names are configurable (`BOOKING_FIELDS`, `PAYMENT_FIELDS`: dotted paths keyed by the
spec's default names), because every platform's schema differs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from realtime import events, rooms
from realtime.config import ConfigError, Settings
from realtime.rooms import ReservationParties
from realtime.wire import id_string, json_safe, time_string
from storage.base import Change
from storage.paths import value_at

logger = logging.getLogger(__name__)

BOOKING_STATUSES = ("pending", "confirmed", "in_progress", "completed", "cancelled", "no_show")
SLOT_TAKING = frozenset({"pending", "confirmed", "in_progress"})
SLOT_FREEING = frozenset({"cancelled", "no_show"})
# a status change's updateType is the new status's word; back to pending is a modification
STATUS_UPDATE_TYPES = {
    "confirmed": "confirmed",
    "cancelled": "cancelled",
    "completed": "completed",
    "no_show": "no_show",
    "in_progress": "in_progress",
    "pending": "modified",
}
SLOT_FIELDS = ("startsAt", "durationMinutes", "therapistId", "shopId")

BOOKING_DEFAULT_FIELDS: dict[str, str] = {
    "customerId": "customerId",
    "shopId": "shopId",
    "therapistId": "therapistId",
    "serviceId": "serviceId",
    "status": "status",
    "startsAt": "startsAt",
    "durationMinutes": "durationMinutes",
}
PAYMENT_DEFAULT_FIELDS: dict[str, str] = {
    "bookingId": "bookingId",
    "customerId": "customerId",
    "shopId": "shopId",
    "status": "status",
    "amount": "amount",
    "currency": "currency",
}


class DocumentFields:
    """Reads the spec's logical fields out of a platform's documents."""

    def __init__(self, defaults: Mapping[str, str], overrides: Mapping[str, str], variable: str):
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ConfigError(
                variable,
                f"unknown field name(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(defaults)}",
            )
        self.paths = {**defaults, **overrides}

    def get(self, document: Mapping[str, Any], name: str) -> Any:
        return value_at(document, self.paths[name])

    def get_id(self, document: Mapping[str, Any], name: str) -> str | None:
        return id_string(self.get(document, name))


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A data event the mapping produced: its name, payload (without id/timestamp) and rooms."""

    name: str
    payload: dict[str, Any]
    rooms: tuple[str, ...]


def minutes(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


# the rooms each collection's changes can reach (`resync` names them)
BOOKING_ROOM_PATTERNS = (
    "reservation-*",
    "user-*",
    "shop-*",
    "availability-*",
    "admin-reservations",
)
PAYMENT_ROOM_PATTERNS = ("reservation-*", "user-*", "shop-*", "admin-payments")


class DocumentMapping:
    """The configured collections and field paths of bookings and payments, and how their
    changes become events and rooms."""

    def __init__(self, settings: Settings):
        self.bookings_collection = settings.bookings_collection
        self.payments_collection = settings.payments_collection
        self.booking = DocumentFields(
            BOOKING_DEFAULT_FIELDS, settings.booking_fields, "BOOKING_FIELDS"
        )
        self.payment = DocumentFields(
            PAYMENT_DEFAULT_FIELDS, settings.payment_fields, "PAYMENT_FIELDS"
        )
        self.published_booking_fields = settings.published_booking_fields

    def reservation_parties(self, booking: Mapping[str, Any]) -> ReservationParties:
        return ReservationParties(
            customer_id=self.booking.get_id(booking, "customerId"),
            shop_id=self.booking.get_id(booking, "shopId"),
            therapist_id=self.booking.get_id(booking, "therapistId"),
        )

    @property
    def collections(self) -> tuple[str, str]:
        return (self.bookings_collection, self.payments_collection)

    def change_rooms(self, collections: Sequence[str]) -> list[str]:
        """The rooms (as patterns) that changes of these collections reach."""
        found: dict[str, None] = {}
        for collection in collections:
            if collection == self.bookings_collection:
                found.update(dict.fromkeys(BOOKING_ROOM_PATTERNS))
            elif collection == self.payments_collection:
                found.update(dict.fromkeys(PAYMENT_ROOM_PATTERNS))
        return list(found)

    def events_for_change(self, change: Change) -> list[Outgoing]:
        """The events one change produces, in the order they are to be emitted.

        A change that cannot be placed (no document id) is logged and yields nothing; a
        document with missing or odd fields yields what is known.
        """
        if change.collection == self.bookings_collection:
            return self._booking_events(change)
        if change.collection == self.payments_collection:
            return self._payment_events(change)
        return []

    # -- bookings ----------------------------------------------------------------------------
    def _booking_events(self, change: Change) -> list[Outgoing]:
        reservation_id = _placed(change)
        if reservation_id is None:
            return []
        before = change.before
        after = change.document if change.operation != "delete" else None
        current = after if after is not None else before  # what we know of the booking
        status = self._status(after, reservation_id) if after is not None else None
        previous = self._status(before, reservation_id) if before is not None else None

        if change.operation == "insert":
            update_type, previous = "created", None
        elif change.operation == "delete":
            update_type = "deleted"
            status = previous
        elif self._status_changed(change, status, previous):
            update_type = STATUS_UPDATE_TYPES.get(status or "", "modified")
        else:
            update_type = "modified"

        fields = self.booking
        parties = (
            self.reservation_parties(current)
            if current is not None
            else ReservationParties(None, None, None)
        )
        payload: dict[str, Any] = {
            "reservationId": reservation_id,
            "status": status,
            "previousStatus": previous,
            "updateType": update_type,
            "userId": parties.customer_id,
            "shopId": parties.shop_id,
        }
        if parties.therapist_id is not None:
            payload["therapistId"] = parties.therapist_id
        payload["startsAt"] = time_string(fields.get(current, "startsAt")) if current else None
        payload["durationMinutes"] = (
            minutes(fields.get(current, "durationMinutes")) if current else None
        )
        if self.published_booking_fields and after is not None:
            payload["data"] = {
                name: json_safe(value_at(after, name))
                for name in self.published_booking_fields
                if value_at(after, name) is not None
            }

        targets = [rooms.reservation_room(reservation_id)]
        if parties.customer_id:
            targets.append(rooms.user_room(parties.customer_id))
        if parties.therapist_id:
            targets.append(rooms.user_room(parties.therapist_id))
        if parties.shop_id:
            targets.append(rooms.shop_room(parties.shop_id))
        targets.append("admin-reservations")
        result = [Outgoing(events.RESERVATION_UPDATE, payload, tuple(dict.fromkeys(targets)))]
        result.extend(
            self._availability_events(change, reservation_id, before, after, status, previous)
        )
        return result

    def _status(self, document: Mapping[str, Any], reservation_id: str) -> str | None:
        raw = self.booking.get(document, "status")
        if not isinstance(raw, str) or not raw:
            return None
        status = raw.strip().lower()
        if status not in BOOKING_STATUSES:
            logger.warning(
                "unknown booking status",
                extra={"reservation_id": reservation_id, "status": raw[:40]},
            )
        return status

    def _status_changed(self, change: Change, status: str | None, previous: str | None) -> bool:
        if change.before is not None:
            return status != previous
        # without a pre-image, the update description says whether the status was written
        status_path = self.booking.paths["status"]
        updated = change.updated_fields or {}
        return status_path in updated or any(p.startswith(status_path + ".") for p in updated)

    def _slot(self, document: Mapping[str, Any]) -> dict[str, Any] | None:
        fields = self.booking
        shop_id = fields.get_id(document, "shopId")
        if shop_id is None:
            return None
        slot = {"shopId": shop_id}
        therapist = fields.get_id(document, "therapistId")
        if therapist is not None:
            slot["therapistId"] = therapist
        slot["startsAt"] = time_string(fields.get(document, "startsAt"))
        slot["durationMinutes"] = minutes(fields.get(document, "durationMinutes"))
        return slot

    def _availability_events(
        self,
        change: Change,
        reservation_id: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        status: str | None,
        previous: str | None,
    ) -> list[Outgoing]:
        """Slots taken and freed: created or moved into a taking status takes the slot;
        cancelled, no_show or deleted frees it; a reschedule frees the old and takes the new."""
        old_slot = self._slot(before) if before is not None else None
        new_slot = self._slot(after) if after is not None else None
        was_taking = previous in SLOT_TAKING if before is not None else None
        now_taking = status in SLOT_TAKING
        changes: list[tuple[dict[str, Any], bool]] = []
        if change.operation == "insert":
            if now_taking and new_slot:
                changes.append((new_slot, False))
        elif change.operation == "delete":
            if was_taking and old_slot:
                changes.append((old_slot, True))
        elif was_taking is None:
            # no pre-image: judge by what the update wrote
            if self._status_changed(change, status, previous) and new_slot:
                if status in SLOT_FREEING:
                    changes.append((new_slot, True))
                elif now_taking:
                    changes.append((new_slot, False))
            elif now_taking and new_slot and self._slot_written(change):
                changes.append((new_slot, False))
        else:
            moved = old_slot != new_slot
            if was_taking and (status in SLOT_FREEING or (now_taking and moved)) and old_slot:
                changes.append((old_slot, True))
            if now_taking and (not was_taking or moved) and new_slot:
                changes.append((new_slot, False))
        return [
            Outgoing(
                events.AVAILABILITY_UPDATE,
                {**slot, "available": available, "reservationId": reservation_id},
                (rooms.availability_room(slot["shopId"]),),
            )
            for slot, available in changes
        ]

    def _slot_written(self, change: Change) -> bool:
        updated = change.updated_fields or {}
        paths = [self.booking.paths[name] for name in SLOT_FIELDS]
        return any(p in updated for p in paths)

    # -- payments ----------------------------------------------------------------------------
    def _payment_events(self, change: Change) -> list[Outgoing]:
        payment_id = _placed(change)
        if payment_id is None:
            return []
        document = change.document if change.operation != "delete" else change.before
        fields = self.payment
        reservation_id = fields.get_id(document, "bookingId") if document else None
        customer_id = fields.get_id(document, "customerId") if document else None
        shop_id = fields.get_id(document, "shopId") if document else None
        status = fields.get(document, "status") if document else None
        amount = fields.get(document, "amount") if document else None
        currency = fields.get(document, "currency") if document else None
        payload = {
            "paymentId": payment_id,
            "reservationId": reservation_id,
            "status": "deleted"
            if change.operation == "delete"
            else (status.strip().lower() if isinstance(status, str) else None),
            "amount": json_safe(amount) if not isinstance(amount, bool) else None,
            "currency": currency if isinstance(currency, str) else None,
            "userId": customer_id,
            "shopId": shop_id,
        }
        targets = []
        if reservation_id:
            targets.append(rooms.reservation_room(reservation_id))
        if customer_id:
            targets.append(rooms.user_room(customer_id))
        if shop_id:
            targets.append(rooms.shop_room(shop_id))
        targets.append("admin-payments")
        return [Outgoing(events.PAYMENT_UPDATE, payload, tuple(targets))]


def _placed(change: Change) -> str | None:
    """The changed document's id; a change without one cannot be placed: logged, skipped."""
    document_id = id_string(change.document_id)
    if document_id is None:
        logger.warning(
            "change without a document id skipped",
            extra={"collection": change.collection, "operation": change.operation},
        )
    return document_id
