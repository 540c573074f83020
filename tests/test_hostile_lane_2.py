"""Long-polling's lane attacked again, as a hostile client would (see `test_hostile_lane.py`
for the first round): one session's POSTs and polls over several connections at once,
bodies split at odd points, and the store's change stream under a read in flight."""

from __future__ import annotations

import asyncio
import json

import pytest

from storage.sqlite.store import SqliteStore
from tests.test_hostile_lane import authenticated, exchange, raw_get, raw_post
from tests.test_lane import WAIT_S, Http, get, post
from tests.test_transport import eventually


def events(first: int, count: int, text: str = "caf\u00e9 \u2603") -> bytes:
    """`count` events with acks `first`... to an event no handler takes (each answered with an
    error ack, in order), as one long-polling payload."""
    return "\x1e".join(
        f"42{ack}" + json.dumps(["no_such_event", text]) for ack in range(first, first + count)
    ).encode()


def acks(body: bytes) -> list[int]:
    """The ack ids of the error acks in a poll's answer."""
    found = []
    for packet in body.decode().split("\x1e"):
        if packet.startswith("43"):
            found.append(int(packet[2 : packet.index("[")]))
    return found


async def acks_until(http: Http, target: str, last: int) -> list[int]:
    got: list[int] = []
    while last not in got:
        await http.send(get(target))
        status, _, body = await http.answer()
        assert status == 200, body
        got += acks(body)
    return got


def split_points(body: bytes) -> list[int]:
    """Where a body is cut: inside each multi-byte character, on each side of each
    separator."""
    points = set()
    for i, byte in enumerate(body):
        if byte == 0x1E:
            points |= {i, i + 1}
        elif 0x80 <= byte < 0xC0:  # a continuation byte: the cut is mid-character
            points.add(i)
    return sorted(points)


async def test_a_body_cut_mid_character_and_at_its_separators_delivers_every_event(server, token):
    http = await Http.open(server)
    _, target = await authenticated(http, token)
    body = events(1, 4)
    head = raw_post(target, b"", b"Host: g", b"Content-Length: %d" % len(body))
    pieces, at = [head], 0
    for point in split_points(body):
        pieces.append(body[at:point])
        at = point
    pieces.append(body[at:])
    for piece in pieces:
        await http.send(piece)
        await asyncio.sleep(0)  # (each piece its own read, as far as the loop goes)
    status, _, answer = await http.answer()
    assert (status, answer) == (200, b"ok")
    assert await acks_until(http, target, 4) == [1, 2, 3, 4]
    http.close()


async def test_posts_on_several_connections_are_handled_one_at_a_time_in_order(
    server, gateway, token
):
    """One session, its POSTs each sent once the last was answered but each over another
    connection, its polls over yet another: every event handled once, in order."""
    poller = await Http.open(server)
    _, target = await authenticated(poller, token)
    posters = [await Http.open(server) for _ in range(3)]
    count = 30
    for n in range(count):
        http = posters[n % 3]
        await http.send(post(target, events(1 + 2 * n, 2).decode()))
        assert (await http.answer())[::2] == (200, b"ok")
    assert await acks_until(poller, target, 2 * count) == list(range(1, 2 * count + 1))
    for http in (poller, *posters):
        http.close()


async def test_posts_overlapping_on_several_connections_close_the_session_unhandled(
    server, gateway, token
):
    """A POST of a session while another is read closes it, on whichever connection it
    comes: no event of the overlapping ones is handled, nor any after."""
    eio = gateway.engine.sio.eio
    first = await Http.open(server)
    sid, target = await authenticated(first, token)
    others = [await Http.open(server) for _ in range(3)]
    body = events(1, 2)
    await first.send(raw_post(target, body[:7], b"Host: g", b"Content-Length: %d" % len(body)))
    await eventually(lambda: eio.sockets[sid].receiving is not None)
    await asyncio.gather(
        *(
            http.send(post(target, events(10 * (i + 1), 2).decode()))
            for i, http in enumerate(others)
        )
    )
    refusals = [(await http.answer())[::2] for http in others]
    assert (400, b'"overlapping POST"') in refusals  # (the first; the others: closed)
    assert set(refusals) <= {(400, b'"overlapping POST"'), (400, b'"session closed"')}
    await first.send(body[7:])
    assert (await first.answer())[0] == 400  # its session closed meanwhile
    await first.send(get(target))
    status, _, answer = await first.answer()
    assert not acks(answer) if status == 200 else status == 400
    for http in (first, *others):
        http.close()


async def test_polls_racing_on_several_connections_close_the_session_once(server, gateway, token):
    """Polls of one session written at once on several connections: at most one gets the
    packets; the others are refused and the session is closed, its packets given once."""
    eio = gateway.engine.sio.eio
    posting = await Http.open(server)
    sid, target = await authenticated(posting, token)
    polls = [await Http.open(server) for _ in range(4)]
    await posting.send(post(target, events(1, 3).decode()))
    assert (await posting.answer())[2] == b"ok"
    await asyncio.gather(*(http.send(get(target)) for http in polls))
    answers = [await http.answer() for http in polls]
    given = [ack for status, _, body in answers if status == 200 for ack in acks(body)]
    assert sorted(given) == sorted(set(given))  # none twice
    refused = [body for status, _, body in answers if status == 400]
    if refused:
        await eventually(lambda: sid not in eio.sockets or eio.sockets[sid].closed)
    for http in (posting, *polls):
        http.close()


async def test_an_idle_stream_reads_again_after_a_commit_made_while_it_read(tmp_path):
    """Another connection commits while the stream's read is under way, after the read's
    snapshot: the read did not see it, so the stream must read again (`commits` is taken as
    the read begins, not as it ends), however idle the file is from then on."""
    path = str(tmp_path / "racing.db")
    store, writer = SqliteStore(path, poll_ms=1), SqliteStore(path)
    await store.open()
    await writer.open()
    stream = await store.watch(["bookings"], None)
    read_changes, writes = stream._read_changes, 0

    async def committed_meanwhile(after: int, limit: int):
        nonlocal writes
        read = await read_changes(after, limit)  # (its snapshot taken)
        if writes < 3:
            writes += 1
            await writer.insert_document("bookings", {"n": writes})
        return read

    stream._read_changes = committed_meanwhile
    try:
        seen = []
        async with asyncio.timeout(WAIT_S):
            while len(seen) < 3:
                if (change := await stream.try_next()) is not None:
                    seen.append(change["fullDocument"]["n"])
        assert seen == [1, 2, 3]
    finally:
        await stream.close()
        await store.close()
        await writer.close()


@pytest.mark.parametrize("kind", ["py-polling", "js-polling"])
async def test_a_join_replaying_events_also_sent_to_another_room_sends_each_once(
    gateway, connect, kind
):
    """A staff member in two shops' rooms leaves one, misses events sent to both rooms (had
    through the other) and to that one alone, then joins it again with its last event id,
    over long-polling, while more go to both: each event once per room at most (as SPEC's
    Replay says), none missed."""
    staff = await connect(kind, sub="st1", role="staff", shops=["s1", "s2"])

    async def send(*rooms: str, title: str) -> str:
        answer = await gateway.broadcaster.broadcast(
            {"event": "notification", "data": {"title": title}, "rooms": list(rooms)}, None
        )
        return answer["eventId"]

    start = await send("shop-s1", "shop-s2", title="start")
    await staff.call("leave_room", {"roomId": "shop-s2"})
    for n in range(20):
        await send("shop-s1", "shop-s2", title=f"both {n}")
        await send("shop-s2", title=f"s2 {n}")

    async def keep_sending():
        for n in range(50):
            await send("shop-s1", "shop-s2", title=f"live {n}")

    sending = asyncio.create_task(keep_sending())
    await staff.call("join_room", {"roomId": "shop-s2", "lastEventId": start})
    await sending
    end = await send("shop-s1", "shop-s2", title="end")
    while (await staff.next_event("notification"))["eventId"] != end:
        pass
    titles = [p["title"] for name, p in staff.log if name == "notification"]
    ids = [p["eventId"] for name, p in staff.log if name == "notification"]
    # (SPEC: replay is per room, an event to two rooms may come once for each)
    assert all(ids.count(i) <= 2 for i in ids), titles
    assert all(titles.count(f"s2 {n}") == 1 for n in range(20)), titles
    assert {f"both {n}" for n in range(20)} | {f"live {n}" for n in range(50)} <= set(titles)


# queries on the Engine.IO path that the lane reads (or hands over) as aiohttp's app would
ODD_QUERIES = [
    "EIO=3&transport=polling",
    "EIO=5&transport=polling",
    "EIO=04&transport=polling",
    "EIO=4&transport=Polling",
    "EIO=4&transport=websocket&transport=polling",
    "EIO=4&transport=polling&transport=websocket",
    "EIO=4&transport=polling&sid=&sid=nope",
    "EIO=4&transport=polling&sid=no%70e",
    "EIO=4&transport=polling&j=0",
    "EIO=4&transport=polling&j",
    "EIO=4&transport=polling&sid=nope&j=1",
    "EIO=4&transport=polling&sid",
    "EIO=4&transport=polling&sid=%",
    "EIO=4&transport=polling&sid=a+b",
    "EIO=4&transport=polling&sid=nope&EIO=3",
    "EIO=4;transport=polling",
    "transport=polling",
]


@pytest.mark.parametrize("query", ODD_QUERIES)
async def test_odd_queries_on_the_engine_path_are_answered_as_aiohttp_answers_them(
    server, plain, query
):
    def seen(answers):  # (a handshake's body holds its new session's id)
        return [(s, b[:1] if s == 200 else b, c) for s, b, c in answers]

    for method in ("GET", "POST"):
        data = (
            raw_get(f"/socket.io/?{query}", b"Host: g")
            if method == "GET"
            else raw_post(f"/socket.io/?{query}", b"1:6", b"Host: g", b"Content-Length: 3")
        )
        assert seen(await exchange(server, data, 1)) == seen(await exchange(plain, data, 1))
