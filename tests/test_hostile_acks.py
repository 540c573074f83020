"""A hostile review of the acknowledged event answered as it is read (`GatewayServer.message_now`,
`GatewayNamespace.answer_now`, `Sessions.join_now`): the same inputs give the same answers, in
the same order, over a WebSocket (the short path), over long-polling (the POST path, which
does not take it) and over a WebSocket on the library's path (what an Admin UI turns on)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.clients import KINDS
from tests.raw import RawPolling, RawSocket
from tests.tools import require

WAIT_S = 10.0
LAST = '2999["no_such_event"]'  # an event whose error ack is the last thing each run waits for
JOIN = '["join_room",{"roomId":"availability-s1"}]'
MANY = pytest.mark.env(RATE_LIMIT_EVENTS="1000000", RATE_LIMIT_DISCONNECT="1000000")
PATHS = ("websocket", "polling", "library")


def _read(frame: str) -> tuple[Any, ...]:
    """A Socket.IO packet from the server, as what a comparison keeps of it."""
    if frame.startswith("43"):
        start = frame.index("[")
        return ("ack", frame[2:start], json.loads(frame[start:]))
    if frame.startswith("42["):
        name, *args = json.loads(frame[2:])
        if name == "auth_success":  # its `lastEventId` is the instance's cursor
            return ("event", name)
        return ("event", name, *args)
    return ("packet", frame[:2])


async def _websocket(base_url: str, auth: dict | None, packets: list[str]) -> list[tuple]:
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect(auth)).startswith("40{")
        if auth and auth.get("token"):
            await raw.next_event("auth_success")
        before = len(raw.received)
        for packet in [*packets, LAST]:
            if raw.closed.is_set():
                break
            await raw.send("4" + packet)
        try:
            await raw.next_frame(lambda frame: frame.startswith("43999["))
            closed = False
        except AssertionError:
            await raw.wait_closed()
            closed = True
        return [_read(f) for f in raw.received[before:]] + ([("closed",)] if closed else [])
    finally:
        await raw.close()


async def _polling(base_url: str, auth: dict | None, packets: list[str]) -> list[tuple]:
    raw = await RawPolling(base_url).open()
    try:
        assert await raw.post("40" + (json.dumps(auth) if auth else "")) == 200
        await raw.poll_until(lambda packet: packet.startswith("40{"))
        if auth and auth.get("token"):
            await raw.poll_until(lambda packet: packet.startswith('42["auth_success"'))
        before = len(raw.received)
        for packet in [*packets, LAST]:
            if await raw.post("4" + packet) != 200:
                break
        closed = False
        try:
            await raw.poll_until(lambda packet: packet.startswith("43999["))
        except AssertionError:
            closed = True
        return [_read(p) for p in raw.received[before:] if p != "6"] + (
            [("closed",)] if closed else []
        )
    finally:
        await raw.close()


@pytest.fixture
def answers(gateway, base_url) -> Callable:
    """answers(path, auth, packets) -> what the server sent back after the handshake, read."""
    sio = gateway.engine.sio

    async def run(path: str, auth: dict | None, packets: list[str]) -> list[tuple]:
        if path == "polling":
            return await _polling(base_url, auth, packets)
        sio.instrumented = path == "library"  # the library's dispatch, as with an Admin UI
        try:
            return await _websocket(base_url, auth, packets)
        finally:
            sio.instrumented = False

    return run


CASES = {
    "usual": [
        "21" + JOIN,
        '22["leave_room",{"roomId":"availability-s1"}]',
        "23" + JOIN,
        "24" + JOIN,  # again: already in it
    ],
    "ack ids": [
        "2123456789012345678" + JOIN,  # 18 digits: the short path
        "21234567890123456789" + JOIN,  # 19: the library reads it
        "2999999999999999999999" + JOIN,  # 21
        "20" + JOIN,
        "2007" + JOIN,  # leading zeros: read as 7
        "2\u0661\u0662" + JOIN,  # digits that are not ASCII
    ],
    "no ack asked": [
        "2" + JOIN,
        '2["no_such_event"]',
        '2["join_room",{"roomId":"not a room"}]',
        '2["connect",{}]',
        "2[]",
        '21["leave_room",{"roomId":"availability-s1"}]',
    ],
    "names refused": [
        "21[]",
        "22[1,{}]",
        "23[null]",
        '24["connect",{}]',
        '25["disconnect"]',
        '26["newListener"]',
        '27["disconnecting"]',
        '28["no_such_event",{}]',
        '29{"roomId":"availability-s1"}',
        '210"join_room"',
        "2117",
        '212["' + "x" * 100 + '"]',  # a long name, cut in the answer
    ],
    "payloads": [
        '21["join_room"]',
        '22["join_room",null]',
        '23["join_room",{"roomId":"availability-s1"},{}]',
        '24["join_room","availability-s1"]',
        '25["join_room",{"roomId":"availability-s1","extra":1}]',
        '26["join_room",{"roomId":"availability-s1","roomId":"user-u2"}]',  # the last key wins
        '27["join_room",{"roomId":"user-u2","roomId":"availability-s2"}]',
        '28["join_room",{"roomId":"availability-s1","lastEventId":"nonsense"}]',
        '29["join_room",{"roomId":"reservation-r404"}]',  # the store says: not found
        '210["join_room",{"roomId":"user-u2"}]',  # forbidden
        '211["join_room",{"roomId":"availability-\\u00732"}]',  # an escaped letter
        '212["leave_room",{"roomId":"user-u2"}]',
        '213["authenticate",{"token":"not a token"}]',  # a refused refresh: auth_error
        "214" + JOIN,  # still served as before
    ],
    "json edges": [
        '21["join_room",{"roomId":NaN}]',
        '22["join_room",{"roomId":Infinity}]',
        '23["join_room",{"roomId":-Infinity}]',
        '24["join_room",{"roomId":"availability-s1","lastEventId":123456789012345678901234567890}]',
        '25["join_room",{"roomId":1e400}]',
        '26["join_room",{"roomId":-0.0}]',
        '27["join_room",{"roomId":"\\ud800"}]',  # a lone surrogate
        '28["\\ud800x"]',  # ... in the name, which the `error` event repeats
        '29["join_room",{"roomId":"availability-s1","deep":' + "[" * 400 + "]" * 400 + "}]",
        '210["join_room",{"roomId":"availability-s1"}] \t\r\n',  # whitespace after
    ],
    "other namespaces": [
        '2/admin,1["x"]',  # not connected there
        '2/nope,2["x"]',
        '2/,3["join_room",{"roomId":"availability-s1"}]',
        '2/,["join_room",{"roomId":"availability-s2"}]',
        '24["leave_room",{"roomId":"availability-s2"}]',
    ],
    "binary": [
        '51-1["join_room",{"_placeholder":true,"num":0}]',  # its attachment never sent
        '50-2["join_room",{"roomId":"availability-s1"}]',
        '61-3[{"_placeholder":true,"num":0}]',  # a binary ack of nothing
        "24" + JOIN,
    ],
    # (what closes the connection alone: a long-polling client closed by the server is not
    # sent what was queued for it before, where a WebSocket is)
    "negative ack id": ["2-1" + JOIN],
    "spaced ack id": ["2 1" + JOIN],
    "not JSON whitespace after": ['211["join_room",{"roomId":"availability-s1"}]\u2028'],
    "not json": ['21["join_room"', "26" + JOIN],
    "trailing junk": ['21["join_room",{"roomId":"availability-s1"}]x', "26" + JOIN],
    "integer past 100 digits": ['21["join_room",{"roomId":' + "9" * 101 + "}]", "26" + JOIN],
    "nested past the limit": ['21["join_room",' + "[" * 100_000, "26" + JOIN],
}


@MANY
@pytest.mark.parametrize("case", list(CASES))
async def test_the_same_frames_get_the_same_answers_on_every_path(answers, token, case):
    """The short path against long-polling and against the library's dispatch: each ack,
    error and auth_error event, their order, and whether the connection ends."""
    auth = {"token": token("u1")}
    got = {path: await answers(path, auth, CASES[case]) for path in PATHS}
    assert got["websocket"] == got["polling"], case
    assert got["websocket"] == got["library"], case
    assert got["websocket"], case  # (something was answered, or the connection closed)


@MANY
async def test_before_authenticate_and_after_a_refusal_every_path_answers_alike(answers, token):
    packets = [
        "21" + JOIN,  # unauthenticated: auth_error, then the ack
        '22["leave_room",{"roomId":"availability-s1"}]',
        "2" + JOIN,  # no ack: the auth_error alone
        '23["authenticate",{"token":"bad"}]',
        "24" + JOIN,
        '25["authenticate",{"token":"' + token("u1", ttl=-10) + '"}]',  # expired
        "26" + JOIN,
        '27["authenticate",{"token":"' + token("u1") + '"}]',
        "28" + JOIN,  # now joined, at once
        '29["authenticate",{"token":"' + token("u2") + '"}]',  # another user: refused
        "210" + JOIN,
    ]
    got = {path: await answers(path, None, packets) for path in PATHS}
    assert got["websocket"] == got["polling"] == got["library"]
    acks = {entry[1]: entry[2][0] for entry in got["websocket"] if entry[0] == "ack"}
    assert acks["1"]["error"]["code"] == "unauthenticated"
    assert acks["8"]["ok"] is True and acks["10"]["ok"] is True
    assert acks["9"]["error"]["code"] == "identity_changed"


# -- ordering ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def held_store(gateway, allow: bool = False) -> AsyncIterator[asyncio.Event]:
    """The policy's word from the store on a reservation held until the event is set (then
    the store's, or with `allow` a yes)."""
    policy = gateway.sessions._joins._policy
    release = asyncio.Event()
    authorize = policy.authorize

    async def held(principal, room):
        await release.wait()
        return None if allow else await authorize(principal, room)

    policy.authorize = held
    try:
        yield release
    finally:
        release.set()
        policy.authorize = authorize


async def test_a_usual_join_behind_a_waiting_one_never_overtakes_it(gateway, base_url, token):
    """A join that waits for the store, then a usual join and a leave of the room the usual
    join entered: answered one by one, in order, the leave last (the socket is not left in
    the room by a join answered after it)."""
    async with held_store(gateway) as release:
        raw = await RawSocket(base_url).open()
        try:
            await raw.connect({"token": token("u1")})
            await raw.next_event("auth_success")
            await raw.send('421["join_room",{"roomId":"reservation-r404"}]')
            await raw.send("422" + JOIN)
            await raw.send('423["leave_room",{"roomId":"availability-s1"}]')
            await raw.send("424" + JOIN.replace("s1", "s2"))
            release.set()
            await raw.next_frame(lambda frame: frame.startswith("434["))
            acks = [f[:3] for f in raw.received if f.startswith("43")]
            assert acks == ["431", "432", "433", "434"], raw.received
            (sid,) = gateway.sessions._sessions
            assert "availability-s1" not in gateway.engine.rooms_of(sid)
            assert "availability-s2" in gateway.engine.rooms_of(sid)
        finally:
            await raw.close()


async def test_an_event_sent_right_after_a_replaying_join_comes_after_its_replay(
    gateway, base_url, token
):
    sent = [
        (
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"n": n}, "rooms": ["availability-s1"]}, None
            )
        )["eventId"]
        for n in range(3)
    ]
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1")})
        await raw.next_event("auth_success")
        replaying = ["join_room", {"roomId": "availability-s1", "lastEventId": sent[0]}]
        await raw.send("421" + json.dumps(replaying))
        await raw.send('422["leave_room",{"roomId":"availability-s1"}]')  # during its replay
        await raw.send("423" + JOIN)  # at once, after the leave
        await raw.next_frame(lambda frame: frame.startswith("433["))
        order = [
            frame[:3] if frame.startswith("43") else json.loads(frame[2:])[1]["eventId"]
            for frame in raw.received
            if frame.startswith("43") or frame.startswith('42["notification"')
        ]
        assert order == [*sent[1:], "431", "432", "433"]
        (sid,) = gateway.sessions._sessions
        assert "availability-s1" in gateway.engine.rooms_of(sid)
    finally:
        await raw.close()


async def test_joins_sent_during_a_handshakes_replay_wait_for_it(gateway, base_url, token):
    """A handshake with a cursor replays the user's room in the background: a usual join and
    a leave sent meanwhile are answered after `auth_success`, in order."""
    first = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"n": 0}, "rooms": ["user-u1"]}, None
    )
    for n in range(1, 4):
        await gateway.broadcaster.broadcast(
            {"event": "notification", "data": {"n": n}, "rooms": ["user-u1"]}, None
        )
    raw = await RawSocket(base_url).open()
    try:
        await raw.send("40" + json.dumps({"token": token("u1"), "lastEventId": first["eventId"]}))
        await raw.send("421" + JOIN)
        await raw.send('422["leave_room",{"roomId":"user-u1"}]')
        await raw.send("423" + JOIN.replace("s1", "s2"))
        await raw.next_frame(lambda frame: frame.startswith("433["))
        kinds = [
            f[:3] if f.startswith("43") else json.loads(f[2:])[0]
            for f in raw.received
            if f.startswith("42") or f.startswith("43")
        ]
        assert kinds == ["notification"] * 3 + ["auth_success", "431", "432", "433"], kinds
    finally:
        await raw.close()


# -- rate limiting ----------------------------------------------------------------------------
async def _metric(http, limit: str) -> float:
    async with http.get("/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f'realtime_rate_limited_total{{limit="{limit}"}}'):
                return float(line.split()[-1])
    return 0.0


RATE_PACKETS = [
    "21" + JOIN,  # the one the bucket holds (a burst of one)
    "22" + JOIN,  # the short path
    '23["join_room",{"roomId":"reservation-r404"}]',  # one that would wait
    '24["join_room",{"roomId":"availability-s1","lastEventId":"nonsense"}]',
    '25["leave_room",{"roomId":"availability-s1"}]',
    '26["no_such_event"]',
    '27["connect"]',  # a reserved name, refused on the library's way
    "2/,8" + JOIN,  # the namespace named: read by the library
    "2" + JOIN,  # no ack: counted too
    "21234567890123456789" + JOIN,
]


@pytest.mark.env(RATE_LIMIT_EVENTS="0.1", RATE_LIMIT_DISCONNECT="1000")
@pytest.mark.parametrize("path", PATHS)
async def test_each_event_is_counted_once_on_every_path(answers, http, token, path):
    before = await _metric(http, "events")
    got = await answers(path, {"token": token("u1")}, RATE_PACKETS)
    acks = [entry for entry in got if entry[0] == "ack"]
    assert [a[1] for a in acks] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "1234567890123456789",
        "999",
    ]
    assert acks[0][2][0]["ok"] is True
    assert {a[2][0]["error"]["code"] for a in acks[1:]} == {"rate_limited"}
    errors = [e for e in got if e[:2] == ("event", "error")]
    assert len(errors) == len(acks) - 1 + 1  # one per refusal, the ack-less one's too
    assert await _metric(http, "events") - before == len(RATE_PACKETS) - 1 + 1  # (+ LAST)


# -- the socket going away --------------------------------------------------------------------
@pytest.mark.env(BROADCAST_TOKEN="hostile-acks-service-token")
@pytest.mark.parametrize("order", ["/disconnect", "/revoke"])
async def test_events_after_an_operator_cut_the_user_are_not_answered(
    gateway, http, base_url, token, order
):
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1", jti="j-1")})
        await raw.next_event("auth_success")
        assert (await raw.call(1, "join_room", {"roomId": "availability-s1"}))["ok"] is True
        body = {"users": ["u1"]} if order == "/disconnect" else {"jti": "j-1", "until": 2**31}
        headers = {"Authorization": "Bearer hostile-acks-service-token"}
        async with http.post(order, json=body, headers=headers) as response:
            assert response.status == 202, await response.text()
        assert (await raw.next_event("auth_error"))["code"] == "revoked"
        await raw.next_frame(lambda frame: frame.startswith("41"))
        # what it sends on the same connection afterwards finds no socket: nothing is answered
        # (python-socketio's way), and the connection, left in no namespace, is the client's
        # to close (or the auth deadline's)
        await raw.send("422" + JOIN)
        await raw.send('423["leave_room",{"roomId":"availability-s1"}]')
        await raw.send("424[]")
        # a namespace CONNECT after them is answered: they were read, and dropped
        await raw.send("40")
        await raw.next_frame(lambda frame: frame.startswith("40{"))
        assert not [f for f in raw.received if f.startswith("43") and not f.startswith("431[")]
    finally:
        await raw.close()


async def test_a_socket_cut_while_its_join_waits_is_not_put_in_the_room(gateway, base_url, token):
    async with held_store(gateway, allow=True) as release:
        raw = await RawSocket(base_url).open()
        try:
            await raw.connect({"token": token("u1")})
            await raw.next_event("auth_success")
            (sid,) = gateway.sessions._sessions
            await raw.send('421["join_room",{"roomId":"reservation-r1"}]')
            await gateway.sessions.cut(lambda s, p: "cut" if s == sid else None)
            release.set()
            await raw.next_frame(lambda frame: frame.startswith("41"))
            assert sid not in gateway.sessions._sessions
            assert not gateway.engine.rooms_of(sid)
            # its answer, if any, is no success
            assert not [f for f in raw.received if f.startswith("431") and '"ok":true' in f]
        finally:
            await raw.close()


@pytest.mark.env(RATE_LIMIT_EVENTS="1000000")
async def test_events_after_the_token_expired_are_not_answered(gateway, base_url, token):
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1", ttl=1.2)})
        await raw.next_event("auth_success")
        assert (await raw.call(1, "join_room", {"roomId": "availability-s1"}))["ok"] is True
        await raw.next_frame(lambda frame: frame.startswith("41"), timeout=WAIT_S)
        await raw.send("422" + JOIN)
        await raw.send("40")
        await raw.next_frame(lambda frame: frame.startswith("40{"))
        assert [f[:3] for f in raw.received if f.startswith("43")] == ["431"]
    finally:
        await raw.close()


# -- the Admin UI -----------------------------------------------------------------------------
@pytest.mark.env(ADMIN_UI_USERNAME="ops", ADMIN_UI_PASSWORD="correct horse battery")
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_with_the_admin_ui_every_event_takes_the_librarys_path_once(
    gateway, base_url, token, transport
):
    """With an Admin UI the library's `_handle_event_internal` (which the instrumentation
    replaced, to report events) sees each event once, on both transports."""
    sio = gateway.engine.sio
    assert sio.instrumented
    seen: list[Any] = []
    internal = sio._handle_event_internal

    async def counting(server, sid, eio_sid, data, namespace, id):
        seen.append((data[0] if data else None, id))
        return await internal(server, sid, eio_sid, data, namespace, id)

    sio._handle_event_internal = counting
    packets = ["21" + JOIN, "2" + JOIN, '22["no_such_event"]', '23["connect"]']
    runner = _websocket if transport == "websocket" else _polling
    got = await runner(base_url, {"token": token("u1")}, packets)
    acks = [entry[1] for entry in got if entry[0] == "ack"]
    assert acks == ["1", "2", "3", "999"]
    assert [s[1] for s in seen] == [1, None, 2, 3, 999]


@pytest.mark.env(ADMIN_UI_USERNAME="ops", ADMIN_UI_PASSWORD="correct horse battery")
async def test_with_the_admin_ui_on_the_short_path_gives_a_coroutine(gateway, base_url, token):
    sio = gateway.engine.sio
    raw = await RawSocket(base_url).open()
    try:
        await raw.connect({"token": token("u1")})
        await raw.next_event("auth_success")
        (connection,) = sio.eio.sockets
        answering = sio.message_now(connection, "421" + JOIN)
        assert answering is not None
        await answering
        await raw.next_frame(lambda frame: frame.startswith("431["))
    finally:
        await raw.close()


# -- the official clients ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
async def test_the_official_clients_get_the_same_answers(gateway, connect, kind):
    if kind.startswith("js"):
        require("node")
    first = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"n": 0}, "rooms": ["availability-s1"]}, None
    )
    await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"n": 1}, "rooms": ["availability-s1"]}, None
    )
    client = await connect(kind)
    answers = await asyncio.gather(
        client.call("join_room", {"roomId": "availability-s1", "lastEventId": first["eventId"]}),
        client.call("join_room", {"roomId": "availability-s2"}),
        client.call("leave_room", {"roomId": "availability-s1"}),
        client.call("no_such_event", {"x": 1}),
        client.call("join_room", {"roomId": "user-u2"}),
        client.call("join_room", {"roomId": "reservation-r404"}),
    )
    codes = [a["ok"] if a["ok"] else a["error"]["code"] for a in answers]
    assert codes == [True, True, True, "invalid_payload", "forbidden", "not_found"], answers
    assert answers[0]["replayed"] == 1 and answers[0]["gap"] is False
    notifications = [p for name, p in client.log if name == "notification"]
    assert [n["n"] for n in notifications] == [1], notifications


@pytest.mark.env(MAX_ROOMS_PER_SOCKET="3", RATE_LIMIT_EVENTS="1000000")
@pytest.mark.parametrize("path", PATHS)
async def test_a_join_past_the_rooms_limit_is_refused_and_counted_once(answers, http, token, path):
    """The socket's own room and two more; then a usual join, one with a cursor and one on a
    reservation (both of which would wait) are each refused once, counted once."""
    before = await _metric(http, "rooms")
    got = await answers(
        path,
        {"token": token("u1")},
        [
            "21" + JOIN,
            "22" + JOIN.replace("s1", "s2"),
            "23" + JOIN.replace("s1", "s3"),
            '24["join_room",{"roomId":"availability-s4","lastEventId":"nonsense"}]',
            '25["join_room",{"roomId":"reservation-r404"}]',
            "26" + JOIN,  # one it is in: no refusal
        ],
    )
    acks = {entry[1]: entry[2][0] for entry in got if entry[0] == "ack"}
    codes = [acks[i]["ok"] or acks[i]["error"]["code"] for i in "123456"]
    assert codes == [True, True, "rate_limited", "rate_limited", "rate_limited", True], acks
    assert await _metric(http, "rooms") - before == 3


@MANY
@pytest.mark.parametrize("depth", [1, 100, 500])
async def test_an_event_named_by_a_nested_array_is_refused_alike(answers, token, depth):
    name = "[" * depth + "]" * depth
    packets = ["21[" + name + "]", "22[" + name + ',{"roomId":"availability-s1"}]']
    got = {path: await answers(path, {"token": token("u1")}, packets) for path in PATHS}
    assert got["websocket"] == got["polling"] == got["library"]
    assert [entry[1] for entry in got["websocket"] if entry[0] == "ack"] == ["1", "2", "999"]
