"""The short cuts on the paths every client takes (an event read without the library's packet
object, a join answered without the store, room names parsed once) answer exactly as the long
way does."""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize("frame", ['42["join_room"', "427[", '42[{"a":}]'])
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
