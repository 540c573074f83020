"""Booking and payment documents -> events and rooms: the one place that knows their shape.

Field names are configurable (`BOOKING_FIELDS`, `PAYMENT_FIELDS`: dotted paths keyed by the
spec's default names), because every platform's schema differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from realtime.config import ConfigError, Settings
from realtime.rooms import ReservationParties
from storage.base import Store

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


def id_string(value: Any) -> str | None:
    """Ids travel as strings: ObjectIds as hex, numbers as digits; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping) and isinstance(value.get("$oid"), str):
        return value["$oid"]
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value)
    return None


def field_at(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or None."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class DocumentFields:
    """Reads the spec's logical fields out of a platform's documents."""

    def __init__(self, defaults: Mapping[str, str], overrides: Mapping[str, str], variable: str):
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ConfigError(variable, f"unknown field name(s): {', '.join(sorted(unknown))}; "
                                        f"known: {', '.join(defaults)}")
        self.paths = {**defaults, **overrides}

    def get(self, document: Mapping[str, Any], name: str) -> Any:
        return field_at(document, self.paths[name])

    def get_id(self, document: Mapping[str, Any], name: str) -> str | None:
        return id_string(self.get(document, name))


class DocumentMapping:
    """The configured collections and field paths of bookings and payments."""

    def __init__(self, settings: Settings):
        self.bookings_collection = settings.bookings_collection
        self.payments_collection = settings.payments_collection
        self.booking = DocumentFields(BOOKING_DEFAULT_FIELDS, settings.booking_fields,
                                      "BOOKING_FIELDS")
        self.payment = DocumentFields(PAYMENT_DEFAULT_FIELDS, settings.payment_fields,
                                      "PAYMENT_FIELDS")
        self.published_booking_fields = settings.published_booking_fields

    def reservation_parties(self, booking: Mapping[str, Any]) -> ReservationParties:
        return ReservationParties(
            customer_id=self.booking.get_id(booking, "customerId"),
            shop_id=self.booking.get_id(booking, "shopId"),
            therapist_id=self.booking.get_id(booking, "therapistId"),
        )


class StoreReservations:
    """`ReservationDirectory` over the store: who a reservation concerns, for room access."""

    def __init__(self, store: Store, mapping: DocumentMapping):
        self._store = store
        self._mapping = mapping

    async def reservation_parties(self, reservation_id: str) -> ReservationParties | None:
        booking = await self._store.get_document(self._mapping.bookings_collection, reservation_id)
        if booking is None:
            return None
        return self._mapping.reservation_parties(booking)
