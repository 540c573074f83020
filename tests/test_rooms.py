"""Room names, and the authorisation matrix end to end against a real server and store."""

from __future__ import annotations

import pytest

from realtime.errors import GatewayError
from realtime.rooms import parse_room


@pytest.mark.parametrize(
    "name, kind, key",
    [
        ("user-u1", "user", "u1"),
        ("shop-64b7f0c2a1b2c3d4e5f60718", "shop", "64b7f0c2a1b2c3d4e5f60718"),
        ("reservation-r-1", "reservation", "r-1"),
        ("availability-s1", "availability", "s1"),
        ("admin-general", "admin", "admin-general"),
        ("user-auth0|abc", "user", "auth0|abc"),
    ],
)
def test_room_names_parse(name, kind, key):
    room = parse_room(name)
    assert (room.kind, room.key, room.name) == (kind, key, name)


@pytest.mark.parametrize(
    "name",
    ["", "user-", "admin", "admin-other", "room-1", "shop-a b", "user-/x", "USER-u1", 7, None],
)
def test_unknown_room_names_are_refused(name):
    with pytest.raises(GatewayError) as error:
        parse_room(name)
    assert error.value.code == "unknown_room"


PRINCIPALS = {
    "customer": ("c1", "customer", []),
    "staff of the shop": ("st1", "staff", ["s1"]),
    "staff of another shop": ("st2", "staff", ["s2"]),
    "admin": ("a1", "admin", []),
}
OK = "ok"
# room -> the outcome for each principal, and for an unauthenticated socket
MATRIX = {
    "user-c1": {
        "customer": OK,
        "staff of the shop": "forbidden",
        "staff of another shop": "forbidden",
        "admin": OK,
    },
    "shop-s1": {
        "customer": "forbidden",
        "staff of the shop": OK,
        "staff of another shop": "forbidden",
        "admin": OK,
    },
    "reservation-r1": {
        "customer": OK,
        "staff of the shop": OK,
        "staff of another shop": "forbidden",
        "admin": OK,
    },
    "reservation-nope": {
        "customer": "not_found",
        "staff of the shop": "not_found",
        "staff of another shop": "not_found",
        "admin": OK,
    },
    "availability-s1": {
        "customer": OK,
        "staff of the shop": OK,
        "staff of another shop": OK,
        "admin": OK,
    },
    "admin-general": {
        "customer": "forbidden",
        "staff of the shop": "forbidden",
        "staff of another shop": "forbidden",
        "admin": OK,
    },
    "admin-reservations": {
        "customer": "forbidden",
        "staff of the shop": "forbidden",
        "staff of another shop": "forbidden",
        "admin": OK,
    },
    "admin-payments": {
        "customer": "forbidden",
        "staff of the shop": "forbidden",
        "staff of another shop": "forbidden",
        "admin": OK,
    },
}


async def test_authorisation_matrix(gateway, clients, connect):
    await gateway.store.insert_document(
        "bookings",
        {
            "_id": "r1",
            "customerId": "c1",
            "shopId": "s1",
            "status": "confirmed",
            "startsAt": "2026-11-21T10:00:00.000Z",
            "durationMinutes": 60,
        },
    )
    sockets = {
        who: await connect(sub=sub, role=role, shops=shops)
        for who, (sub, role, shops) in PRINCIPALS.items()
    }
    anonymous = clients()
    await anonymous.connect()
    outcomes, expected = {}, {}
    for room, row in MATRIX.items():
        for who, socket in [*sockets.items(), ("unauthenticated", anonymous)]:
            answer = await socket.call("join_room", {"roomId": room})
            outcomes[room, who] = OK if answer["ok"] else answer["error"]["code"]
            expected[room, who] = row.get(who, "unauthenticated")
            if answer["ok"]:
                assert answer["roomId"] == room
                assert (await socket.call("leave_room", {"roomId": room}))["ok"] is True
    assert outcomes == expected


@pytest.mark.env(
    BOOKINGS_COLLECTION="appointments",
    BOOKING_FIELDS='{"customerId": "client.id", "shopId": "venue"}',
)
async def test_a_mongodb_style_document_with_other_field_names_is_authorised(gateway, connect):
    await gateway.store.insert_document(
        "appointments", {"_id": "a1", "client": {"id": "c9"}, "venue": "v1", "status": "PENDING"}
    )
    client = await connect(sub="c9")
    assert (await client.call("join_room", {"roomId": "reservation-a1"}))["ok"] is True
    other = await connect(sub="c1")
    refused = await other.call("join_room", {"roomId": "reservation-a1"})
    assert refused["error"]["code"] == "forbidden"
