"""Malformed Engine.IO / Socket.IO frames from a raw client, over WebSocket and long-polling.

tests/test_transport.py and tests/test_socket.py already hold a frame that is not a packet
(`x`), a binary event and its attachments, CLOSE then CONNECT, reserved event names and a
message over the size limit from real clients; this goes beyond: truncated packets, unknown
packet types, bad namespaces, attachments that never come, invalid JSON, oversized frames
from a raw client, packets before the handshake or the namespace's CONNECT, thousands of tiny
frames, and Hypothesis-drawn text and bytes. After each case the server is alive
(`/health`), two clients connected before it (python over WebSocket, JS over long-polling),
in a room, still receive a broadcast, the gateway's sessions and open Engine.IO sockets are
back to what they were, and no answer anywhere said `internal`.
"""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gateways import GatewayProcess
from tests.raw import RawPolling, RawSocket
from tests.test_fuzz_payloads import UNLIMITED, OnLoop, bounded, fuzz, open_sockets, settled

pytestmark = UNLIMITED
ROOM = "availability-witness"
PROBE_S = 5.0


class Health:
    """What must hold after every case: the server answers, the witnesses receive."""

    def __init__(self, gateway, http, witnesses):
        self.gateway, self.http, self.witnesses = gateway, http, witnesses
        self.baseline = gateway.sessions.counts()
        self.sockets = open_sockets(gateway)
        self.sent = 0

    async def check(self) -> None:
        assert (await self.http.get("/health")).status == 200
        self.sent += 1
        await self.gateway.broadcaster.broadcast(
            {"event": "notification", "data": {"n": self.sent}, "rooms": [ROOM]}, None
        )
        for witness in self.witnesses:
            assert (await witness.next_event("notification"))["n"] == self.sent
        await settled(
            lambda: (
                self.gateway.sessions.counts() == self.baseline
                and open_sockets(self.gateway) == self.sockets
            )
        )


@pytest.fixture
async def health(gateway, http, connect):
    witnesses = [await connect("py-websocket", sub="w-py"), await connect("js-polling", sub="w-js")]
    for witness in witnesses:
        assert (await witness.call("join_room", {"roomId": ROOM}))["ok"] is True
    return Health(gateway, http, witnesses)


def never_internal(frames: list[str]) -> None:
    assert not [f for f in frames if '"internal"' in f], frames


async def authenticated_socket(base_url: str, token) -> RawSocket:
    raw = await RawSocket(base_url).open()
    assert (await raw.connect({"token": token("raw")})).startswith("40{")
    await raw.next_event("auth_success")
    return raw


async def outcome(raw: RawSocket, ack_id: int = 900) -> str:
    """ "open" when the socket still answers a valid join, "closed" when the server closed it."""
    try:
        await raw.send(f"42{ack_id}" + json.dumps(["join_room", {"roomId": "availability-p"}]))
    except (ConnectionResetError, RuntimeError):
        return "closed"
    prefix = f"43{ack_id}["
    try:
        frame = await raw.next_frame(lambda frame: frame.startswith(prefix), PROBE_S)
    except AssertionError:
        assert raw.closed.is_set(), f"neither answered nor closed; got {raw.received}"
        return "closed"
    assert json.loads(frame[len(prefix) - 1 :])[0]["ok"] is True
    return "open"


BIG_INT = '42["join_room",{"roomId":' + "1" * 200 + "}]"  # beyond python-engineio's 100 digits
WEBSOCKET_CASES = {
    # not a packet python-engineio can read: the connection ends
    "empty frame": ([""], "closed"),
    "truncated event JSON": (['42["join_room",{"roomId":"avail'], "closed"),
    "invalid JSON": (['42{"roomId":}'], "closed"),
    "unknown Socket.IO type": (['47["join_room",{}]'], "closed"),
    "Socket.IO type not a digit": (['4{"a":1}'], "closed"),
    "NUL after MESSAGE": (["4\x00"], "closed"),
    "negative ack id": (['4-1["join_room",{}]'], "closed"),
    "integer of 200 digits": ([BIG_INT], "closed"),
    # packets that mean nothing here: answered or ignored, the socket goes on
    "empty MESSAGE": (["4"], "open"),
    "EVENT without data": (["42"], "open"),
    "event named null": (["42[null]"], "open"),
    "empty event": (["42[]"], "open"),
    "CONNECT to an unknown namespace": (["40/nope,"], "open"),
    "EVENT to an unknown namespace": (['42/nope,["join_room",{}]'], "open"),
    "DISCONNECT of an unknown namespace": (["41/nope,"], "open"),
    "ACK nobody asked for": (["43[]", "431[]", '437["x"]'], "open"),
    "CONNECT_ERROR from a client": (['44{"message":"x"}'], "closed"),
    "truncated binary header": (["45", "451-"], "open"),
    "binary ack": (['461-[{"_placeholder":true,"num":0}]'], "open"),
    "unsolicited PONG, NOOP, UPGRADE": (["3", "6", "5", "3probe"], "open"),
    "client PING": (["2", "2probe"], "open"),
    "attachments that never come": (
        [f'45{n}-["join_room",{{"_placeholder":true,"num":0}}]' for n in (1, 3, 99, 999999999)],
        "open",
    ),
    "stray attachments": (["\x00binary as text", "4\x01"], "closed"),
}


@pytest.mark.parametrize("case", sorted(WEBSOCKET_CASES))
async def test_malformed_websocket_frames(base_url, gateway, token, health, no_errors_logged, case):
    frames, expected = WEBSOCKET_CASES[case]
    raw = await authenticated_socket(base_url, token)
    try:
        for frame in frames:
            await raw.send(frame)
        assert await outcome(raw) == expected
        never_internal(raw.received)
        assert not gateway.engine.sio._binary_packet  # no attachment kept for anyone
    finally:
        await raw.close()
    await health.check()


@pytest.mark.parametrize("frame", ["9", "42" + "[" * 5000 + "]" * 5000])
async def test_an_unreadable_frame_ends_the_connection_without_an_error_log(
    base_url, token, health, no_errors_logged, frame
):
    raw = await authenticated_socket(base_url, token)
    try:
        await raw.send(frame)
        assert await outcome(raw) == "closed"
    finally:
        await raw.close()
    await health.check()


@pytest.mark.parametrize("oversized", ["text", "binary", "event"])
async def test_a_frame_beyond_the_payload_limit_closes_only_its_connection(
    base_url, settings, token, health, oversized
):
    raw = await authenticated_socket(base_url, token)
    size = settings.max_payload_bytes + 1
    try:
        if oversized == "binary":
            await raw.send_bytes(b"\x00" * size)
        elif oversized == "text":
            await raw.send("4" + "x" * size)
        else:
            await raw.send("42" + json.dumps(["join_room", {"roomId": "y" * size}]))
        await raw.wait_closed()
    finally:
        await raw.close()
    await health.check()


async def test_an_event_before_the_namespace_connects_is_dropped(base_url, token, health):
    raw = await RawSocket(base_url).open()
    try:
        await raw.send("421" + json.dumps(["authenticate", {"token": token("early")}]))
        await raw.send('422["join_room",{"roomId":"availability-x"}]')
        # no namespace, no answer: the CONNECT that follows is the first thing answered
        assert (await raw.connect({"token": token("early")})).startswith("40{")
        await raw.next_event("auth_success")
        assert not [f for f in raw.received if f.startswith("43")]
        assert await outcome(raw) == "open"
    finally:
        await raw.close()
    await health.check()


async def test_thousands_of_tiny_frames(base_url, gateway, token, health):
    raw = await authenticated_socket(base_url, token)
    try:
        for n in range(3000):
            await raw.send(("3", "6", "4", '42["nope"]', "41/nope,")[n % 5])
        # every frame read, in order: the join behind them is answered
        assert await outcome(raw) == "open"
        errors = [f for f in raw.received if f.startswith('42["error"')]
        assert len(errors) == 1200  # `4` and `42["nope"]`, each answered once
        never_internal(raw.received)
    finally:
        await raw.close()
    await health.check()


# -- long-polling ----------------------------------------------------------------------------------
async def polling_socket(base_url: str, token) -> RawPolling:
    raw = await RawPolling(base_url).open()
    assert await raw.post("40" + json.dumps({"token": token("raw")})) == 200
    await raw.poll_until(lambda packet: '"auth_success"' in packet)
    return raw


JOIN_PROBE = "42900" + json.dumps(["join_room", {"roomId": "availability-p"}])


async def post_polling(raw: RawPolling, body: str | bytes) -> tuple[int, str]:
    """POST `body` as real clients do, with a long-poll outstanding, then a valid join: the
    POST's status, and "open" when the join is answered, "closed" when the session is
    gone."""
    polling = asyncio.create_task(raw.poll())
    try:
        answer = await asyncio.wait_for(raw._http.post(raw._url, data=body), PROBE_S)
        probe = await asyncio.wait_for(raw.post(JOIN_PROBE), PROBE_S)
    finally:
        await asyncio.wait_for(polling, PROBE_S)
    if probe != 200:
        return answer.status, "closed"
    try:
        packet = await raw.poll_until(lambda packet: packet.startswith("43900["), PROBE_S)
    except (AssertionError, TimeoutError):
        return answer.status, "closed"
    assert json.loads(packet[5:])[0]["ok"] is True
    return answer.status, "open"


async def close_polling(raw: RawPolling) -> None:
    """Leave as a client does, with Engine.IO's CLOSE (a client that just vanishes is kept
    until the ping timeout, by design)."""
    try:
        await asyncio.wait_for(raw.post("1"), PROBE_S)
    finally:
        await raw.close()


POLLING_CASES = {
    "empty body": ([""], "open"),
    "empty MESSAGE": (["4"], "open"),
    "EVENT without data": (["42"], "open"),
    "CONNECT to an unknown namespace": (["40/nope,"], "open"),
    "truncated binary header": (["45", "451-"], "open"),
    "attachments that never come": (['453-["join_room",{"_placeholder":true,"num":0}]'], "open"),
    "unsolicited PONG": (["3"], "open"),
    "NOOP from a client": (["6"], "closed"),
    "unknown Engine.IO type": (["9"], "closed"),
    "OPEN from a client": (["0"], "closed"),
    "truncated event JSON": (['42["join_room",{"roomId":"avail'], "closed"),
    "invalid JSON": (['42{"roomId":}'], "closed"),
    "unknown Socket.IO type": (['47["join_room",{}]'], "closed"),
    "integer of 200 digits": ([BIG_INT], "closed"),
    "a good packet, then a bad one": (['42["nope"]\x1e42{bad'], "closed"),
    "JSON where a Socket.IO packet belongs": (["4{}", "4null"], "closed"),
    "empty packets between separators": (["\x1e\x1e4\x1e"], "closed"),  # "" is no packet
    "seventeen packets in one payload": (["\x1e".join(['42["nope"]'] * 17)], "open"),
    "a thousand packets in one payload": (["\x1e".join(["3"] * 1000)], "open"),
    "more packets than a POST may carry": (["\x1e".join(["3"] * 1001)], "closed"),
    "a thousand NOOPs": (["\x1e".join(["6"] * 1000)], "closed"),
}


@pytest.mark.parametrize("case", sorted(POLLING_CASES))
async def test_malformed_polling_payloads(base_url, gateway, token, health, no_errors_logged, case):
    bodies, expected = POLLING_CASES[case]
    raw = await polling_socket(base_url, token)
    try:
        for body in bodies[:-1]:
            status, _ = await post_polling(raw, body)
            assert status in (200, 400), status
        status, state = await post_polling(raw, bodies[-1])
        assert status in (200, 400) and state == expected, (status, state)
        never_internal(raw.received)
        assert not gateway.engine.sio._binary_packet
    finally:
        await close_polling(raw)
    await health.check()


@pytest.mark.parametrize("body", ["6", "0", "9", '42{"a":', "3\x1e5\x1e6"])
async def test_a_refused_post_closes_its_session_at_once(base_url, gateway, token, body):
    """python-engineio closed the session of a POST it refused and waited for a poll to take
    the CLOSE before it answered: with none outstanding, the POST (and the server's shutdown)
    waited for ever. It is answered 400 at once and the session is closed (as Node's
    engine.io does, and the protocol's test suite checks): the next poll finds none."""
    baseline = open_sockets(gateway)
    raw = await polling_socket(base_url, token)
    sid = raw._url.rsplit("sid=", 1)[1]
    try:
        answer = await asyncio.wait_for(raw._http.post(raw._url, data=body), PROBE_S)
        assert answer.status == 400
        assert gateway.engine.sio.eio.sockets[sid].closed
        assert await asyncio.wait_for(raw.poll(), PROBE_S) == 400
        assert await asyncio.wait_for(raw.post(JOIN_PROBE), PROBE_S) == 400
        assert open_sockets(gateway) == baseline
    finally:
        await raw.close()


async def test_a_poll_waiting_when_a_post_is_refused_takes_the_close(base_url, gateway, token):
    raw = await polling_socket(base_url, token)
    try:
        polling = asyncio.create_task(raw.poll())
        [socket_] = [s for s in gateway.engine.sio.eio.sockets.values() if not s.upgraded]
        await settled(lambda: socket_.queue.waited_on())
        assert await asyncio.wait_for(raw.post("6"), PROBE_S) == 400
        assert await asyncio.wait_for(polling, PROBE_S) == 200
        assert raw.received[-1] == "1"  # Engine.IO's CLOSE
        assert await asyncio.wait_for(raw.poll(), PROBE_S) == 400
    finally:
        await raw.close()


@pytest.mark.parametrize("kind", ["websocket", "polling"])
async def test_a_client_that_leaves_its_namespace_is_closed(base_url, gateway, token, kind):
    """`41` (DISCONNECT) from a client that keeps the connection: the JS and python clients
    close it themselves after their last namespace; one that does not is closed, or it would
    hold a connection with no session (outside the per-user limit, past the auth deadline)."""
    baseline = gateway.sessions.counts()
    if kind == "websocket":
        raw = await authenticated_socket(base_url, token)
        try:
            await raw.send("41")
            await raw.wait_closed()
            assert raw.received[-1] == "1"  # Engine.IO's CLOSE: not to come back
        finally:
            await raw.close()
    else:
        raw = await polling_socket(base_url, token)
        try:
            polling = asyncio.create_task(raw.poll())
            assert await asyncio.wait_for(raw.post("41"), PROBE_S) == 200
            assert await asyncio.wait_for(polling, PROBE_S) == 200
            assert raw.received[-1] == "1"
            assert await asyncio.wait_for(raw.poll(), PROBE_S) == 400
        finally:
            await raw.close()
    await settled(lambda: gateway.sessions.counts() == baseline)


async def test_an_oversized_post_closes_the_session(base_url, settings, token, health):
    raw = await polling_socket(base_url, token)
    try:
        big = "4" + "x" * (settings.max_payload_bytes + 1)
        # python-engineio's answer, and the session is closed
        assert await post_polling(raw, big) == (400, "closed")
    finally:
        await close_polling(raw)
    await health.check()


@pytest.mark.parametrize(
    "query",
    [
        "EIO=4&transport=polling&sid=no-such-session",
        "EIO=4&transport=websocket&sid=no-such-session",
        "EIO=3&transport=polling",
        "EIO=5&transport=polling",
        "transport=polling",
        "EIO=4&transport=carrier-pigeon",
        "EIO=4&transport=polling&sid=" + "A" * 4000,
        "EIO=4&transport=polling&sid=%00%ff",
    ],
)
async def test_requests_before_any_handshake_are_refused(base_url, http, health, query):
    for method in ("GET", "POST"):
        answer = await http.request(method, f"/socket.io/?{query}", data="40")
        assert answer.status == 400, (method, answer.status)
    await health.check()


# -- Hypothesis: anything at all on the wire -------------------------------------------------------
PACKET_PREFIXES = ["", "4", "40", "42", "43", "45", "46", "1-", "42/", "2", "3", "5", "6"]


def frame_texts() -> st.SearchStrategy[str]:
    junk = st.text(max_size=80) | st.text(alphabet='[]{}",:0123456789-/_\\ntrue', max_size=80)
    return st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PACKET_PREFIXES), junk)


async def test_fuzzed_websocket_frames(request, base_url, gateway, token, health):
    on_loop, counter = OnLoop(), [0]

    async def case(frames: list[str | bytes]) -> None:
        raw = await authenticated_socket(base_url, token)
        try:
            for frame in frames:
                if isinstance(frame, bytes):
                    await raw.send_bytes(frame)
                else:
                    await raw.send(frame)
            assert await outcome(raw) in ("open", "closed")
            never_internal(raw.received)
        finally:
            await raw.close()

    @bounded(400)
    @given(st.lists(frame_texts() | st.binary(max_size=64), min_size=1, max_size=4))
    def run(frames: list[str | bytes]) -> None:
        counter[0] += 1
        on_loop(case(frames))

    assert await fuzz(request, "websocket frame sequences", run, counter) > 0
    assert not gateway.engine.sio._binary_packet
    await health.check()


async def test_fuzzed_polling_payloads(request, base_url, gateway, token, health):
    on_loop, counter = OnLoop(), [0]

    async def case(body: bytes) -> None:
        raw = await polling_socket(base_url, token)
        try:
            status, _ = await post_polling(raw, body)
            assert status in (200, 400), status
            never_internal(raw.received)
        finally:
            await close_polling(raw)

    bodies = st.lists(frame_texts(), min_size=1, max_size=5).map(
        lambda packets: "\x1e".join(packets).encode()
    ) | st.binary(max_size=64)

    @bounded(150)
    @given(bodies)
    def run(body: bytes) -> None:
        counter[0] += 1
        on_loop(case(body))

    assert await fuzz(request, "long-polling bodies", run, counter) > 0
    await health.check()


# -- memory, as the kernel sees it -----------------------------------------------------------------
async def test_memory_stays_bounded_under_malformed_traffic(free_port, tmp_path):
    """A gateway process fed 600 malformed connections (and a warm-up of 200): its resident
    memory after is within 10% of where it was after the warm-up."""
    env = {
        "STORE_PATH": str(tmp_path / "r.db"),
        "JWT_SECRET": "fuzz-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        "RATE_LIMIT_CONNECTIONS": "1000000",
        "RATE_LIMIT_EVENTS": "1000000",
    }
    gateway = await GatewayProcess(env, free_port()).start()
    frames = ["42{bad", "45999-[]", "40/nope,", '42["x"]', "9", "4" + "z" * 50_000, "3"]

    async def storm(count: int) -> None:
        async def one(n: int) -> None:
            try:
                raw = await RawSocket(gateway.url).open()
            except aiohttp.ClientError:
                return
            try:
                await raw.send("40")
                for frame in frames[n % len(frames) :]:
                    await raw.send(frame)
                    await raw.send_bytes(os.urandom(32))
            except (ConnectionResetError, RuntimeError):
                pass
            finally:
                await raw.close()

        for start in range(0, count, 50):
            await asyncio.gather(*(one(n) for n in range(start, start + 50)))

    try:
        await storm(200)
        warm = gateway.memory_kb("VmRSS")
        await storm(600)
        after = gateway.memory_kb("VmRSS")
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{gateway.url}/health")).status == 200
        print(f"gateway RSS after warm-up {warm} kB, after 600 malformed connections {after} kB")
        assert after <= warm * 1.10, (warm, after)
    finally:
        await gateway.stop()
