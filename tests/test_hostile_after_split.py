"""The gateway attacked again after the engine and the access layer were split
(`realtime/engine/`, `realtime/access/`): concurrent requests on one session, the new
membership index emptied on every way out, reserved names and rooms (the Admin UI with its
full powers included), replays across rooms while live traffic flows."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from realtime.wire import event_id
from tests.clients import make_client
from tests.raw import RawSocket, stalled_websocket
from tests.test_engine_attacks import (
    acks,
    authenticated_polling,
    join,
    post_head,
    raw_request,
    session_id,
)
from tests.test_fuzz_payloads import UNLIMITED
from tests.test_transport import eventually

WAIT_S = 10.0
SERVICE_TOKEN = "hostile-after-split-service-token"
ADMIN = {"username": "ops", "password": "correct horse battery"}
ADMIN_UI_ACTING = pytest.mark.env(
    ADMIN_UI_USERNAME=ADMIN["username"],
    ADMIN_UI_PASSWORD=ADMIN["password"],
    ADMIN_UI_READ_ONLY="false",
)
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)


@pytest.fixture
async def admin_ui(base_url, settings):
    """admin_ui() -> a socket.io-client connected to the Admin UI's namespace, /admin."""
    made = []

    async def connect():
        client = make_client("js-websocket", base_url + "/admin", settings.socketio_path)
        made.append(client)
        await client.connect(ADMIN)
        return client

    yield connect
    for client in made:
        await client.close()


# -- helpers ------------------------------------------------------------------------------------
def only_sid(gateway) -> str:
    [sid] = gateway.sessions._sessions
    return sid


def sid_of(gateway, user: str) -> str:
    [sid] = gateway.sessions.sockets_of(user)
    return sid


def holds_nothing_of(gateway, sid: str, rooms) -> bool:
    """Nothing of a gone socket left in the membership index, in any room, or in /status."""
    status = gateway.status()
    return (
        not gateway.engine.rooms_of(sid)
        and all(sid not in gateway.engine.members(room) for room in rooms)
        and not (set(rooms) & set(status["rooms"]))
        and sid not in gateway.sessions._sessions
    )


async def assert_forgotten(gateway, sid: str, rooms) -> None:
    try:
        await eventually(lambda: holds_nothing_of(gateway, sid, rooms))
    except TimeoutError:
        raise AssertionError(
            f"socket {sid} still held: rooms_of={set(gateway.engine.rooms_of(sid))}, "
            f"members={ {r: gateway.engine.members(r) for r in rooms} }, "
            f"status rooms={gateway.status()['rooms']}, "
            f"in sessions={sid in gateway.sessions._sessions}"
        ) from None


async def joined(client, *rooms: str) -> None:
    for room in rooms:
        answer = await client.call("join_room", {"roomId": room})
        assert answer["ok"] is True, answer


async def broadcast(gateway, rooms: list[str], title: str) -> str:
    answer = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"title": title}, "rooms": rooms}, None
    )
    return answer["eventId"]


# == 1. every way out empties the membership index ============================================
ROOMS = ["availability-x1", "availability-x2", "availability-x3"]


@pytest.mark.parametrize("kind", ["py-websocket", "py-polling", "js-upgrade"])
@pytest.mark.parametrize("way_out", ["client disconnect", "transport close", "revocation cut"])
async def test_every_way_out_empties_the_membership_index(
    gateway, connect, kind, way_out, no_errors_logged
):
    client = await connect(kind, sub="leaver")
    await joined(client, *ROOMS)
    sid = sid_of(gateway, "leaver")
    assert set(gateway.engine.rooms_of(sid)) == {"user-leaver", *ROOMS}
    assert all(gateway.status()["rooms"].get(room) == 1 for room in ROOMS)
    if way_out == "client disconnect":
        await client.disconnect()
    elif way_out == "transport close":
        await gateway.engine.close(sid)
    else:
        cut = await gateway.sessions.cut(lambda s, _p: "bye" if s == sid else None)
        assert cut == 1
        await client.wait_disconnected()
    await assert_forgotten(gateway, sid, ["user-leaver", *ROOMS])
    assert gateway.status()["roomMembers"] == 0


@pytest.mark.env(RATE_LIMIT_EVENTS="5", RATE_LIMIT_DISCONNECT="6")
async def test_a_flood_cut_empties_the_membership_index(base_url, gateway, token, no_errors_logged):
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect({"token": token("flooder")})).startswith("40")
        await raw.next_event("auth_success")
        sid = sid_of(gateway, "flooder")
        for n, room in enumerate(ROOMS[:2], start=1):
            assert (await raw.call(n, "join_room", {"roomId": room}))["ok"] is True
        for n in range(100, 140):
            await raw.send(f"42{n}" + json.dumps(["join_room", {"roomId": "availability-f"}]))
        await raw.wait_closed()
        await assert_forgotten(gateway, sid, ["user-flooder", *ROOMS[:2], "availability-f"])
    finally:
        await raw.close()


@pytest.mark.env(CLIENT_BACKLOG_MAX="20")
async def test_a_slow_client_cut_empties_the_membership_index(
    base_url, gateway, token, no_errors_logged
):
    frame = "421" + json.dumps(["join_room", {"roomId": "availability-slow"}])
    _reader, writer = await stalled_websocket(base_url, token("stalled"), frame)
    try:
        await eventually(lambda: "availability-slow" in gateway.status()["rooms"])
        sid = sid_of(gateway, "stalled")
        pad = "x" * 4000
        for n in range(3000):
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"n": n, "pad": pad}, "users": ["stalled"]},
                None,
            )
            if gateway.engine.slow_clients_closed:
                break
        assert gateway.engine.slow_clients_closed == 1
        await assert_forgotten(gateway, sid, ["user-stalled", "availability-slow"])
    finally:
        writer.close()


@ADMIN_UI_ACTING
@pytest.mark.env(AUTH_TIMEOUT="1")
async def test_an_auth_timeout_empties_the_rooms_the_operator_put_it_in(
    base_url, gateway, admin_ui, no_errors_logged
):
    """An unauthenticated socket has no rooms of its own, but the Admin UI may put it in one:
    its auth deadline must take it out again."""
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect()).startswith("40")  # no token
        sid = only_sid(gateway)
        ui = await admin_ui()
        await ui.emit("join", "/", "availability-unauth", sid)
        await eventually(lambda: "availability-unauth" in gateway.engine.rooms_of(sid))
        assert (await raw.next_event("auth_error"))["code"] == "auth_timeout"
        await raw.wait_closed()
        await assert_forgotten(gateway, sid, ["availability-unauth"])
    finally:
        await raw.close()


# == 1. concurrent requests on one session ====================================================
@UNLIMITED
async def test_overlapping_posts_leave_nothing_of_the_closed_session(
    base_url, token, gateway, no_errors_logged
):
    raw = await authenticated_polling(base_url, token, sub="overlap")
    try:
        sid = sid_of(gateway, "overlap")
        posts = [raw.post(join(n, f"availability-o{n}")) for n in range(1, 21)]
        statuses = await asyncio.gather(*posts)
        assert set(statuses) <= {200, 400}
        if 400 in statuses:  # a second POST while one was handled: the session is closed
            assert await raw.poll_until_closed() in (400,)
            await assert_forgotten(
                gateway, sid, ["user-overlap", *(f"availability-o{n}" for n in range(1, 21))]
            )
        else:  # all ran one at a time: the session is consistent
            assert set(gateway.engine.rooms_of(sid)) <= {
                "user-overlap",
                *(f"availability-o{n}" for n in range(1, 21)),
            }
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url + "/health") as answer:
                assert answer.status == 200  # the server is still up
    finally:
        await raw.close()


@pytest.mark.parametrize("order", ["close first", "post first"])
async def test_a_poll_and_a_post_racing_a_server_side_close(
    base_url, token, gateway, order, no_errors_logged
):
    raw = await authenticated_polling(base_url, token, sub="racer")
    try:
        sid = sid_of(gateway, "racer")
        poll = asyncio.create_task(raw.poll())
        await eventually(lambda: gateway.engine.sio.eio.sockets[session_id(raw)].queue.waited_on())
        close = gateway.engine.close(sid)
        post = raw.post(join(1, "availability-race"))
        first, second = (close, post) if order == "close first" else (post, close)
        results = await asyncio.gather(first, second, poll, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        post_status = results[1] if order == "close first" else results[0]
        assert post_status in (200, 400)
        assert await raw.poll_until_closed() == 400
        await assert_forgotten(gateway, sid, ["user-racer", "availability-race"])
    finally:
        await raw.close()


async def test_a_post_racing_an_upgrade_then_a_close_leaves_nothing(
    base_url, token, gateway, no_errors_logged
):
    from tests.test_engine_attacks import masked, read_frame, upgrade_request

    raw = await authenticated_polling(base_url, token, sub="upgrader")
    sid = sid_of(gateway, "upgrader")
    reader, writer, status = await upgrade_request(base_url, session_id(raw))
    try:
        assert status == 101
        writer.write(masked("2probe"))
        assert await read_frame(reader) == "3probe"
        post = asyncio.create_task(raw.post(join(1, "availability-up1")))
        writer.write(masked("5"))
        writer.write(masked(join(2, "availability-up2")))
        await writer.drain()
        assert await post in (200, 400)
        [socket_] = gateway.engine.sio.eio.sockets.values()
        await eventually(lambda: socket_.upgraded)
        await eventually(lambda: "availability-up2" in gateway.engine.rooms_of(sid))
        await gateway.engine.close(sid)
        await assert_forgotten(
            gateway, sid, ["user-upgrader", "availability-up1", "availability-up2"]
        )
    finally:
        writer.close()
        await raw.close()


# == 2. bodies split at odd points ============================================================
async def test_a_chunked_post_split_inside_a_packet_and_a_character(base_url, token):
    raw = await authenticated_polling(base_url, token)
    try:
        packets = [join(n) for n in range(1, 6)]
        packets.insert(2, "4206" + json.dumps(["nope", "café"], ensure_ascii=False))
        body = "\x1e".join(packets).encode()
        at = body.index("é".encode()) + 1
        host = base_url.removeprefix("http://")
        head = (
            f"POST /socket.io/?EIO=4&transport=polling&sid={session_id(raw)} HTTP/1.1\r\n"
            f"Host: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        chunks = [body[:7], body[7:at], body[at:]]
        pieces = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
        status, _ = await raw_request(base_url, head, pieces)
        assert status == 200
        answers = await acks(raw, {1, 2, 3, 4, 5, 6})
        assert all(answers[n]["ok"] is True for n in range(1, 6))
        assert answers[6]["error"]["code"] == "invalid_payload"
    finally:
        await raw.close()


async def test_a_truncated_gzip_body_is_400_and_nothing_of_it_runs(
    base_url, token, gateway, no_errors_logged
):
    import gzip

    raw = await authenticated_polling(base_url, token, sub="gz")
    try:
        sid = sid_of(gateway, "gz")
        body = gzip.compress(
            "\x1e".join(join(n, f"availability-g{n}") for n in range(1, 6)).encode()
        )
        cut = body[: len(body) - 12]  # its trailer and a little of its data gone
        head = post_head(base_url, session_id(raw), len(cut)).replace(
            "\r\n\r\n", "\r\nContent-Encoding: gzip\r\n\r\n"
        )
        status, _ = await raw_request(base_url, head, [cut])
        assert status == 400
        assert await raw.poll_until_closed() == 400
        await assert_forgotten(
            gateway, sid, ["user-gz", *(f"availability-g{n}" for n in range(1, 6))]
        )
    finally:
        await raw.close()


async def test_a_content_length_shorter_than_the_body_reads_only_its_length(
    base_url, token, gateway, no_errors_logged
):
    raw = await authenticated_polling(base_url, token, sub="short")
    try:
        body = (join(1, "availability-s1") + "\x1e" + join(2, "availability-s2")).encode()
        announced = len(join(1, "availability-s1"))
        status, _ = await raw_request(
            base_url, post_head(base_url, session_id(raw), announced), [body]
        )
        assert status == 200
        answers = await acks(raw, {1})
        assert answers[1]["ok"] is True
        sid = sid_of(gateway, "short")
        assert "availability-s2" not in gateway.engine.rooms_of(sid)  # past its length
    finally:
        await raw.close()


# == 3. reserved names, odd rooms, the Admin UI's full powers =================================
@pytest.mark.parametrize(
    "name", ["connect", "disconnect", "disconnecting", "connect_error", "newListener"]
)
async def test_events_named_like_lifecycle_events_change_no_membership(
    base_url, gateway, token, name, no_errors_logged
):
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("reserved")})
        await raw.next_event("auth_success")
        sid = sid_of(gateway, "reserved")
        assert (await raw.call(1, "join_room", {"roomId": "availability-r"}))["ok"] is True
        answer = await raw.call(2, name, {"roomId": "availability-r"})
        assert answer["ok"] is False
        assert set(gateway.engine.rooms_of(sid)) == {"user-reserved", "availability-r"}
        assert sid in gateway.sessions._sessions  # not disconnected by it
        assert (await raw.call(3, "leave_room", {"roomId": "availability-r"}))["ok"] is True
    finally:
        await raw.close()


@pytest.mark.parametrize(
    "room",
    [
        None,
        "",
        "user-",
        "availability-a b",
        "availability-x\n",
        "availability-\u00e9",
        "availability-" + "x" * 200,
        ["availability-1"],
        {"availability": 1},
        7,
    ],
)
async def test_odd_room_ids_are_refused_and_enter_nothing(gateway, connect, room, no_errors_logged):
    client = await connect(sub="odd")
    sid = sid_of(gateway, "odd")
    before = set(gateway.engine.rooms_of(sid))
    answer = await client.call("join_room", {"roomId": room})
    assert answer["ok"] is False and answer["error"]["code"] in ("unknown_room", "invalid_payload")
    assert set(gateway.engine.rooms_of(sid)) == before


async def test_a_room_named_like_another_socket_s_sid_cannot_be_joined(
    gateway, connect, no_errors_logged
):
    victim = await connect(sub="victim")
    victim_sid = sid_of(gateway, "victim")
    attacker = await connect(sub="attacker")
    attacker_sid = sid_of(gateway, "attacker")
    for room in (victim_sid, f"availability-{victim_sid}", f"user-{victim_sid}"):
        await attacker.call("join_room", {"roomId": room})
    assert victim_sid not in gateway.engine.rooms_of(attacker_sid)
    # a room keyed by the sid is a room of its own: what is sent to the victim stays its own
    gateway.engine.send(victim_sid, "notification", {"title": "private"})
    assert (await victim.next_event("notification"))["title"] == "private"
    assert attacker.pending("notification") == 0
    assert victim.pending("notification") == 0


@ADMIN_UI_ACTING
async def test_the_admin_ui_putting_a_socket_in_the_policy_s_rooms(
    gateway, connect, token, admin_ui, no_errors_logged
):
    """The operator puts a customer in another user's room: it shows in the socket's rooms and
    in /status, counts against MAX_ROOMS_PER_SOCKET, and a refreshed token takes it out with
    rooms_revoked (the policy judges its own rooms)."""
    customer = await connect(sub="c1")
    sid = sid_of(gateway, "c1")
    ui = await admin_ui()
    await ui.emit("join", "/", "user-c2", sid)
    await eventually(lambda: "user-c2" in gateway.engine.rooms_of(sid))
    assert gateway.status()["rooms"].get("user-c2") == 1
    refreshed = await customer.call("authenticate", {"token": token("c1")})
    assert refreshed["ok"] is True
    assert refreshed["rooms"] == ["user-c1"]
    assert (await customer.next_event("rooms_revoked"))["rooms"] == ["user-c2"]
    assert "user-c2" not in gateway.engine.rooms_of(sid)
    assert "user-c2" not in gateway.status()["rooms"]


@ADMIN_UI_ACTING
@pytest.mark.env(MAX_ROOMS_PER_SOCKET="3")
async def test_rooms_the_admin_ui_adds_count_against_the_limit(gateway, connect, admin_ui):
    customer = await connect(sub="c1")
    sid = sid_of(gateway, "c1")
    ui = await admin_ui()
    for room in ("vip-1", "vip-2"):
        await ui.emit("join", "/", room, sid)
    await eventually(lambda: len(gateway.engine.rooms_of(sid)) == 3)
    answer = await customer.call("join_room", {"roomId": "availability-1"})
    assert answer["ok"] is False and answer["error"]["code"] == "rate_limited"
    await ui.emit("leave", "/", "vip-1", sid)
    await eventually(lambda: "vip-1" not in gateway.engine.rooms_of(sid))
    assert (await customer.call("join_room", {"roomId": "availability-1"}))["ok"] is True


@ADMIN_UI_ACTING
async def test_the_admin_ui_putting_a_socket_in_another_socket_s_sid_room(
    gateway, connect, admin_ui, no_errors_logged
):
    """The operator types a socket's id as a room: python-socketio refuses to put anyone in
    a sid's room (ValueError); the gateway must neither log it as its own ERROR nor let
    anyone else receive what is sent to that sid."""
    await connect(sub="victim")
    victim_sid = sid_of(gateway, "victim")
    await connect(sub="other")
    other_sid = sid_of(gateway, "other")
    ui = await admin_ui()
    await ui.emit("join", "/", victim_sid, other_sid)
    # the UI's next order is handled after that one (one connection, in order)
    await ui.emit("join", "/", "marker", other_sid)
    await eventually(lambda: "marker" in gateway.engine.rooms_of(other_sid))
    assert victim_sid not in gateway.engine.rooms_of(other_sid)
    assert gateway.engine.members(victim_sid) in ([], [victim_sid])


@ADMIN_UI_ACTING
async def test_the_admin_ui_cannot_take_a_socket_out_of_its_connection_room(
    gateway, connect, admin_ui, no_errors_logged
):
    """The Admin UI's LEAVE with room None (JSON null) would take the socket out of
    python-socketio's None room, where the manager keeps who is connected: the socket could no
    longer be cut, sent to or disconnected, and when its client left nothing would forget it.
    It is refused; the UI's next order is carried out."""
    client = await connect(sub="ghost")
    sid = sid_of(gateway, "ghost")
    await joined(client, "availability-ghost")
    ui = await admin_ui()
    await ui.emit("leave", "/", None, sid)
    await ui.emit("join", "/", "marker", sid)  # handled after that one (one connection, in order)
    await eventually(lambda: "marker" in gateway.engine.rooms_of(sid))
    assert sid in gateway.engine.sio.manager.rooms["/"][None]
    await client.disconnect()
    await assert_forgotten(gateway, sid, ["user-ghost", "availability-ghost", "marker"])
    assert gateway.sessions.counts()["connections"] == 0


@ADMIN_UI_ACTING
async def test_the_admin_ui_cannot_put_a_socket_in_a_room_that_is_no_string(
    gateway, connect, token, admin_ui, http, no_errors_logged
):
    """The UI's JOIN takes any JSON as the room: a number is refused (it would break /status
    and a refresh, which sort room names)."""
    customer = await connect(sub="c1")
    sid = sid_of(gateway, "c1")
    ui = await admin_ui()
    await ui.emit("join", "/", 5, sid)
    await ui.emit("join", "/", "marker", sid)
    await eventually(lambda: "marker" in gateway.engine.rooms_of(sid))
    assert 5 not in gateway.engine.rooms_of(sid)
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    async with http.get("/status", headers=auth) as answer:
        assert answer.status == 200, await answer.text()
    refreshed = await customer.call("authenticate", {"token": token("c1")})
    assert refreshed["ok"] is True, refreshed


# == 4. replays across rooms =================================================================
@UNLIMITED
async def test_rejoining_several_rooms_with_a_cursor_during_live_traffic(gateway, connect):
    rooms = ["availability-m1", "availability-m2", "availability-m3"]
    start = await broadcast(gateway, ["availability-nobody"], "start")
    for n in range(60):
        await broadcast(gateway, [rooms[n % 3]], f"old {n}")
    client = await connect(sub="multi")
    stop = asyncio.Event()

    async def live() -> None:
        n = 0
        while not stop.is_set():
            await broadcast(gateway, [rooms[n % 3]], f"live {n}")
            if n % 5 == 0:  # one event to two rooms: one delivery
                await broadcast(gateway, rooms[:2], f"both {n}")
            n += 1
            await asyncio.sleep(0)  # (a producer's turn, not a wait for the server)

    publishing = asyncio.create_task(live())
    try:
        answers = await asyncio.gather(
            *(client.call("join_room", {"roomId": r, "lastEventId": start}) for r in rooms)
        )
    finally:
        stop.set()
        await publishing
    assert all(a["ok"] is True for a in answers), answers
    end = await broadcast(gateway, rooms, "end")
    while (await client.next_event("notification"))["eventId"] != end:
        pass
    received = [p["eventId"] for n, p in client.log if n == "notification"]
    logged = {
        room: [
            event_id(e.sequence) for e in await gateway.store.room_events(room, int(start), 10000)
        ]
        for room in rooms
    }
    # replay is per room (docs/protocol.md, the JS client dedupes by eventId): an event of two
    # rejoined rooms may come once per room, and nothing else may come twice
    of_two_rooms = {e for e in logged[rooms[0]] if e in set(logged[rooms[1]])}
    twice = {e for e in received if received.count(e) > 1}
    assert twice <= of_two_rooms, f"delivered twice: {sorted(twice - of_two_rooms)}"
    assert all(received.count(e) <= 2 for e in twice)
    for room in rooms:
        assert set(logged[room]) <= set(received), f"{room}: missing"
        # its own events (of no other joined room) in the log's order: one arrival each
        own = [e for e in logged[room] if e not in of_two_rooms]
        assert [e for e in received if e in set(own)] == own, f"{room}: out of order"


async def test_a_moved_booking_revokes_the_room_and_delivers_nothing_more(
    gateway, connect, no_errors_logged
):
    from tests.test_replay import SLOT

    store = gateway.store
    booking = await store.insert_document(
        "bookings", {"customerId": "c1", "shopId": "s1", "status": "pending", **SLOT}
    )
    room = f"reservation-{booking}"
    loser = await connect(sub="c1")
    winner = await connect(sub="c2")
    loser_sid = sid_of(gateway, "c1")
    assert (await loser.call("join_room", {"roomId": room}))["ok"] is True
    await store.update_document("bookings", booking, {"customerId": "c2"})
    revoked = await loser.next_event("rooms_revoked")
    assert revoked["rooms"] == [room]
    assert room not in gateway.engine.rooms_of(loser_sid)
    assert loser_sid not in gateway.engine.members(room)
    assert (await winner.call("join_room", {"roomId": room}))["ok"] is True
    secret = await broadcast(gateway, [room], "for c2 only")
    assert (await winner.next_event("notification"))["eventId"] == secret
    marker = await broadcast(gateway, ["user-c1"], "marker")
    assert (await loser.next_event("notification"))["eventId"] == marker
    seen = [p.get("eventId") for _, p in loser.log if isinstance(p, dict)]
    assert secret not in seen
    # and a replay from before the move hands nothing of c2's era over
    again = await loser.call("join_room", {"roomId": room, "lastEventId": "0"})
    assert again["ok"] is False and again["error"]["code"] == "forbidden"


async def test_a_join_with_a_cursor_ahead_of_the_log_misses_no_live_event(gateway, connect):
    newest = await broadcast(gateway, ["availability-ahead"], "newest")
    client = await connect(sub="ahead")
    answer = await client.call(
        "join_room", {"roomId": "availability-ahead", "lastEventId": event_id(int(newest) + 50)}
    )
    assert answer["ok"] is True and answer["gap"] is True and answer["replayed"] == 0
    lives = [await broadcast(gateway, ["availability-ahead"], f"live {n}") for n in range(3)]
    got = [(await client.next_event("notification"))["eventId"] for _ in lives]
    assert got == lives
