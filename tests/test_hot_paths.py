"""The short cuts on the paths every client takes (an event read without the library's packet
object, a join answered without the store, room names parsed once) answer exactly as the long
way does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from realtime import rooms
from realtime.errors import GatewayError
from tests.raw import RawSocket

JOIN = '["join_room",{"roomId":"availability-s1"}]'


@contextlib.asynccontextmanager
async def authenticated(base_url: str, token: str) -> AsyncIterator[RawSocket]:
    """A raw WebSocket client, authenticated in the handshake; closed on the way out."""
    raw = await RawSocket(base_url).open()
    try:
        assert (await raw.connect({"token": token})).startswith("40{")
        await raw.next_event("auth_success")
        yield raw
    finally:
        await raw.close()


@pytest.mark.parametrize(
    ("ack_id", "answered_as"),
    [
        ("7", "7"),
        ("0", "0"),
        ("123456789012345678", "123456789012345678"),  # the longest the short cut reads
        ("1234567890123456789012345", "1234567890123456789012345"),  # read by the library
        ("\u0661\u0662", "12"),  # Arabic-Indic digits: python-socketio reads them as 12
    ],
)
async def test_an_event_is_acknowledged_with_the_id_the_library_reads(
    base_url, token, ack_id, answered_as
):
    async with authenticated(base_url, token("c1")) as raw:
        await raw.send(f"42{ack_id}{JOIN}")
        frame = await raw.next_frame(lambda frame: frame.startswith("43"))
        assert frame.startswith(f"43{answered_as}[{{")
        assert '"ok":true' in frame and '"roomId":"availability-s1"' in frame


async def test_an_event_on_the_namespace_named_explicitly_is_answered_too(base_url, token):
    async with authenticated(base_url, token("c1")) as raw:
        await raw.send(f"42/,5{JOIN}")
        frame = await raw.next_frame(lambda frame: frame.startswith("43"))
        assert frame.startswith("435[") and '"ok":true' in frame
        await raw.send(JOIN.join(("42", "")))  # no ack id: joined, nothing answered
        assert (await raw.call(6, "leave_room", {"roomId": "availability-s1"}))["ok"] is True
        assert [f[:4] for f in raw.received if f.startswith("43")] == ["435[", "436["]


@pytest.mark.parametrize(
    "frame",
    [
        '42["join_room"',
        "427[",
        '42[{"a":}]',
        '421["join_room",{"roomId":"availability-s1"}]x',  # read whole, then refused
        '421["join_room",' + "[" * 100_000,  # nested past the decoder's recursion limit
    ],
)
async def test_an_event_that_is_not_json_closes_the_connection_as_before(base_url, token, frame):
    async with authenticated(base_url, token("c1")) as raw:
        await raw.send(frame)
        await raw.wait_closed()


async def test_a_join_answers_the_rooms_newest_event_fast_or_not(connect, client_kind):
    client = await connect(client_kind, sub="c1")
    first = await client.call("join_room", {"roomId": "availability-s9"})
    assert first["ok"] is True and first["replayed"] == 0
    again = await client.call("join_room", {"roomId": "availability-s9"})  # a member already
    assert again == first
    other = await connect(client_kind, sub="c2")
    assert await other.call("join_room", {"roomId": "availability-s9"}) == first


async def test_a_refused_join_is_refused_on_the_short_path_too(connect, client_kind):
    client = await connect(client_kind, sub="c1")
    for room, code in [
        ("shop-s1", "forbidden"),
        ("user-c2", "forbidden"),
        ("admin-general", "forbidden"),
        ("nowhere-1", "unknown_room"),
    ]:
        answer = await client.call("join_room", {"roomId": room})
        assert answer["ok"] is False and answer["error"]["code"] == code, (room, answer)
        # asked again, now that the name is parsed once: the same answer
        assert await client.call("join_room", {"roomId": room}) == answer


def test_room_names_parsed_are_kept_within_bounds():
    for n in range(rooms.PARSED_MAX * 2 + 7):
        room = rooms.parse_room(f"availability-bound{n}")
        assert room.kind == "availability" and room.key == f"bound{n}"
        assert room.name == f"availability-bound{n}"
    assert len(rooms._PARSED) <= rooms.PARSED_MAX
    with pytest.raises(GatewayError) as refused:
        rooms.parse_room("availability-")
    assert refused.value.code == "unknown_room"
    assert "availability-" not in rooms._PARSED
    assert rooms.parse_room("admin-general").name == "admin-general"


async def test_the_usual_event_is_answered_as_it_is_read_and_the_others_after_a_wait(
    gateway, base_url, token
):
    """`GatewayServer.message_now`: an event the namespace answers at once is handled without
    a coroutine (None); one whose answer waits (a replay, the store's word on a reservation)
    or that the library reads comes back as the coroutine that answers it."""
    sio = gateway.engine.sio
    event = await gateway.broadcaster.broadcast(
        {"event": "notification", "data": {"n": 1}, "rooms": ["availability-s1"]}, None
    )
    async with authenticated(base_url, token("c1")) as raw:
        (connection,) = sio.eio.sockets
        now = {
            "1": JOIN,
            "2": '["nope",{}]',  # unknown: refused at once
            "3": '["join_room","availability-s1"]',  # not an object: refused at once
        }
        for ack_id, body in now.items():
            assert sio.message_now(connection, f"42{ack_id}{body}") is None, body
        later = {
            "4": json.dumps(
                ["join_room", {"roomId": "availability-s1", "lastEventId": event["eventId"]}]
            ),
            "5": '["join_room",{"roomId":"reservation-r404"}]',  # the store says: not found
            "": '["leave_room",{"roomId":"availability-s1"}]',  # no ack asked; a wait
            "6": '["connect",{}]',  # a reserved name: refused the library's way
            "/,7": JOIN,  # the namespace named: the library reads it
            "1234567890123456789": JOIN,  # an id longer than the short cut reads
        }
        for ack_id, body in later.items():
            answering = sio.message_now(connection, f"42{ack_id}{body}")
            assert answering is not None, body
            await answering
        await raw.next_frame(lambda frame: frame.startswith("431234567890123456789["))
        answers = {
            frame[2 : frame.index("[")]: json.loads(frame[frame.index("[") :])[0]
            for frame in raw.received
            if frame.startswith("43")
        }
        assert answers["1"]["ok"] is True
        assert answers["2"]["error"]["code"] == "invalid_payload"
        assert answers["3"]["error"]["code"] == "invalid_payload"
        assert answers["4"]["ok"] is True and "gap" in answers["4"]  # a join with a cursor
        assert answers["5"]["error"]["code"] == "not_found"
        assert answers["6"]["error"]["code"] == "invalid_payload"
        assert answers["7"]["ok"] is True and answers["1234567890123456789"]["ok"] is True
        assert len(answers) == 8  # each asked for, once


async def test_an_event_waiting_for_its_answer_holds_back_the_next_one(gateway, base_url, token):
    """One socket's events one at a time: a join that replays (a coroutine awaited by the
    socket's reader) is answered, its replay first, before a usual join sent right behind it
    (answered as it is read, once it is)."""
    sent = [
        (
            await gateway.broadcaster.broadcast(
                {"event": "notification", "data": {"n": n}, "rooms": ["availability-s1"]}, None
            )
        )["eventId"]
        for n in range(3)
    ]
    async with authenticated(base_url, token("c1")) as raw:
        replaying = ["join_room", {"roomId": "availability-s1", "lastEventId": sent[0]}]
        await raw.send("421" + json.dumps(replaying))
        await raw.send('422["join_room",{"roomId":"availability-s2"}]')
        await raw.send('423["nope"]')
        await raw.next_frame(lambda frame: frame.startswith("433["))
        order = [
            frame[:3] if frame.startswith("43") else json.loads(frame[2:])[1].get("eventId")
            for frame in raw.received
            if frame.startswith("43") or frame.startswith('42["notification"')
        ]
        assert order == [*sent[1:], "431", "432", "433"]


async def test_hostile_frames_on_the_short_path(base_url, token):
    async with authenticated(base_url, token("c1")) as raw:
        # a binary frame that looks like an event: not one (the protocol has none), ignored
        await raw.send_bytes(b'421["join_room",{"roomId":"availability-s1"}]')
        # a huge room name, within the payload limit: refused as any invalid payload
        await raw.send('422["join_room",{"roomId":"' + "a" * 100_000 + '"}]')
        # whitespace after the JSON: python-socketio reads it
        await raw.send('423["join_room",{"roomId":"availability-s1"}] \n')
        # two payloads, and an event with no payload
        await raw.send('424["join_room",{"roomId":"availability-s1"},{}]')
        await raw.send('425["join_room"]')
        answers = {}
        for ack_id in "2345":
            frame = await raw.next_frame(lambda frame, a=ack_id: frame.startswith(f"43{a}["))
            answers[ack_id] = json.loads(frame[3:])[0]
        assert answers["2"]["error"]["code"] == "invalid_payload"
        assert answers["3"]["ok"] is True
        assert answers["4"]["error"]["code"] == "invalid_payload"
        assert answers["5"]["error"]["code"] == "invalid_payload"
        assert not [f for f in raw.received if f.startswith("431")]
        # each refusal is also an `error` event, sent before its acknowledgement
        errors = [f for f in raw.received if f.startswith('42["error"')]
        assert len(errors) == 3
        assert raw.received.index(errors[0]) < raw.received.index(
            next(f for f in raw.received if f.startswith("432["))
        )
