"""A hostile client against what long-polling's lane now keeps (a head's header-field block
read once process-wide, `http11._heads`, and CORS answers worked out from it per server) and
against the join answered as it is read (`GatewayServer.message_now`, `answer_now`,
`join_now`): one session's POSTs, polls and upgrade over connections whose heads are byte
for byte alike; heads and bodies split at odd points with a cached head; odd paths with
cached heads; replays across two rooms on the short and the waiting path; the Admin UI
coming and going while joins stream in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from realtime.engine import http11
from tests.clients import make_client
from tests.raw import RawSocket, _masked_text_frame, read_text_frames, websocket_upgrade
from tests.test_hostile_lane import exchange_pieces, raw_get, raw_post
from tests.test_lane import Http, authenticated, get, post
from tests.test_transport import eventually
from tests.tools import require

WAIT_S = 10.0
MANY = pytest.mark.env(RATE_LIMIT_EVENTS="1000000", RATE_LIMIT_DISCONNECT="1000000")
SERVICE_TOKEN = "hostile-client-27b-service-token-0123"
ADMIN = {"username": "ops", "password": "correct horse battery"}


def join(ack: int, shop: int, last_event_id: str | None = None) -> str:
    """A `join_room` EVENT with this ack id (a Socket.IO packet, no Engine.IO type)."""
    body: dict[str, Any] = {"roomId": f"availability-s{shop}"}
    if last_event_id is not None:
        body["lastEventId"] = last_event_id
    return f"2{ack}" + json.dumps(["join_room", body])


def acks_in(packets: list[str]) -> list[tuple[int, Any]]:
    """The ACKs (`43<id>[answer]`) among Engine.IO packets: (id, answer)."""
    found = []
    for packet in packets:
        if packet.startswith("43"):
            start = packet.index("[")
            found.append((int(packet[2:start]), json.loads(packet[start:])[0]))
    return found


async def poll_once(http: Http, target: str) -> list[str]:
    await http.send(get(target))
    status, _, body = await http.answer()
    assert status == 200, body
    return body.decode().split("\x1e")


# -- 1. one session over connections whose heads are alike -------------------------------------
@MANY
async def test_posts_and_polls_sharing_heads_then_an_upgrade_ack_each_event_once_in_order(
    server, gateway, token
):
    """Four connections of one session, every POST's head alike (bodies of one length) and
    every poll's alike; a poll waits on one while POSTs go over the others, polls taken in
    turn over two; then the session upgrades while a poll waits, and events go on over the
    WebSocket (the short path): every ack once, in the order its event was sent."""
    eio = gateway.engine.sio.eio
    first, second, poller, other = [await Http.open(server) for _ in range(4)]
    sid, target = await authenticated(first, token)
    await poller.send(get(target))  # waits: woken by the first ack
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    sent = list(range(100, 140))
    for ack in sent:
        http = (first, second)[ack % 2]
        await http.send(post(target, "4" + join(ack, ack % 3)))
        assert (await http.answer())[::2] == (200, b"ok")
    heads = {post(target, "4" + join(ack, ack % 3)).split("\r\n\r\n")[0] for ack in sent}
    assert len(heads) == 1  # byte for byte alike: one cached head
    (head,) = heads
    fields = (head.split("\r\n", 1)[1] + "\r\n").encode()
    assert fields in http11._heads
    got: list[tuple[int, Any]] = []
    status, _, body = await poller.answer()
    assert status == 200, body
    got += acks_in(body.decode().split("\x1e"))
    turn = 0
    while len(got) < len(sent):
        got += acks_in(await poll_once((poller, other)[turn % 2], target))
        turn += 1
    # the upgrade, a poll waiting on a connection whose head is the others'
    await other.send(get(target))
    await eventually(lambda: eio.sockets[sid].queue.waited_on())
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"http://{server.host}:{server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        )
        await ws.send_str("2probe")
        assert await ws.receive_str() == "3probe"
        assert (await other.answer())[::2] == (200, b"6")
        await ws.send_str("5")
        await eventually(lambda: eio.sockets[sid].upgraded)
        # a POST with the cached head after the upgrade: its event is never handled
        await first.send(post(target, "4" + join(999, 1)))
        assert (await first.answer())[0] == 400
        more = list(range(140, 170))
        for ack in more:
            await ws.send_str("4" + join(ack, ack % 3))
        while not got or got[-1][0] != more[-1]:
            frame = await asyncio.wait_for(ws.receive_str(), WAIT_S)
            if frame != "2":
                got += acks_in([frame])
        await ws.close()
    assert [ack for ack, _ in got] == sent + more
    assert all(answer["ok"] for _, answer in got), got
    for http in (first, second, poller, other):
        http.close()


@MANY
async def test_real_clients_of_two_sessions_alongside_raw_polls_sharing_their_heads(
    server, connect, token
):
    """python-socketio clients joining over long-polling and after an upgrade, while raw
    connections poll with heads alike each other's: each client's acks are its own, once."""
    polling = await connect("py-polling", sub="u1")
    upgrading = await connect("py-upgrade", sub="u2")
    raws = [await Http.open(server) for _ in range(2)]
    _, target = await authenticated(raws[0], token)

    async def joins(client, shop: int) -> list[Any]:
        return [
            await client.call("join_room", {"roomId": f"availability-s{shop + n % 2}"})
            for n in range(20)
        ]

    async def raw_joins() -> list[int]:
        got: list[int] = []
        for n in range(20):
            http = raws[n % 2]
            await http.send(post(target, "4" + join(200 + n, n % 2)))
            assert (await http.answer())[::2] == (200, b"ok")
        while 219 not in got:
            got += [ack for ack, _ in acks_in(await poll_once(raws[len(got) % 2], target))]
        return got

    a, b, c = await asyncio.gather(joins(polling, 1), joins(upgrading, 3), raw_joins())
    assert [x["roomId"] for x in a] == [f"availability-s{1 + n % 2}" for n in range(20)]
    assert [x["roomId"] for x in b] == [f"availability-s{3 + n % 2}" for n in range(20)]
    assert c == list(range(200, 220))
    for http in raws:
        http.close()


# -- 2. heads and bodies split at odd points --------------------------------------------------
def splits_of(data: bytes) -> dict[str, list[bytes]]:
    """A request (head and body) cut around its blank line, and a byte at a time."""
    blank = data.index(b"\r\n\r\n")
    return {
        "before the blank line": [data[:blank], data[blank:]],
        "inside the blank line's first CRLF": [data[: blank + 1], data[blank + 1 :]],
        "between the blank line's CRLFs": [data[: blank + 2], data[blank + 2 :]],
        "inside its second CRLF": [data[: blank + 3], data[blank + 3 :]],
        "after the blank line": [data[: blank + 4], data[blank + 4 :]],
        "a byte at a time": [data[i : i + 1] for i in range(len(data))],
    }


@MANY
async def test_a_cached_head_arriving_in_pieces_is_read_as_the_whole_one(server, gateway, token):
    """The head of a POST cached by a first whole one, then the same head (and body of the
    same length) written in pieces around its blank line and a byte at a time: each POST
    answered `ok`, each event acked once and in order, with the answer the whole one had."""
    http = await Http.open(server)
    _, target = await authenticated(http, token)
    whole = post(target, "4" + join(300, 1)).encode()
    await http.send(whole)
    assert (await http.answer())[::2] == (200, b"ok")
    fields = whole[whole.index(b"\r\n") + 2 : whole.index(b"\r\n\r\n") + 2]
    assert fields in http11._heads
    ids = [300]
    for n, pieces in enumerate(splits_of(post(target, "4" + join(301, 1)).encode()).values()):
        ack = 301 + n
        data = post(target, "4" + join(ack, 1)).encode()
        at = 0
        for piece in pieces:
            await http.send(data[at : at + len(piece)])
            await asyncio.sleep(0)  # (each piece its own read, as far as the loop goes)
            at += len(piece)
        status, _, body = await http.answer()
        assert (status, body) == (200, b"ok"), n
        ids.append(ack)
    got: list[tuple[int, Any]] = []
    while len(got) < len(ids):
        got += acks_in(await poll_once(http, target))
    assert [ack for ack, _ in got] == ids
    assert len({json.dumps(answer, sort_keys=True) for _, answer in got}) == 1, got
    http.close()


@MANY
async def test_a_poll_whose_cached_head_arrives_a_byte_at_a_time_is_a_poll(server, gateway, token):
    """A poll's head, cached by the polls before it, then trickled a byte at a time while
    an event waits for it; then split right before its blank line: answered each time."""
    eio = gateway.engine.sio.eio
    http, poster = await Http.open(server), await Http.open(server)
    sid, target = await authenticated(http, token)
    data = get(target).encode()
    for n, pieces in enumerate(splits_of(data).values()):
        await poster.send(post(target, "4" + join(400 + n, 2)))
        assert (await poster.answer())[::2] == (200, b"ok")
        for piece in pieces:
            await http.send(piece)
        status, _, body = await http.answer()
        assert status == 200, body
        assert [ack for ack, _ in acks_in(body.decode().split("\x1e"))] == [400 + n]
    assert eio.sockets[sid].queue.ready is not None
    http.close(), poster.close()


def bodies_cut(ack: int) -> tuple[bytes, list[int]]:
    """Two events (a room id with a two-byte and a three-byte character, each refused), as
    one POST body, and where to cut it: mid-character and either side of its separator."""
    first = f"42{ack}" + '["join_room",{"roomId":"availability-caf\u00e9"}]'
    second = f"42{ack + 1}" + '["join_room",{"roomId":"availability-\u2603"}]'
    body = f"{first}\x1e{second}".encode()
    separator = body.index(b"\x1e")
    return body, [body.index(b"\xc3") + 1, separator, separator + 1, body.index(b"\xe2") + 2]


@MANY
@pytest.mark.parametrize("cut", range(4), ids=["mid-é", "before-1e", "after-1e", "mid-☃"])
async def test_a_body_cut_with_its_head_cached_gets_the_answers_of_the_whole(
    server, gateway, token, cut
):
    http = await Http.open(server)
    _, target = await authenticated(http, token)
    body, points = bodies_cut(500)
    head = raw_post(target, b"", b"Host: gateway", b"Content-Length: %d" % len(body))
    await http.send(head + body)  # the whole, caching the head
    assert (await http.answer())[::2] == (200, b"ok")
    again, _ = bodies_cut(502)
    assert len(again) == len(body)
    point = points[cut]
    for piece in (head + again[:point], again[point:]):
        await http.send(piece)
        await asyncio.sleep(0)
    assert (await http.answer())[::2] == (200, b"ok")
    got: list[tuple[int, Any]] = []
    while len(got) < 4:
        got += acks_in(await poll_once(http, target))
    assert [ack for ack, _ in got] == [500, 501, 502, 503]
    assert got[0][1] == got[2][1] and got[1][1] == got[3][1], got
    assert got[0][1]["ok"] is False and "caf\u00e9" in json.dumps(got[0][1], ensure_ascii=False)
    http.close()


@MANY
async def test_websocket_frames_of_joins_written_a_byte_at_a_time_are_answered_in_order(
    gateway, base_url, token
):
    """Usual joins (the short path), a replaying one (the waiting path) and leaves, their
    frames written together a byte at a time: every ack once, in order, and the socket
    in the rooms the last of them leave it in."""
    reader, writer, status = await websocket_upgrade(base_url)
    assert status == 101
    try:
        (opening,) = await read_text_frames(reader, 1)
        assert opening.startswith("0{")
        writer.write(_masked_text_frame(("40" + json.dumps({"token": token("u1")})).encode()))
        while not any('"auth_success"' in f for f in await read_text_frames(reader, 1)):
            pass
        packets = [
            join(1, 1),
            join(2, 2, "0000000000000000"),  # a replay: waits
            join(3, 3),
            '24["leave_room",{"roomId":"availability-s1"}]',
            join(5, 1),
            '26["leave_room",{"roomId":"availability-s3"}]',
            join(7, 4, "0000000000000000"),
            join(8, 5),
        ]
        data = b"".join(_masked_text_frame(("4" + p).encode()) for p in packets)
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
        got: list[tuple[int, Any]] = []
        while len(got) < len(packets):
            got += acks_in(await read_text_frames(reader, 1))
        assert [ack for ack, _ in got] == list(range(1, 9)), got
        assert all(answer["ok"] for _, answer in got), got
        (sid,) = gateway.sessions._sessions
        rooms = {r for r in gateway.engine.rooms_of(sid) if r.startswith("availability-")}
        assert rooms == {f"availability-s{n}" for n in (1, 2, 4, 5)}
    finally:
        writer.close()


# -- 3. reserved and odd paths with cached heads ----------------------------------------------
ODD_TARGETS = [
    "/socket.io",
    "/socket.io?EIO=4&transport=polling",
    "/socket.io//?EIO=4&transport=polling",
    "/socket.io//",
    "/socket.io/?",
    "/socket.io/",
    "/socket.io/?EIO=4&transport=polling&sid=",
    "/socket.io/?EIO=4&transport=polling&sid=&sid=",
    "/socket.io/?EIO=4&transport=polling&sid=nope&sid=",
    "/socket.io/?EIO=4&transport=&transport=polling",
    "/socket.io/?EIO=4&EIO=3&transport=polling",
    "/socket.io/?EIO=3&EIO=4&transport=polling",
    "/socket.io/?EIO=4&transport=polling&transport=websocket&sid=nope",
    "/socket.io/?EIO=4&transport=polling#frag",
    "/socket.io/?EIO=4&&transport=polling",
    "/socket.io/?&EIO=4&transport=polling&",
    "/socket.io/?=&EIO=4&transport=polling",
]
CACHED_FIELDS = (b"Host: gateway", b"Origin: http://elsewhere.example", b"Accept: */*")


@pytest.mark.parametrize("target", ODD_TARGETS)
async def test_odd_paths_with_a_cached_head_are_answered_as_aiohttp_answers_them(
    server, plain, target
):
    """Each odd target behind a lane request whose header block it repeats (cached), written
    twice on one connection, as GET and as POST: the answers aiohttp's own runner gives."""

    def seen(answers):  # (a handshake's body holds its new session's id)
        return [a if a == "closed" else (a[0], a[1][:1] if a[0] == 200 else a[1]) for a in answers]

    primer = raw_get("/socket.io/?EIO=4&transport=polling&sid=nope", *CACHED_FIELDS)
    for data in (
        raw_get(target, *CACHED_FIELDS),
        raw_post(target, b"1:6", *CACHED_FIELDS, b"Content-Length: 3"),
    ):
        pieces = [primer + data + data]
        lane = await exchange_pieces(server, pieces, 3, whole=True)
        aiohttp_ = await exchange_pieces(plain, pieces, 3, whole=True)
        assert seen(lane) == seen(aiohttp_), (lane, aiohttp_)


async def test_one_head_read_by_both_servers_keeps_each_ones_cors_answer(server, plain):
    """The lane's cached CORS answer for a head is its server's: a handshake's answer from
    an origin, then the same head to a path aiohttp answers, then again: headers alike."""

    async def heads(served) -> list[dict[str, str]]:
        http = await Http.open(served)
        got = []
        try:
            for target in ("/socket.io/?EIO=4&transport=polling", "/socket.io//", ODD_TARGETS[4]):
                await http.send(raw_get(target, *CACHED_FIELDS))
                _, headers, _ = await http.answer()
                got.append({k: v for k, v in headers.items() if k.startswith("access-control")})
        finally:
            http.close()
        return got

    assert await heads(server) == await heads(plain)
    assert await heads(server) == await heads(plain)  # cached now


# -- 4. replays across rooms -------------------------------------------------------------------
async def broadcast(http, room: str, n: int) -> str:
    async with http.post(
        "/broadcast",
        json={"event": "notification", "data": {"room": room, "n": n}, "rooms": [room]},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    ) as answer:
        assert answer.status == 202, await answer.text()
        return (await answer.json())["eventId"]


def notifications(frames: list[str]) -> list[tuple[str, str]]:
    """(room, eventId) of each notification frame, in order."""
    found = []
    for frame in frames:
        if frame.startswith('42["notification"'):
            payload = json.loads(frame[2:])[1]
            found.append((payload["room"], payload["eventId"]))
    return found


@MANY
@pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
async def test_joins_of_two_rooms_replaying_and_not_then_rejoined_miss_and_double_nothing(
    gateway, base_url, http, token
):
    """Events go to two rooms while a socket joins one with `lastEventId` (the waiting path)
    and the other without (the short path), then leaves both, misses some, and joins both
    again with its last ids: per room, every event after its cursor once, none before,
    in eventId order."""
    rooms = ("availability-s1", "availability-s2")
    sent: dict[str, list[str]] = {room: [] for room in rooms}

    async def send(count: int, start: int) -> None:
        for n in range(start, start + count):
            room = rooms[n % 2]
            sent[room].append(await broadcast(http, room, n))

    await send(8, 0)
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1")})
        await raw.next_event("auth_success")
        cursor = sent[rooms[0]][1]
        sending = asyncio.create_task(send(30, 8))
        await raw.send("4" + join(1, 1, cursor))
        await raw.send("4" + join(2, 2))
        first = json.loads((await raw.next_frame(lambda f: f.startswith("431[")))[3:])[0]
        second = json.loads((await raw.next_frame(lambda f: f.startswith("432[")))[3:])[0]
        assert first["ok"] and second["ok"] and first["gap"] is False, (first, second)
        await sending
        await send(2, 38)  # a last one in each room: every live one came before it
        await raw.next_frame(lambda f: f'"eventId":"{sent[rooms[1]][-1]}"' in f)
        await raw.next_frame(lambda f: f'"eventId":"{sent[rooms[0]][-1]}"' in f)
        got = notifications(raw.received)
        one = [i for r, i in got if r == rooms[0]]
        two = [i for r, i in got if r == rooms[1]]
        assert one == [i for i in sent[rooms[0]] if i > cursor]
        assert two == [i for i in sent[rooms[1]] if i > second["lastEventId"]]
        # leave both, miss some, join both again with the last ids seen
        await raw.send('423["leave_room",{"roomId":"availability-s1"}]')
        await raw.send('424["leave_room",{"roomId":"availability-s2"}]')
        await raw.next_frame(lambda f: f.startswith("434["))
        seen_before = len(raw.received)
        await send(6, 40)
        sending = asyncio.create_task(send(30, 46))
        await raw.send("4" + join(5, 2, two[-1]))
        await raw.send("4" + join(6, 1, one[-1]))
        await raw.next_frame(lambda f: f.startswith("436["))
        await sending
        await send(2, 76)
        await raw.next_frame(lambda f: f'"eventId":"{sent[rooms[1]][-1]}"' in f)
        await raw.next_frame(lambda f: f'"eventId":"{sent[rooms[0]][-1]}"' in f)
        again = notifications(raw.received[seen_before:])
        assert [i for r, i in again if r == rooms[0]] == [i for i in sent[rooms[0]] if i > one[-1]]
        assert [i for r, i in again if r == rooms[1]] == [i for i in sent[rooms[1]] if i > two[-1]]
        acked = [f[:3] for f in raw.received if f.startswith("43")]
        assert acked == ["431", "432", "433", "434", "435", "436"], acked
    finally:
        await raw.close()


@MANY
@pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
async def test_a_usual_join_of_a_room_already_joined_with_a_replay_sends_nothing_twice(
    gateway, base_url, http, token
):
    """A replaying join of a room, then at once a usual join of the same room (the short
    path, held behind it), while events go to it: each event once, in order."""
    room = "availability-s1"
    ids = [await broadcast(http, room, n) for n in range(5)]
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1")})
        await raw.next_event("auth_success")

        async def more() -> None:
            for n in range(5, 25):
                ids.append(await broadcast(http, room, n))

        sending = asyncio.create_task(more())
        await raw.send("4" + join(1, 1, ids[0]))
        await raw.send("4" + join(2, 1))
        await raw.send("4" + join(3, 1, ids[0]))  # again, replaying: what is sent again
        await raw.next_frame(lambda f: f.startswith("433["))
        await sending
        last = await broadcast(http, room, 25)
        await raw.next_frame(lambda f: f'"eventId":"{last}"' in f)
        got = [i for _, i in notifications(raw.received)]
        # (SPEC: a rejoin with lastEventId may replay; never twice within one room join)
        acked = [n for n, f in enumerate(raw.received) if f.startswith("43")]
        third = acked[2]
        before = [i for _, i in notifications(raw.received[:third])]
        assert before == sorted(set(before)), before
        assert set(ids[1:]) <= set(got)
        after = [i for _, i in notifications(raw.received[third:])]
        assert after == sorted(set(after)), after
    finally:
        await raw.close()


# -- 5. the Admin UI --------------------------------------------------------------------------
WITH_ADMIN_UI = pytest.mark.env(
    ADMIN_UI_USERNAME=ADMIN["username"], ADMIN_UI_PASSWORD=ADMIN["password"]
)


@MANY
@WITH_ADMIN_UI
async def test_the_ui_coming_and_going_while_joins_stream_in_loses_and_doubles_no_ack(
    gateway, base_url, settings, token
):
    """A raw client's joins and leaves stream in over WebSocket (the library's path, the UI
    being on) while the official UI client connects and disconnects over and over: each
    ack once, in order; the library's handler sees each event once."""
    require("node")
    sio = gateway.engine.sio
    assert sio.instrumented
    seen: list[int | None] = []
    internal = sio._handle_event_internal

    async def counting(server, sid, eio_sid, data, namespace, id):
        if namespace == "/":
            seen.append(id)
        return await internal(server, sid, eio_sid, data, namespace, id)

    sio._handle_event_internal = counting
    raw = await RawSocket(base_url).open()
    stop = asyncio.Event()

    came = [asyncio.Event() for _ in range(3)]  # the UI connected for the 1st, 2nd, 3rd time

    async def ui_comes_and_goes() -> int:
        rounds = 0
        while not stop.is_set() or rounds < len(came):
            ui = make_client("js-websocket", base_url + "/admin", settings.socketio_path)
            try:
                await ui.connect(ADMIN)
                if rounds < len(came):
                    came[rounds].set()
            finally:
                await ui.close()
            rounds += 1
        return rounds

    try:
        await raw.connect({"token": token("u1")})
        await raw.next_event("auth_success")
        coming = asyncio.create_task(ui_comes_and_goes())
        count = 0
        for batch in range(6):
            if batch % 2 == 1:  # joins streaming in while the UI comes, again and again
                await came[batch // 2].wait()
            for _ in range(20):
                count += 1
                if count % 3 == 0:
                    await raw.send(f'42{count}["leave_room",{{"roomId":"availability-s1"}}]')
                else:
                    await raw.send("4" + join(count, 1 + count % 2))
            await raw.next_frame(lambda f, c=count: f.startswith(f"43{c}["))
        stop.set()
        assert await coming >= len(came)
        acked = [ack for ack, _ in acks_in(raw.received)]
        assert acked == list(range(1, count + 1))
        assert all(answer["ok"] for _, answer in acks_in(raw.received))
        assert seen == list(range(1, count + 1))
    finally:
        stop.set()
        sio._handle_event_internal = internal
        await raw.close()
