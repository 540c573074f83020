"""A hostile client against this session's changes (the EVENT reader, the join fast path, the
sliced fan-out, `Turns`, detached WebSockets, the auth deadline): each test names the defect
it shows, or says it checks what was found sound."""

from __future__ import annotations

import asyncio
import json

from tests.raw import RawPolling, RawSocket
from tests.test_hostile_first_hour import broadcast
from tests.test_transport import eventually


class HeldTurns:
    """Stands in for a `Turns` of the server (`connecting_turns`): every caller waits until
    the test lets them on, as a caller does behind a reconnect storm's thousands of connects.
    The wait is chosen, not raced."""

    def __init__(self) -> None:
        self.waiting = 0
        self.reached = asyncio.Event()
        self._go = asyncio.Event()

    async def take(self) -> None:
        self.waiting += 1
        self.reached.set()
        await self._go.wait()

    def release(self) -> None:
        self._go.set()


def namespace_sids(gateway, connection: str) -> list[str]:
    """Socket.IO sockets the manager still holds on `/` for this Engine.IO connection."""
    manager = gateway.engine.sio.manager
    return [
        sid
        for sid, eio_sid in manager.rooms.get("/", {}).get(None, {}).items()
        if eio_sid == connection
    ]


# (was a defect, fixed: Turns gating namespace connects, `GatewayServer._handle_connect`: a
# CONNECT waited for its turn *after* the check that its connection was still there, and
# nothing looked again once it was let on. A connection that closed meanwhile (here: a second
# POST while the first, holding `40{token}`, waits: the session is closed as overlapping; the
# same with the auth deadline, the connect timeout or the ping check during a reconnect storm)
# had its disconnect handled first (its environ forgotten); then the held CONNECT went on into
# python-socketio's `_handle_connect`: `manager.pre_connect` registered a socket for the gone
# connection, then `self.environ[eio_sid]` raised KeyError: a 500, and a socket on `/` kept
# for the process's life. Fixed: after its turn, a CONNECT whose connection is gone is dropped.)
async def test_a_connect_held_in_its_turn_for_a_connection_that_closed_meanwhile_leaves_nothing(
    gateway, base_url, token
):
    sio = gateway.engine.sio
    held = sio.eio.connecting_turns = HeldTurns()
    client = await RawPolling(base_url).open()
    try:
        connection = client._url.rsplit("sid=", 1)[1]
        connecting = asyncio.ensure_future(client.post("40" + json.dumps({"token": token("c1")})))
        await asyncio.wait_for(held.reached.wait(), 10)
        # a second POST while the first is handled: the session is closed, as Node's engine.io
        assert await client.post("2probe") == 400
        await eventually(lambda: connection not in sio.environ)
        held.release()
        status = await connecting
        assert await client.poll_until_closed() == 400  # its last poll took the CLOSE
        assert namespace_sids(gateway, connection) == [], "a socket kept for a gone connection"
        assert not gateway.sessions._sessions
        assert status in (200, 400), status  # not a 500 from a KeyError
    finally:
        await client.close()


# (was a defect, fixed: the handshake's lastEventId replay of a staff member's shop rooms,
# racing what the socket sends next): `join_room` and `authenticate` wait for the replay under way
# (`Sessions._after_replay`), `leave_room` does not. A `leave_room shop-s1` sent right after
# the CONNECT is answered `ok` while shop-s1 is still being replayed (not entered yet, so
# nothing to leave); the replay then enters it. The socket ends in the room its last ack said
# it left, and gets its events from then on.
# Fixed: `Sessions.leave` waits for the replay as `join` does.)
async def test_a_leave_sent_during_the_handshake_replay_is_not_undone_by_it(
    gateway, base_url, token
):
    seen = await broadcast(gateway, "shop-s1", "seen")
    await broadcast(gateway, "shop-s1", "missed")
    raw = await RawSocket(base_url).open()
    try:
        auth = {"token": token("st1", "staff", ["s1"]), "lastEventId": seen}
        await raw.send("40" + json.dumps(auth))
        await raw.send("421" + json.dumps(["leave_room", {"roomId": "shop-s1"}]))
        ack = json.loads((await raw.next_frame(lambda f: f.startswith("431[")))[3:])[0]
        assert ack["ok"], ack
        await raw.next_event("auth_success")
        (sid,) = list(gateway.sessions._sessions)
        assert "shop-s1" not in gateway.engine.rooms_of(sid), "left, then put back by the replay"
    finally:
        await raw.close()
