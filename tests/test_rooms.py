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


async def broadcast(gateway, room: str, title: str) -> str:
    answer = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": title}, "rooms": [room]}, None
    )
    return answer["eventId"]


async def test_staff_are_put_in_their_shops_rooms_on_authentication(
    gateway, clients, token, client_kind
):
    staff = clients(client_kind)
    await staff.connect()
    answer = await staff.call("authenticate", {"token": token("st1", "staff", ["s2", "s1"])})
    assert answer["rooms"] == ["shop-s1", "shop-s2", "user-st1"]
    assert (await staff.next_event("auth_success"))["rooms"] == answer["rooms"]
    sent = await broadcast(gateway, "shop-s2", "for the shop")  # no join_room needed
    assert (await staff.next_event("notification"))["eventId"] == sent
    # a refreshed token that lists another shop: the old shop's room is revoked, the new one's
    # entered
    refreshed = await staff.call("authenticate", {"token": token("st1", "staff", ["s1", "s3"])})
    assert refreshed["rooms"] == ["shop-s1", "shop-s3", "user-st1"]
    assert (await staff.next_event("rooms_revoked"))["rooms"] == ["shop-s2"]


@pytest.mark.env(STAFF_SHOP_ROOMS="false")
async def test_with_staff_shop_rooms_off_staff_join_them_themselves(gateway, connect):
    staff = await connect(sub="st1", role="staff", shops=["s1"])
    assert staff.log[0][1]["rooms"] == ["user-st1"]
    assert (await staff.call("join_room", {"roomId": "shop-s1"}))["ok"] is True


@pytest.mark.env(MAX_ROOMS_PER_SOCKET="3")
async def test_shop_rooms_are_bounded_and_an_unnameable_shop_is_left_out(connect):
    # a shop id that cannot be in a room name is skipped, and no more rooms are entered than
    # a socket may be in: the token's other shops stay joinable one by one, after a leave
    staff = await connect(sub="st1", role="staff", shops=["s3", "a b", "s1", "s2"])
    assert staff.log[0][1]["rooms"] == ["shop-s1", "shop-s2", "user-st1"]
    refused = await staff.call("join_room", {"roomId": "shop-s3"})
    assert refused["error"]["code"] == "rate_limited"
    assert (await staff.call("leave_room", {"roomId": "shop-s2"}))["ok"] is True
    assert (await staff.call("join_room", {"roomId": "shop-s3"}))["ok"] is True


async def test_customers_and_admins_are_put_in_no_shop_room(connect):
    customer = await connect(sub="c1", role="customer", shops=["s1"])
    assert customer.log[0][1]["rooms"] == ["user-c1"]
    admin = await connect(sub="a1", role="admin", shops=["s1"])
    assert admin.log[0][1]["rooms"] == ["admin-general", "user-a1"]


async def test_a_handshake_cursor_replays_the_shops_rooms_and_a_rejoin_nothing_twice(
    gateway, clients, connect, token, client_kind
):
    first = await connect(sub="st1", role="staff", shops=["s1"])
    seen = await broadcast(gateway, "shop-s1", "seen")
    assert (await first.next_event("notification"))["eventId"] == seen
    await first.disconnect()
    await first.wait_disconnected()
    missed = [await broadcast(gateway, "shop-s1", f"missed {n}") for n in range(3)]
    again = clients(client_kind)
    await again.connect({"token": token("st1", "staff", ["s1"]), "lastEventId": seen})
    success = await again.next_event("auth_success")
    assert success["replayed"] == 3 and success["gap"] is False
    # what a client library does next: rejoin its rooms with the same cursor
    answer = await again.call("join_room", {"roomId": "shop-s1", "lastEventId": seen})
    assert answer["ok"] and answer["replayed"] == 0 and answer["lastEventId"] == missed[-1]
    live = await broadcast(gateway, "shop-s1", "live")
    while (await again.next_event("notification"))["eventId"] != live:
        pass
    assert [p["eventId"] for n, p in again.log if n == "notification"] == [*missed, live]


async def test_a_shop_room_entered_on_authentication_replays_what_came_before_it(gateway, connect):
    start = await broadcast(gateway, "shop-s1", "start")
    before = [await broadcast(gateway, "shop-s1", f"before {n}") for n in range(2)]
    staff = await connect(sub="st1", role="staff", shops=["s1"])  # entered without a cursor
    during = await broadcast(gateway, "shop-s1", "live, already in the room")
    assert (await staff.next_event("notification"))["eventId"] == during
    answer = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": start})
    # what came before it entered, not what it had live
    assert answer["replayed"] == 2
    assert [(await staff.next_event("notification"))["eventId"] for _ in before] == before
    # and a second join from the same cursor: it has all of them now
    again = await staff.call("join_room", {"roomId": "shop-s1", "lastEventId": start})
    assert again["replayed"] == 0 and staff.pending("notification") == 0


async def test_the_users_own_room_is_replayed_whole_by_a_join(gateway, connect):
    # everyone is in it from the start: a join of it with a cursor is a request for a replay
    client = await connect(sub="c1")
    first = await broadcast(gateway, "user-c1", "first")
    second = await broadcast(gateway, "user-c1", "second")
    answer = await client.call("join_room", {"roomId": "user-c1", "lastEventId": first})
    assert answer["replayed"] == 1 and answer["lastEventId"] == second
