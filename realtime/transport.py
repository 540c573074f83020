"""Adjustments to python-socketio and python-engineio, kept in this one place.

- Client events and lifecycle events: python-socketio hands a client's event to the same
  `trigger_event` as its own lifecycle calls, so a client could send an event named `connect`
  or `disconnect` and reach those handlers. `GatewayServer` hands a client event with a
  reserved name (or a name that is not a string) over as `RefusedEventName` instead.
- Binary events: the protocol has none, and python-socketio would keep every attachment a
  client announces until the packet completes; `GatewayServer` refuses them at once.
- Transport lifecycle: the gateway is told when an Engine.IO connection opens and closes
  (`TransportControl.watch`), so that a connection that never authenticates is closed.
- The emit path (`TransportControl.deliver`): python-socketio encodes an event once but then
  starts one task per recipient and waits for them all, and python-engineio's writer wakes once
  per packet. Here an event is encoded once (Socket.IO packet, Engine.IO packet and, for
  WebSocket recipients, the frame: server frames are unmasked, so the bytes are the same for
  everyone) and handed to each recipient's `Outbox` in one synchronous pass. Acks, the
  library's own packets and the gateway's control events enter the same outboxes in call
  order, so each socket's order holds.
- Each Engine.IO socket becomes a `GatewaySocket` when it opens: python-engineio's socket with
  a WebSocket loop that has no writer task (its `Outbox` writes the frame straight to the
  connection when nothing waits before it, and drains through aiohttp when the connection
  pushes back), no task per received message, a timer instead of a task for its pings, and
  long-polls answered at once, without a timer, when packets are already waiting.
- WebSocket per-message compression is negotiated only with `WS_COMPRESSION` (python-engineio's
  aiohttp driver always negotiates it, which costs about four times the memory per connection).
- Slow clients: python-engineio's per-socket queue of outgoing packets has no bound. Each
  `Outbox` is bounded in packets and in bytes; past either bound the client's transport is cut.
- Long-polling responses carry at most `engineio.payload.Payload.max_decode_packets` (16)
  packets: python-engineio clients refuse a longer payload ("Unexpected packet from server")
  and drop the connection, which a burst of events (or a replay) would otherwise cause.
- Requests: GET on the Engine.IO endpoint goes to `TransportControl.route`, which serves
  WebSocket handshakes, upgrades and long-polls itself (python-engineio's checks, packets and
  answers, a short stack per connection) and leaves everything else to python-engineio.
- Long-polling clients that close are answered at once (see `_install_lifecycle`).
- Long-polling POSTs (`TransportControl._post`): the body read to its length (the library
  read what had arrived), one POST of a session at a time and none once it upgraded (its
  events one at a time), up to `PACKETS_PER_POST` packets each (python-engineio reads at
  most 16 and drops the rest: a JS client that emits a burst sends more); one it refuses is
  answered 400 at once and its session closed (the library waited for a poll to take the
  CLOSE), and a payload that is not packets closes the session as on WebSocket (the library
  logged it as its own error). A client that leaves its last namespace is closed
  (`GatewayServer._handle_eio_message`).
- Handshakes and polls follow the protocol where python-engineio did not (its test suites,
  `server/conformance.py`): a transport required, a duplicate poll closing the session, a
  poll after a missed pong refused, `pingInterval` in milliseconds, other methods 400.
- One upgrade per session: another WebSocket for a session upgrading, upgraded or closing is
  refused (python-engineio upgraded each, and the extra ones outlived the session).
- The Admin UI (`AdminReport`): shown what an allow-list chooses (never a session id or a
  token), its logins bounded, a connection whose login was refused takes no other.
- Closing a transport (`close`) is not a Socket.IO disconnect: clients reconnect by themselves
  and catch up by replay.

`tests/test_transport.py` fails if the library internals this relies on move.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import hmac
import itertools
import json
import logging
import os
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import engineio
import engineio.async_socket
import engineio.exceptions
import engineio.json
import engineio.packet
import engineio.payload
import orjson
import socketio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from realtime.config import Settings
from realtime.errors import GatewayError
from realtime.limits import TOO_MANY_CONNECTIONS, Admission, LoginGuard
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)

NAMESPACE = "/"
ADMIN_NAMESPACE = "/admin"  # the Socket.IO Admin UI's, when ADMIN_UI_USERNAME is set
# in a connection's environ when it opened past its address's rate (`TransportControl.watch`)
RATE_LIMITED = "gateway.rate_limited"
_PAST_ITS_RATE = web.RequestKey("past_its_rate", bool)

# Event names the Socket.IO libraries (server, python and JS clients) give a meaning of their own.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
) | frozenset(socketio.base_server.BaseServer.reserved_events)


class RefusedEventName:
    """What a namespace receives in place of a client event's name when the event cannot be
    dispatched: its name is reserved, or not a string, or it is a binary event. It can be
    refused, never mistaken for the server's own lifecycle events."""

    __slots__ = ("name", "reason")

    def __init__(self, name: Any, reason: str):
        self.name = name
        self.reason = reason  # what the refusal says

    def __str__(self) -> str:
        return str(self.name)


# Socket.IO packet types with binary attachments (BINARY_EVENT, BINARY_ACK)
_BINARY_PACKETS = (str(socketio.packet.BINARY_EVENT), str(socketio.packet.BINARY_ACK))


class GatewayServer(socketio.AsyncServer):
    """python-socketio's server with the gateway's rules for what clients send (`rules`,
    on by default): binary events refused, reserved event names never reaching the
    lifecycle handlers, a client that leaves its last namespace closed. Without them (the
    conformance app) it is the protocol's own server: binary events and acks carried, and an
    EVENT that is not a non-empty array with a name closes the connection."""

    # with the Admin UI, client events take the library's path, where it reports them
    instrumented = False
    # Engine.IO connections that may connect no namespace again (a refused Admin UI login:
    # another try takes another connection), and how one that tries is ended
    _refused_for_good: set[str] | None = None
    end_connection: Callable[[str], None] | None = None

    def __init__(self, *args: Any, rules: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rules = rules

    def refuse_connects(self, eio_sid: str) -> None:
        """From now on, a namespace CONNECT on this connection ends it, unanswered. (The
        official clients close a connection whose only namespace was refused themselves: it
        is not closed under them, which would fail the CLOSE they send.)"""
        if self._refused_for_good is None:
            self._refused_for_good = set()
        self._refused_for_good.add(eio_sid)

    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        if self._refused_for_good and eio_sid in self._refused_for_good:
            if self.end_connection is not None:
                self.end_connection(eio_sid)
            return
        namespace = namespace or NAMESPACE
        if not (
            namespace in self.handlers
            or namespace in self.namespace_handlers
            or self.namespaces == "*"
            or namespace in self.namespaces
        ):
            # the protocol's refusal, an object with a message (python-socketio sends the
            # string "Unable to connect", which clients read no message from)
            refusal = {"message": "Invalid namespace"}
            await self._send_packet(
                eio_sid,
                self.packet_class(socketio.packet.CONNECT_ERROR, refusal, namespace=namespace),
            )
            return
        await super()._handle_connect(eio_sid, namespace, data)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            socket.namespaced = True  # its connect timeout has passed

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        if self._refused_for_good:
            self._refused_for_good.discard(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # The protocol has no binary events, and python-socketio would hold every attachment
        # a client announces (a count of up to nine digits) until the packet is complete: a
        # binary event is refused at once and its attachments never kept.
        if eio_sid not in self.environ:
            return  # read after its transport closed: python-socketio forgot it (no session)
        if not self.rules:
            await super()._handle_eio_message(eio_sid, data)
            return
        if isinstance(data, (bytes, bytearray)):
            return  # an attachment of a binary packet refused below
        if isinstance(data, str) and data[:1] in _BINARY_PACKETS:
            await self._refuse_binary(eio_sid, data)
            return
        if not isinstance(data, str) or data[:1] != "1":
            await super()._handle_eio_message(eio_sid, data)
            return
        # DISCONNECT: a client that leaves its last namespace has no more use for the
        # connection (the JS and python clients close it then); one that kept it would hold
        # it with no session, outside the per-user limit
        connected = self._in_a_namespace(eio_sid)
        await super()._handle_eio_message(eio_sid, data)
        socket = self.eio.sockets.get(eio_sid)
        if connected and not self._in_a_namespace(eio_sid) and socket is not None:
            if not (socket.closing or socket.closed):
                await self.eio.disconnect(eio_sid)

    def _in_a_namespace(self, eio_sid: str) -> bool:
        return any(self.manager.sid_from_eio_sid(eio_sid, n) for n in self.manager.rooms)

    async def _refuse_binary(self, eio_sid: str, data: str) -> None:
        try:
            header = self.packet_class(encoded_packet=data)
        except Exception:
            return  # not even a packet: nothing to answer
        if header.packet_type == socketio.packet.BINARY_EVENT:
            refused = RefusedEventName("binary event", "binary events are not accepted")
            await super()._handle_event(eio_sid, header.namespace, header.id, [refused])

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        # Client events, and only they, enter here (python-socketio's own `connect` and
        # `disconnect` calls come from `_handle_connect` / `_handle_disconnect`).
        if not self.rules:
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                raise ValueError("an EVENT is an array that starts with its name")
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        if not isinstance(data, list) or not data:
            data = [RefusedEventName(None, "an event needs a name")]
        elif not isinstance(data[0], str):
            data = [RefusedEventName(data[0], "an event name must be a string"), *data[1:]]
        elif data[0] in RESERVED_EVENTS:
            refused = RefusedEventName(data[0], f"the event name {data[0]!r} is reserved")
            data = [refused, *data[1:]]
        handler = self.namespace_handlers.get(namespace or NAMESPACE)
        if (
            namespace not in (None, NAMESPACE)
            or handler is None
            or self.async_handlers
            or self.instrumented
        ):
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        # python-socketio's `_handle_event` and `_handle_event_internal` for the gateway's
        # namespace, which answers every event itself: the same checks and the same ACK,
        # without the library's dispatch chain (a third of an acknowledged event's cost)
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if not self.manager.is_connected(sid, NAMESPACE):
            return
        answer = await handler.trigger_event(data[0], sid, *data[1:])
        if id is not None:
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                arguments = [] if answer is None else [answer]
                socket.queue.put_nowait(
                    engineio.packet.Packet(
                        engineio.packet.MESSAGE, f"3{id}" + FastJson.dumps(arguments)
                    )
                )


class FastJson:
    """The JSON of Socket.IO packets (python-socketio takes a module with these two calls).
    Written by orjson, about ten times faster, or by the standard library where orjson
    refuses (integers beyond 64 bits, keys that are not strings). Read as python-engineio
    reads it: orjson would read a 30-digit integer as a float."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def loads(text: str, **_: Any) -> Any:
        return _DECODER.decode(text)


# python-engineio's `json.loads` (integers of at most 100 digits), made once rather than per call
_DECODER = json.JSONDecoder(parse_int=engineio.json._safe_int)


class GatewayPacket(socketio.packet.Packet):
    json = FastJson


@dataclasses.dataclass(frozen=True)
class AdminView:
    """What the Admin UI is shown of the sockets' traffic and how its logins are bounded
    (the gateway's policies, handed to the engine): `received(event, args)` gives a client
    event as shown (`[name, *args]`), `sent(event, payload)` an event sent; `logins` bounds
    failed logins; `refused(reason, address)` is told of each refused login."""

    received: Callable[[Any, list[Any]], list[Any]]
    sent: Callable[[str, Any], Any]
    logins: LoginGuard
    refused: Callable[[str, str], None]


def create_socketio_server(
    settings: Settings, tasks: TaskKeeper, admin_view: AdminView | None = None
) -> tuple[socketio.AsyncServer, TransportControl]:
    """The Socket.IO server, with the adjustments of this module installed; the Admin UI's
    namespace too when settings turn it on (`admin_view`: what it is shown)."""
    client_manager = None
    if settings.redis_url:
        client_manager = socketio.AsyncRedisManager(settings.redis_url)
    sio = GatewayServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        serializer=GatewayPacket,
        # Events of one socket are handled in arrival order: `authenticate` then `join_room`
        # never race.
        async_handlers=False,
        # None: same origin only (clients that send no Origin, like mobile SDKs, pass)
        cors_allowed_origins=list(settings.cors_origins) or None,
        max_http_buffer_size=settings.max_payload_bytes,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        logger=False,
        engineio_logger=False,
    )
    transports = TransportControl(
        sio,
        settings.ws_compression,
        Bounds(settings.client_backlog_max, settings.client_backlog_max_bytes),
        tasks,
        settings.connect_timeout_s,
    )
    if settings.admin_ui_username is not None and settings.admin_ui_password is not None:
        if admin_view is None:
            raise ValueError("the Admin UI needs a view of the gateway's events")
        admin = AdminReport(
            sio,
            settings.admin_ui_username,
            settings.admin_ui_password,
            settings.admin_ui_read_only,
            tasks,
            admin_view,
        )
        transports.report_to(admin)
    return sio, transports


class AdminReport:
    """The Socket.IO Admin UI (`sio.instrument()`), on namespace `/admin`, for the right
    username and password only, at a bounded rate of failed logins. The library sees
    connections, rooms and received events itself; what the gateway delivers without
    `sio.emit` is reported here. What the UI is shown is chosen field by field: nothing that
    acts as a user (a session id, a token wherever a client put it)."""

    def __init__(
        self,
        sio: GatewayServer,
        username: str,
        password: str,
        read_only: bool,
        tasks: TaskKeeper,
        view: AdminView,
    ):
        self._sio = sio
        self._tasks = tasks
        self._view = view
        # a client's Engine.IO id is its session's credential (a long-polling client's whole
        # one): the UI gets a keyed digest of it, which groups a client's sockets and no more
        self._client_key = os.urandom(32)
        expected = (username.encode(), password.encode())

        def authorised(auth: Any) -> bool:
            if not isinstance(auth, dict):
                return False
            given = (auth.get("username"), auth.get("password"))
            if not all(isinstance(part, str) for part in given):
                return False
            # both compared, in constant time: the answer says nothing of which was wrong
            matches = [
                hmac.compare_digest(g.encode(), e) for g, e in zip(given, expected, strict=True)
            ]
            return all(matches)

        self._authorised = authorised
        patched = engineio.async_socket.AsyncSocket
        kept = {name: patched.__dict__[name] for name in _ADMIN_PATCHED_SOCKET_CALLS}
        self._server = sio.instrument(
            auth=authorised, read_only=read_only, namespace=ADMIN_NAMESPACE
        )
        # The library also patches python-engineio's socket class, for every server of the
        # process, to count packets and bytes; the gateway's sockets do not take those paths.
        for name, call in kept.items():
            setattr(patched, name, call)
        self._report_safely()
        self._reporting = 0  # reports of delivered events under way
        sio.instrumented = True

    def _watching(self) -> bool:
        """Whether an Admin UI is connected to this instance (what it does not watch is not
        reported: a report is an emit per recipient)."""
        return bool(self._sio.manager.rooms.get(ADMIN_NAMESPACE, {}).get(None))

    def client_id(self, eio_sid: str) -> str:
        """What the UI is shown for a client's Engine.IO id: the same for all its sockets,
        useless as a session id."""
        return hmac.new(self._client_key, eio_sid.encode(), "sha256").hexdigest()[:20]

    def _report_safely(self) -> None:
        """The instrumentation reports a socket as connected before the namespace decides,
        and keeps its connection time: for a refused socket (a bad token) nothing would ever
        forget it, nor tell the UI it went. It reports what clients send as it is, and each
        socket's handshake (headers, query) and Engine.IO id: whoever holds the Admin UI's
        password could take a long-polling client's session, or read a token. And it lets a
        refused login try again at once, on the same connection, for ever."""
        sio = self._sio
        view = self._view
        reporting = sio._trigger_event  # the instrumentation's: it reports, then dispatches
        dispatching = getattr(sio, "_InstrumentedAsyncServer__trigger_event")  # noqa: B009

        async def trigger_event(event: str, namespace: str, *args: Any) -> Any:
            if event == "disconnect":
                return await reporting(event, namespace, *args)
            if event != "connect":
                if namespace != ADMIN_NAMESPACE and self._watching():
                    at = datetime.datetime.now(datetime.UTC).isoformat()
                    received = view.received(event, list(args[1:]))
                    await sio.emit(
                        "event_received",
                        (namespace, args[0], received, at),
                        namespace=ADMIN_NAMESPACE,
                    )
                return await dispatching(event, namespace, *args)
            if namespace == ADMIN_NAMESPACE:
                return await self._login(reporting, *args)
            try:
                accepted = await reporting(event, namespace, *args)
            except socketio.exceptions.ConnectionRefusedError:
                await self._refused(namespace, args[0])
                raise
            if accepted is False:
                await self._refused(namespace, args[0])
            return accepted

        sio._trigger_event = trigger_event
        serialize = self._server.serialize_socket

        def serialize_socket(sid: str, namespace: str, eio_sid: str | None = None) -> dict:
            described = serialize(sid, namespace, eio_sid)
            handshake = described["handshake"]
            return {
                "id": described["id"],
                "clientId": self.client_id(described["clientId"]),
                "transport": described["transport"],
                "nsp": described["nsp"],
                "data": {},
                "handshake": {
                    "address": handshake["address"],
                    "headers": _shown(handshake["headers"], _SHOWN_HEADERS),
                    "query": _shown(handshake["query"], _SHOWN_QUERY),
                    "secure": handshake["secure"],
                    "url": handshake["url"],
                    "issued": handshake["issued"],
                    "time": handshake["time"],
                },
                "rooms": described["rooms"],
            }

        self._server.serialize_socket = serialize_socket

    async def _login(self, reporting: Callable[..., Awaitable[Any]], sid: str, *args: Any) -> Any:
        """The Admin UI's namespace connecting: its login's allowance taken, then its
        credentials compared, with nothing awaited before a refusal (python-socketio has put
        the socket in the namespace already: whatever were emitted to the namespace meanwhile
        would reach it, and logins at once would all pass the allowance before any failure
        counted). A refused login is logged and counted, and its connection takes no other
        (another try takes another connection, within its address's rate)."""
        environ = args[0] if args and isinstance(args[0], Mapping) else {}
        eio_sid = self._sio.manager.eio_sid_from_sid(sid, ADMIN_NAMESPACE)
        logins = self._view.logins
        if not logins.try_login(environ):
            self._login_refused("rate_limited", environ, eio_sid)
            raise socketio.exceptions.ConnectionRefusedError(
                "too many failed logins: retry later", {"code": "rate_limited"}
            )
        if not self._authorised(args[1] if len(args) > 1 else None):
            self._login_refused("credentials", environ, eio_sid)
            raise socketio.exceptions.ConnectionRefusedError("authentication failed")
        logins.succeeded(environ)
        return await reporting("connect", ADMIN_NAMESPACE, sid, *args)

    def _login_refused(self, reason: str, environ: Mapping[str, Any], eio_sid: str | None) -> None:
        address = self._view.logins.address(environ)
        logger.warning("admin ui login refused", extra={"reason": reason, "address": address})
        self._view.refused(reason, address)
        if eio_sid is not None:
            self._sio.refuse_connects(eio_sid)

    async def _refused(self, namespace: str, sid: str) -> None:
        self._sio.manager._timestamps.pop(sid, None)
        at = datetime.datetime.now(datetime.UTC).isoformat()
        await self._sio.emit(
            "socket_disconnected", (namespace, sid, "refused", at), namespace=ADMIN_NAMESPACE
        )

    def sent(self, event: str, recipients: Callable[[], Iterable[str]], payload: Any) -> None:
        """Report a delivered event while an Admin UI watches: to its first
        `ADMIN_REPORTED_RECIPIENTS` recipients, and not while `ADMIN_REPORTS_UNDER_WAY`
        reports are still being sent (the UI shows a sample, the gateway stays fast)."""
        if self._reporting >= ADMIN_REPORTS_UNDER_WAY or not self._watching():
            return
        sids = list(itertools.islice(recipients(), ADMIN_REPORTED_RECIPIENTS))
        if sids:
            self._reporting += 1
            shown = self._view.sent(event, payload)
            self._tasks.spawn(self._report_sent(event, shown, sids), name="admin: event sent")

    async def _report_sent(self, event: str, payload: Any, sids: list[str]) -> None:
        try:
            at = datetime.datetime.now(datetime.UTC).isoformat()
            for sid in sids:
                await self._sio.emit(
                    "event_sent", (NAMESPACE, sid, [event, payload], at), namespace=ADMIN_NAMESPACE
                )
        finally:
            self._reporting -= 1

    async def shutdown(self) -> None:
        # the library's own shutdown waits out the stats task's sleep (two seconds)
        task = self._server.stats_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._server.stats_task = None


# what `sio.instrument()` replaces on python-engineio's AsyncSocket class
_ADMIN_PATCHED_SOCKET_CALLS = ("handle_post_request", "_websocket_handler", "_send_ping")
ADMIN_REPORTED_RECIPIENTS = 50  # of one delivered event, reported to the Admin UI
ADMIN_REPORTS_UNDER_WAY = 8  # past it, delivered events go unreported until some are sent
# of a socket's handshake, what the UI is shown (browsers set these; clients put tokens in
# other headers and query keys, the User-Agent included)
_SHOWN_HEADERS = {"origin": None}
_SHOWN_QUERY = {"EIO": {"4"}, "transport": {"polling", "websocket"}}  # and only these values


def _shown(values: Mapping[str, Any], keys: Mapping[str, set[str] | None]) -> dict[str, Any]:
    return {
        key: values[key]
        for key, allowed in keys.items()
        if isinstance(values.get(key), str) and (allowed is None or values[key] in allowed)
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    """How much may wait in one client's outgoing queue, in packets and in bytes."""

    packets: int
    bytes: int


def encode_event(event: str, payload: Any) -> str:
    """A Socket.IO EVENT packet on namespace `/`, as python-socketio's `Packet.encode` spells
    it (without its search for binary attachments, which data events never carry)."""
    return "2" + FastJson.dumps([event, payload])


def websocket_frame(encoded: str | bytes) -> bytes:
    """One unmasked WebSocket frame (FIN set, no extension bits): text for str, binary for
    bytes; what a server sends, the same bytes for every recipient."""
    if isinstance(encoded, str):
        head, body = 0x81, encoded.encode()
    else:
        head, body = 0x82, bytes(encoded)
    size = len(body)
    if size < 126:
        return bytes((head, size)) + body
    if size < 65536:
        return struct.pack("!BBH", head, 126, size) + body
    return struct.pack("!BBQ", head, 127, size) + body


class SharedPacket(engineio.packet.Packet):
    """One Engine.IO MESSAGE encoded once and handed to every recipient: its text goes into
    long-polling answers, its frame (built at the first WebSocket recipient) onto WebSockets."""

    def __init__(self, socketio_packet: str):
        super().__init__(engineio.packet.MESSAGE, socketio_packet)
        self.encode_cache = "4" + socketio_packet
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = websocket_frame(self.encode_cache)
        return self._frame


# what may wait in a WebSocket connection's own write buffer before packets queue in its
# Outbox instead (where they are bounded, and drained at the pace of the client)
DIRECT_WRITE_LIMIT = 64 * 1024
# how long a WebSocket whose client has gone quiet may take to close before it is cut
CLOSE_TIMEOUT_S = 10.0
# how long a long-polling client closed by the server has to fetch what it was last sent
LAST_POLL_WAIT_S = 5.0
# what python-engineio clients accept in one long-polling payload
PACKETS_PER_POLL = engineio.payload.Payload.max_decode_packets
# what one long-polling POST may carry (within MAX_PAYLOAD_BYTES)
PACKETS_PER_POST = 1000


class _ClientPayload(engineio.payload.Payload):
    max_decode_packets = PACKETS_PER_POST


class Outbox:
    """One socket's outgoing packets, in place of python-engineio's `asyncio.Queue` (the same
    calls: `put`, `put_nowait`, `get`, `get_nowait`, `task_done`, `join`, `qsize`, `empty`).

    Bounded in packets and in bytes: past either bound a packet is dropped and `overflow` is
    called, once. One packet always fits in an empty outbox, and `None` (the end of the
    transport) always gets in.

    Once the socket is on a WebSocket (`attach`), a packet put while nothing waits before it is
    written to the connection at once, as one frame, unless the connection's write buffer is
    past `DIRECT_WRITE_LIMIT`; otherwise it waits here and a drain task sends what waits,
    in order, through aiohttp (which waits for the client to read). Before that (long-polling,
    an upgrade under way) packets wait for `get()`; a poll takes at most `PACKETS_PER_POLL`.
    """

    __slots__ = (
        "_bounds",
        "_direct",
        "_draining",
        "_emptied",
        "_ended",
        "_getters",
        "_items",
        "_overflow",
        "_room",
        "_taken",
        "_transport",
        "_ws",
        "bytes",
        "overflowed",
    )

    def __init__(self, bounds: Bounds, overflow: Callable[[Outbox], None]):
        self._bounds = bounds
        self._overflow = overflow
        self.overflowed = False
        self.bytes = 0  # what the waiting packets weigh
        self._items: collections.deque | None = None  # made when something has to wait
        self._getters: list[asyncio.Future] | None = None
        self._room: list[tuple[int, int, asyncio.Future]] | None = None  # (packets, bytes, w)
        self._emptied: asyncio.Future | None = None  # for `join()`
        self._taken = 0  # packets taken since the last `get()`: one poll's worth
        self._ws: web.WebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self._direct = False  # whether frames may be written straight to the transport
        self._draining: asyncio.Task | None = None
        self._ended = False  # its WebSocket is closed: nothing more will be sent

    # -- asyncio.Queue's calls, as python-engineio makes them -------------------------------
    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        queued = len(self._items) if self._items else 0
        if item is not None:
            if self.overflowed or self._ended:
                return  # cut off, or closed: no later (smaller) packet may get past a dropped one
            if not queued and self._direct and self._draining is None and self._write(item):
                return  # the usual way on a WebSocket: the frame is on its way
            weight = _weight(item)
            bounds = self._bounds
            if queued >= bounds.packets or (queued and self.bytes + weight > bounds.bytes):
                if not self.overflowed:
                    self.overflowed = True
                    self._overflow(self)
                return
            self.bytes += weight
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        if self._ws is not None:
            if self._draining is None:
                self._draining = asyncio.get_running_loop().create_task(self._drain())
        elif self._getters:
            for getter in self._getters:
                if not getter.done():
                    getter.set_result(None)
                    break

    def get_nowait(self) -> Any:
        if not self._items or self._taken >= PACKETS_PER_POLL:
            raise asyncio.QueueEmpty
        self._taken += 1
        return self._pop()

    async def get(self) -> Any:
        while not self._items:
            if self._ws is not None:  # a poll left over from before an upgrade: it ends
                return _NOOP
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                if self._items and not getter.cancelled():
                    self._wake_getter(getter)  # it was woken: pass that on
                raise
            finally:
                self._getters.remove(getter)
                if not self._getters:
                    self._getters = None
        self._taken = 0  # after the wait: a concurrent poll may have taken some meanwhile
        return self.get_nowait()

    def waited_on(self) -> bool:
        """Whether a poll waits for what comes next."""
        return bool(self._getters)

    def task_done(self) -> None:
        pass  # `join()` waits for the outbox to be empty: nothing to count

    async def join(self) -> None:
        if self._items:
            if self._emptied is None:
                self._emptied = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._emptied)

    # -- the gateway's own calls ------------------------------------------------------------
    async def wait_for_room(self, packets: int, size_bytes: int) -> None:
        """Return once at most `packets` packets of at most `size_bytes` wait here."""
        if (self.qsize() <= packets and self.bytes <= size_bytes) or self.overflowed or self._ended:
            return
        waiter = (packets, size_bytes, asyncio.get_running_loop().create_future())
        if self._room is None:
            self._room = []
        self._room.append(waiter)
        try:
            await waiter[2]
        finally:
            if self._room and waiter in self._room:
                self._room.remove(waiter)

    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """From now on, packets go onto this WebSocket; straight to its transport unless
        per-message compression was negotiated (aiohttp compresses)."""
        self._ws, self._transport = ws, transport
        self._direct = not ws.compress
        if self._items and self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        for getter in self._getters or ():  # polls still waiting end (with a NOOP)
            if not getter.done():
                getter.set_result(None)

    def end(self) -> None:
        """The socket closed: on a WebSocket, close it once what waits is sent, and cut the
        connection if that has not happened within `CLOSE_TIMEOUT_S` (a client that does not
        read keeps the drain waiting, and nothing reads a closed socket's connection); on
        long-polling, a poll that waits for nothing more returns."""
        if self._ws is not None:
            transport = self._transport
            self.put_nowait(None)
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, _cut_if_open, transport)
        elif self._getters and not self._items:
            self.put_nowait(None)  # a long-poll still waiting returns

    async def finish(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """The WebSocket's read side ended: close it once what waits is sent, or cut the
        connection if that takes longer than `CLOSE_TIMEOUT_S` (a client that reads no more)."""
        if self._ws is ws:
            self.put_nowait(None)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if self._draining is not None:
                    await asyncio.shield(self._draining)
                if not ws.closed:
                    await ws.close()
        except TimeoutError:
            transport.abort()

    # -- inside -----------------------------------------------------------------------------
    def _write(self, item: Any) -> bool:
        """Write one packet's frame to the connection now, if it takes it at once."""
        transport = self._transport
        if (
            self._ws.closed  # a close frame is (being) sent: nothing may follow it
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT
        ):
            return False
        frame = item.frame if type(item) is SharedPacket else websocket_frame(item.encode())
        transport.write(frame)
        return True

    async def _drain(self) -> None:
        """Send what waits, in order, through aiohttp: it waits while the client does not
        read. A `None` closes the WebSocket; a failure drops what waits (the connection is
        gone, as python-engineio's writer assumes too)."""
        ws = self._ws
        try:
            while self._items and self._ws is ws:
                item = self._pop()
                if item is None:
                    self._detach()
                    await ws.close()
                    break
                encoded = item.encode()
                if isinstance(encoded, str):
                    await ws.send_str(encoded)
                else:
                    await ws.send_bytes(encoded)
        except Exception:
            self._detach()
            self._items = None
            self.bytes = 0
            self._notify_emptied()
            if not ws.closed:
                await ws.close()
        finally:
            self._draining = None

    def _detach(self) -> None:
        self._ws = self._transport = None
        self._direct = False
        self._ended = True
        for *_, waiter in self._room or ():  # nothing more will be sent: waiting is over
            if not waiter.done():
                waiter.set_result(None)
        self._room = None

    def _pop(self) -> Any:
        item = self._items.popleft()
        if not self._items:
            self._items = None
            self._notify_emptied()
        if item is not None:
            self.bytes -= _weight(item)
            if self._room:
                count, size = self.qsize(), self.bytes
                for waiter in [w for w in self._room if count <= w[0] and size <= w[1]]:
                    self._room.remove(waiter)
                    if not waiter[2].done():
                        waiter[2].set_result(None)
        return item

    def _notify_emptied(self) -> None:
        if self._emptied is not None:
            if not self._emptied.done():
                self._emptied.set_result(None)
            self._emptied = None

    def _wake_getter(self, woken: asyncio.Future) -> None:
        for getter in self._getters or ():
            if getter is not woken and not getter.done():
                getter.set_result(None)
                return


def _cut_if_open(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.abort()


def _weight(item: Any) -> int:
    """About what an Engine.IO packet weighs on the wire: its encoded data (text or binary)."""
    data = item.data
    return len(data) + 1 if isinstance(data, (str, bytes, bytearray)) else 1


_PING = engineio.packet.Packet(engineio.packet.PING)
_NOOP = engineio.packet.Packet(engineio.packet.NOOP)
_CLOSE = engineio.packet.Packet(engineio.packet.CLOSE)


class GatewaySocket(engineio.async_socket.AsyncSocket):
    """python-engineio's socket (each one becomes this when it opens), costing less per
    connection: a timer for its pings rather than a sleeping task, polls answered without a
    timer when packets wait, and a WebSocket loop with neither a writer task (the `Outbox`
    writes) nor a task per message received."""

    upgrade_transport: asyncio.Transport | None = None  # the connection of an upgrade under way
    opened_at = 0.0  # when it opened (time.monotonic())
    namespaced = False  # whether it has connected a namespace (its connect timeout passed)
    # a POST whose body is being read or its packets handled: done when it is answered
    receiving: asyncio.Future | None = None
    ping_timer: asyncio.TimerHandle | None = None  # the next ping; cancelled when it closes
    last_poll_timer: asyncio.TimerHandle | None = None  # closed by then if no poll came

    def schedule_ping(self) -> None:
        # python-engineio: only when the previous ping was answered
        if self.last_ping:
            self.last_ping = None
            self.ping_timer = asyncio.get_running_loop().call_later(
                self.server.ping_interval, self._ping
            )

    def _ping(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.queue.put_nowait(_PING)

    async def poll(self) -> list[engineio.packet.Packet]:
        outbox = self.queue
        try:
            if outbox.empty():
                # a timer, not `wait_for` (on Python 3.11 a task per poll)
                async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                    first = await outbox.get()
            else:
                first = await outbox.get()  # at once
        except (TimeoutError, asyncio.CancelledError):
            raise engineio.exceptions.QueueEmpty() from None
        if first is None:
            return []
        packets = [first]
        while True:
            try:
                packet = outbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if packet is None:
                outbox.put_nowait(None)  # the end: for the next poll
                break
            packets.append(packet)
        if self.closing and not self.closed and outbox.empty():
            self._closed()  # its last poll: the CLOSE is on its way
        return packets

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """python-engineio's entry for a POST, for the ones that reach the library's request
        handling (`TransportControl.route` serves every POST itself): refused."""
        raise engineio.exceptions.EngineIOError()

    async def receive_payload(self, body: bytes) -> None:
        """The packets of one long-polling POST, handled in order: up to `PACKETS_PER_POST`
        (python-engineio refuses more than 16, which a JS client sends when it emits faster
        than a round trip: all of them were lost), a batch at a time so that other clients
        go on. A payload that holds something other than packets raises
        `UnknownPacketError` (its session is closed, as a junk frame closes a WebSocket; the
        library logged it as its own error and went on)."""
        try:
            packets = _ClientPayload(encoded_payload=body.decode()).packets
            for count, pkt in enumerate(packets, 1):
                await self.receive(pkt)
                if self.closing or self.closed:
                    break  # what follows would be dropped (and the session may be forgotten)
                if count % 64 == 0:
                    await asyncio.sleep(0)
        except (ValueError, IndexError, RecursionError):
            logger.info("malformed packet: connection closed", extra={"eio_sid": self.sid})
            raise engineio.exceptions.UnknownPacketError() from None

    async def receive(self, pkt: engineio.packet.Packet) -> None:
        if pkt.packet_type == engineio.packet.MESSAGE:
            # python-socketio's handler, called here as on WebSocket, so that what it cannot
            # read reaches `handle_post_request` (the library would log it as an error)
            if not isinstance(pkt.data, (str, bytes)):  # `4{}`: JSON, no Socket.IO packet
                raise ValueError("not a Socket.IO packet")
            await self.server.handlers["message"](self.sid, pkt.data)
        else:
            await super().receive(pkt)

    async def _websocket_handler(self, ws: Any) -> None:
        """python-engineio's WebSocket loop, for the upgrades that reach the library's own
        request handling (`TransportControl.route` takes the usual ones)."""
        if self.connected and not await self.upgrade(ws.response, ws.transport):
            return
        self.connected = self.upgraded = True
        await self.run_websocket(ws.response, ws.transport)

    async def upgrade(self, response: web.WebSocketResponse, transport: asyncio.Transport) -> bool:
        """python-engineio's upgrade from long-polling: the probe, then UPGRADE. One per
        session: another WebSocket for it while one upgrades (or after) is refused."""
        if self.upgrading or self.upgraded or self.closing or self.closed:
            return False
        self.upgrading = True  # polls are answered NOOP, packets wait in the outbox
        self.upgrade_transport = transport  # cut if the socket closes meanwhile
        try:
            # each step within the ping timeout: a client that sends nothing is not kept
            async with asyncio.timeout(self.server.ping_timeout):
                probe = engineio.packet.Packet(encoded_packet=await _received(response))
            if probe.packet_type != engineio.packet.PING or probe.data != "probe":
                return False
            await response.send_str(
                engineio.packet.Packet(engineio.packet.PONG, data="probe").encode()
            )
            if self.queue.waited_on():
                self.queue.put_nowait(_NOOP)  # ends the poll under way (a later one gets one)
            async with asyncio.timeout(self.server.ping_timeout):
                upgrade = engineio.packet.Packet(encoded_packet=await _received(response))
            # the session may have closed meanwhile (its auth deadline, say)
            return upgrade.packet_type == engineio.packet.UPGRADE and not (
                self.closed or self.closing
            )
        except (OSError, ValueError, TimeoutError):
            return False
        finally:
            self.upgrading = False
            self.upgrade_transport = None

    async def run_websocket(
        self, response: web.WebSocketResponse, transport: asyncio.Transport
    ) -> None:
        """Read the client's packets in this (the request's) task until the WebSocket ends;
        what goes out, the `Outbox` writes. No read timeout: a client that stops answering
        pings is closed by python-engineio's ping check (`close` ends the WebSocket)."""
        outbox = self.queue
        outbox.attach(response, transport)
        handle_message = self.server.handlers["message"]  # python-socketio's
        try:
            if self.receiving is not None:
                # a POST still handled: its packets first, one socket's events one at a time
                await asyncio.shield(self.receiving)
            while True:
                try:
                    message = await response.receive()
                except (Exception, asyncio.CancelledError):  # cancelled, failed
                    break
                data = message.data
                if not isinstance(data, (str, bytes)) or self.closed:
                    break  # closed, closing or failed; or the socket closed meanwhile
                try:
                    if type(data) is str and data[:1] == "4":  # MESSAGE: what `receive` does
                        await handle_message(self.sid, data[1:])
                        continue
                    await self.receive(engineio.packet.Packet(encoded_packet=data))
                except engineio.exceptions.UnknownPacketError:
                    pass
                except engineio.exceptions.SocketIsClosedError:
                    break
                except (ValueError, IndexError, RecursionError):
                    # not a packet (python-engineio's loop ends there too): an unknown type, or
                    # JSON nested past what the decoder reads
                    logger.info("malformed packet: connection closed", extra={"eio_sid": self.sid})
                    break
                except Exception:
                    logger.exception("receiving a packet failed", extra={"eio_sid": self.sid})
        finally:
            # in a task of its own: aiohttp may cancel this handler when the client goes, and
            # the socket must still be closed (or it would wait for the ping timeout)
            ending = asyncio.ensure_future(self._end_websocket(outbox, response, transport))
            _ENDING.add(ending)
            ending.add_done_callback(_ENDING.discard)
            await asyncio.shield(ending)

    async def _end_websocket(
        self, outbox: Outbox, response: web.WebSocketResponse, transport: asyncio.Transport
    ) -> None:
        try:
            await outbox.finish(response, transport)
        finally:
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            if self.server.sockets.get(self.sid) is self:  # as python-engineio does after
                del self.server.sockets[self.sid]

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.closed or self.closing:
            return
        if wait and not abort and not self.upgraded:
            await self._close_after_last_poll(reason)
            return
        if not abort:
            # python-engineio's `send` drops it when a ping is overdue (which is why many a
            # socket closes): the poll waiting, or the WebSocket, would end without it
            self.queue.put_nowait(_CLOSE)
        await super().close(wait=False, abort=True, reason=reason)
        self._closed()
        if wait:  # a WebSocket: its CLOSE is written (or the connection cut) within the bound
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.queue.join()

    async def _close_after_last_poll(self, reason: Any) -> None:
        """python-engineio's `close(wait=True)` on long-polling writes CLOSE, marks the
        socket closed and waits for its outbox to be drained, which no poll can do any more
        (a closed socket's polls are refused): the request that closes it (a client leaving
        its last namespace, say) would wait for ever. Here the socket stays open to polls,
        for `LAST_POLL_WAIT_S` at most, until one takes what waits and the CLOSE; nobody
        waits for that."""
        self.closing = True
        # queued first: a poll that empties the outbox from now on has taken it
        self.queue.put_nowait(_CLOSE)
        self.last_poll_timer = asyncio.get_running_loop().call_later(LAST_POLL_WAIT_S, self._closed)
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )

    def _closed(self) -> None:
        self.closed = True
        for timer in (self.ping_timer, self.last_poll_timer):
            if timer is not None:  # they hold the socket (and its outbox) until they run
                timer.cancel()
        self.ping_timer = self.last_poll_timer = None
        self.queue.end()  # on a WebSocket, it is closed once what waits is sent
        if self.upgrade_transport is not None:  # a WebSocket still upgrading: no use now
            self.upgrade_transport.abort()


_ENDING: set[asyncio.Task] = set()  # WebSockets being closed, kept until they are


async def _received(response: web.WebSocketResponse) -> str | bytes:
    message = await response.receive()
    if not isinstance(message.data, (str, bytes)):
        raise OSError("the WebSocket closed")
    return message.data


class TransportControl:
    """Installs the adjustments on one Socket.IO server, delivers events to its clients and
    closes their transports."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        compression: bool,
        bounds: Bounds,
        tasks: TaskKeeper,
        connect_timeout_s: float | None = None,
    ):
        self._sio = sio
        self._eio = sio.eio
        # how long a connection may stay without connecting a namespace (None: for ever)
        self._connect_timeout_s = connect_timeout_s
        self.bounds = bounds
        # the TCP transport under each WebSocket, to cut a stalled one off
        self._connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._tasks = tasks
        self.slow_clients_closed = 0
        self._opened: Callable[[str], None] = _nothing
        self._closed: Callable[[str], None] = _nothing
        self._admit: Callable[[Mapping[str, str]], Admission] = _admitted
        self._compression = compression
        self.admin: AdminReport | None = None  # with ADMIN_UI_USERNAME
        self._install_driver()
        sio.end_connection = self._end_connection
        self._eio.create_queue = self._create_outbox  # each socket's queue (base_socket.py)
        self._eio._service_task = self._sweep
        self._forget = self._eio.disconnect
        self._eio.disconnect = self._disconnect
        self._install_lifecycle()

    def watch(
        self,
        opened: Callable[[str], None],
        closed: Callable[[str], None],
        admit: Callable[[Mapping[str, str]], Admission] | None = None,
    ) -> None:
        """Call `opened(eio_sid)` when a client's Engine.IO connection opens (before any
        namespace connects) and `closed(eio_sid)` when it ends, whatever the cause; and
        `admit(environ)` before one opens: one `REFUSED` opens with `RATE_LIMITED` in its
        environ, one `TURNED_AWAY` is answered 429."""
        self._opened, self._closed = opened, closed
        self._admit = admit or _admitted

    def report_to(self, admin: AdminReport) -> None:
        """Report to the Admin UI; `sio.instrument()` has put its own handlers of Engine.IO's
        connection events in place of these adjustments' (which now wrap them)."""
        self.admin = admin
        self._install_lifecycle()

    # -- delivering ---------------------------------------------------------------------------
    def deliver(self, event: str, payload: Any, rooms: Iterable[str] | None) -> int:
        """Send `event` to this instance's sockets in `rooms` (None: every socket), encoded
        once, without a task or an await; returns how many sockets it went to."""
        if self.admin is not None:
            rooms = None if rooms is None else list(rooms)
            self.admin.sent(event, lambda: (sid for sid, _ in self._participants(rooms)), payload)
        return self._hand_over(encode_event(event, payload), self._in_rooms(rooms))

    def deliver_to(self, sid: str, event: str, payload: Any) -> None:
        """Send `event` to one socket of this instance, behind what it was sent before."""
        eio_sid = self._sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is not None:
            if self.admin is not None:
                self.admin.sent(event, lambda: [sid], payload)
            self._hand_over(encode_event(event, payload), (eio_sid,))

    def _in_rooms(self, rooms: Iterable[str] | None) -> Iterator[str]:
        for _, eio_sid in self._participants(rooms):
            yield eio_sid

    def _participants(self, rooms: Iterable[str] | None) -> Iterator[tuple[str, str]]:
        if rooms is not None:
            rooms = list(rooms)
            if not rooms:
                return
        yield from self._sio.manager.get_participants(NAMESPACE, rooms)

    def _hand_over(self, socketio_packet: str, eio_sids: Iterable[str]) -> int:
        shared = SharedPacket(socketio_packet)
        sockets = self._eio.sockets
        count = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(shared)
                count += 1
        return count

    # -- serving ----------------------------------------------------------------------------
    def attach(self, app: web.Application, path: str) -> None:
        """Mount the Engine.IO endpoint on `path` (python-engineio's `attach` mounts
        `handle_request` on all three methods): GET through `route`."""
        path = "/" + path.strip("/") + "/"
        app.router.add_get(path, self.route)
        app.router.add_post(path, self._post)
        app.router.add_route("OPTIONS", path, self._eio.handle_request)
        app.router.add_route("*", path, self._no_such_method)

    async def _no_such_method(self, request: web.Request) -> web.Response:
        """PUT, DELETE...: 400, as the protocol's reference server answers (aiohttp's 405 would
        answer in its own words, without the CORS headers)."""
        return self._bad_request(request, "unsupported method")

    async def route(self, request: web.Request) -> web.StreamResponse:
        """A GET on the Engine.IO endpoint. Handshakes (long-polling and WebSocket), polls
        and upgrades are served here, with python-engineio's checks, packets and handlers
        but a shorter stack: what a connection holds for its life is its own frame and a
        small environ, not the library's request handling and its environ. What is left
        (JSONP, a check that refuses) goes to the library, which answers it as always."""
        eio = self._eio
        query = request.query
        if request.method != "GET":  # HEAD: refused (a poll's body would be lost)
            return self._bad_request(request, "unsupported method")
        transport = query.get("transport")
        if transport not in ("polling", "websocket"):
            # (python-engineio takes a missing one for polling; the protocol requires it)
            return self._bad_request(request, "unknown transport")
        # the session, as python-engineio reads the query (it drops empty values)
        sid = next((value for value in query.getall("sid", ()) if value), None)
        if sid is None:  # a new connection
            admission = self._admit(connect_environ(request))
            if admission is Admission.TURNED_AWAY:
                return self._turned_away(request)
            if admission is Admission.REFUSED:
                request[_PAST_ITS_RATE] = True
            if (
                transport == "polling"
                and query.get("EIO") == "4"
                and "j" not in query
                and self._origin_allowed(request)
            ):
                return await self._open_polling(request)
        else:
            # a session that is gone, or a poll of one upgraded: refused here (the library
            # answers the same, and logs each kind at ERROR the first time: a client that
            # comes back after a restart is no operator's error)
            socket = eio.sockets.get(sid)
            if (
                socket is None
                or socket.closed
                # (a closing one is kept for the poll that takes its CLOSE: that one passes)
                or (not socket.closing and not await socket.check_ping_timeout())
            ):
                if socket is not None and socket.closed and eio.sockets.get(sid) is socket:
                    del eio.sockets[sid]
                return self._bad_request(request, "unknown session")
            if socket.upgraded and transport == "polling":
                return self._bad_request(request, "unexpected HTTP request")
        if transport == "polling" and sid is not None:
            socket = eio.sockets.get(sid)
            if (
                type(socket) is GatewaySocket
                and socket.connected
                and not (socket.closed or socket.upgrading or socket.upgraded)
                and "j" not in query
                and "Upgrade" not in request.headers
                and self._origin_allowed(request)
            ):
                if socket.queue.waited_on():
                    # a second poll while one waits: the session is closed, as Node's
                    # engine.io closes it (the waiting poll takes its CLOSE)
                    logger.info("overlapping polls: session closed", extra={"eio_sid": sid})
                    await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
                    return self._bad_request(request, "overlapping poll")
                return await self._poll(request, socket)
            return await eio.handle_request(request)
        if (
            transport != "websocket"
            or "j" in query
            or request.headers.get("Upgrade", "").lower() != "websocket"
            or not web.WebSocketResponse().can_prepare(request).ok
            or not self._origin_allowed(request)
        ):
            return await eio.handle_request(request)
        if sid is None:
            if query.get("EIO") != "4":
                return await eio.handle_request(request)
            return await self._open_websocket(request)
        socket = eio.sockets.get(sid)
        if type(socket) is GatewaySocket and (
            socket.upgrading or socket.upgraded or socket.closing
        ):
            # one upgrade per session: a second WebSocket would read frames as this socket
            # beside the first, and outlive it
            return self._bad_request(request, "unexpected upgrade")
        if (
            type(socket) is not GatewaySocket
            or socket.closed
            or not socket.connected
            or socket.upgraded
            or "upgrade" not in request.headers.get("Connection", "").lower()
        ):
            return await eio.handle_request(request)
        try:
            response = await self._websocket_response(request, socket)
            if await socket.upgrade(response, request.transport):
                socket.upgraded = True
                await socket.run_websocket(response, request.transport)
        finally:
            if socket.closed and eio.sockets.get(sid) is socket:
                del eio.sockets[sid]
        return response

    def _turned_away(self, request: web.Request) -> web.Response:
        error = GatewayError("rate_limited", TOO_MANY_CONNECTIONS)
        cors = dict(self._eio._cors_headers(_cors_environ(request)))
        return web.json_response(
            {"error": error.to_dict()}, status=429, headers={"Retry-After": "1", **cors}
        )

    async def _post(self, request: web.Request) -> web.StreamResponse:
        """A long-polling POST: the client's packets, handled in order, one socket's events
        one at a time. python-engineio's checks and answers, with what it left to chance
        made sure: the body is read to its length (the library took what had arrived, and
        a body sent in two pieces lost its second), within a ping interval and timeout; a
        second POST of a session while one is read or handled closes the session, as Node's
        engine.io does (the library ran them at once, so a socket's events raced); none is
        taken once the session is upgraded or closing (one that arrived before the upgrade
        completed is handled first); a session that closes while its body arrives is
        answered 400 (the library answered 500)."""
        eio = self._eio
        query = request.query
        sid = query.get("sid")
        socket = eio.sockets.get(sid) if sid else None
        if not self._origin_allowed(request):
            return self._bad_request(request, "origin not allowed")
        if type(socket) is not GatewaySocket or not socket.connected:
            return self._bad_request(request, "unknown session")
        if not (socket.closed or socket.closing) and not await socket.check_ping_timeout():
            if eio.sockets.get(sid) is socket:
                del eio.sockets[sid]
            return self._bad_request(request, "session closed")  # it missed its pong
        if socket.closed or socket.closing:
            if socket.closed and eio.sockets.get(sid) is socket:
                del eio.sockets[sid]
            return self._bad_request(request, "session closed")
        if socket.upgraded or query.get("transport", "polling") != "polling":
            return self._bad_request(request, "unexpected HTTP request")
        if socket.receiving is not None:
            logger.info("overlapping POSTs: session closed", extra={"eio_sid": sid})
            await self._disconnect(sid)
            return self._bad_request(request, "overlapping POST")
        received = socket.receiving = asyncio.get_running_loop().create_future()
        try:
            body = await self._body(request)
            # (an upgrade that completed meanwhile waits for this POST's packets)
            if body is None:
                await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
                return await self._refuse_and_close(request, "body refused")
            if socket.closed or socket.closing:
                return self._bad_request(request, "session closed")
            try:
                await socket.receive_payload(body)
            except engineio.exceptions.EngineIOError:
                # closed at once (a poll waiting takes its CLOSE; the next finds no session)
                await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
                return self._bad_request(request, "malformed payload")
        finally:
            socket.receiving = None
            received.set_result(None)
        cors = eio._cors_headers(_cors_environ(request))
        return web.Response(body=b"ok", headers={"Content-Type": "text/plain", **dict(cors)})

    async def _body(self, request: web.Request) -> bytes | None:
        """A POST's whole body, read to its end (aiohttp ends it at its Content-Length, or
        at the last chunk, and inflates a compressed one); None when it is larger than
        `max_http_buffer_size`, ends early, is malformed or takes longer than a ping interval
        and timeout to arrive."""
        eio = self._eio
        most = eio.max_http_buffer_size
        length = request.content_length
        if length is not None and length > most:
            return None
        body = bytearray()
        try:
            async with asyncio.timeout(eio.ping_interval + eio.ping_timeout):
                while chunk := await request.content.read(65536):
                    body += chunk
                    if len(body) > most:
                        return None
        except (
            TimeoutError,
            OSError,
            HttpProcessingError,
            web.RequestPayloadError,  # a body cut short, or not what its encoding says
        ):
            return None
        return bytes(body)

    async def _refuse_and_close(self, request: web.Request, message: str) -> web.Response:
        """400, then the connection closed: what is left of a refused body is not read (aiohttp
        would read it on, and log a body that is not what its encoding says as its own
        error)."""
        refused = self._bad_request(request, message)
        refused.force_close()
        await refused.prepare(request)
        await refused.write_eof()
        request.protocol.force_close()
        return refused

    def _bad_request(self, request: web.Request, message: str) -> web.Response:
        """python-engineio's 400 (`_bad_request`), with its CORS headers."""
        cors = self._eio._cors_headers(_cors_environ(request))
        return web.Response(
            body=FastJson.dumps(message).encode(),
            status=400,
            headers={"Content-Type": "text/plain", **dict(cors)},
        )

    async def _poll(self, request: web.Request, socket: GatewaySocket) -> web.Response:
        """python-engineio's answer to a long-poll (`handle_request`, `handle_get_request`,
        `_ok`), without building the request's environ: what waits, or what comes."""
        eio = self._eio
        cors = eio._cors_headers(_cors_environ(request))
        try:
            packets = await socket.poll()
        except engineio.exceptions.QueueEmpty:  # nothing for a ping interval and more: gone
            await socket.close(wait=False, reason=eio.reason.TRANSPORT_ERROR)
            if socket.sid in eio.sockets:
                await eio.disconnect(socket.sid)
            bad = eio._bad_request()
            return web.Response(
                body=bad["response"], status=400, headers=dict(bad["headers"] + cors)
            )
        body = engineio.payload.Payload(packets=packets).encode().encode()
        headers = {"Content-Type": "text/plain; charset=UTF-8", **dict(cors)}
        if eio.http_compression and len(body) >= eio.compression_threshold:
            accepted = request.headers.get("Accept-Encoding", "").split(",")
            for encoding in (e.split(";")[0].strip() for e in accepted):
                if encoding in eio.compression_methods:
                    body = getattr(eio, "_" + encoding)(body)
                    headers["Content-Encoding"] = encoding
                    break
        return web.Response(body=body, headers=headers)

    def _origin_allowed(self, request: web.Request) -> bool:
        """python-engineio's check of a browser's Origin (same origin only, by default)."""
        eio = self._eio
        origin = request.headers.get("Origin")
        if not origin or eio.cors_allowed_origins == []:
            return True
        allowed = eio._cors_allowed_origins(_cors_environ(request))
        return allowed is None or origin in allowed

    async def _open(
        self, request: web.Request, upgrades: list[str]
    ) -> tuple[GatewaySocket | None, Any]:
        """python-engineio's `_handle_connect`: a new socket, its OPEN packet queued and the
        connect handlers run; (None, what they answered) when they refuse it (it is then
        forgotten)."""
        eio = self._eio
        if eio.start_service_task:  # the ping checks of every socket: started once
            eio.start_service_task = False
            eio.service_task_handle = eio.start_background_task(eio._service_task)
        sid = eio.generate_id()
        socket = GatewaySocket(eio, sid)
        eio.sockets[sid] = socket
        socket.queue.put_nowait(
            engineio.packet.Packet(
                engineio.packet.OPEN,
                {
                    "sid": sid,
                    "upgrades": upgrades,
                    "pingTimeout": round(eio.ping_timeout * 1000),
                    # (python-engineio rounds the seconds down first: 0.3 s was 0 ms)
                    "pingInterval": round(
                        (eio.ping_interval + eio.ping_interval_grace_period) * 1000
                    ),
                    "maxPayload": eio.max_http_buffer_size,
                },
            )
        )
        accepted = await eio._trigger_event(
            "connect", sid, connect_environ(request), run_async=False
        )
        if accepted is not None and accepted is not True:
            del eio.sockets[sid]
            return None, accepted
        return socket, None

    async def _refused_handshake(self, request: web.Request, refusal: Any) -> web.StreamResponse:
        eio = self._eio
        return await eio._make_response(
            eio._unauthorized(refusal or None), eio._async["translate_request"](request)
        )

    async def _open_polling(self, request: web.Request) -> web.StreamResponse:
        """python-engineio's `_handle_connect`, for long-polling: the OPEN packet is the
        first poll's answer."""
        socket, refusal = await self._open(request, ["websocket"])
        if socket is None:
            return await self._refused_handshake(request, refusal)
        socket.schedule_ping()
        socket.connected = True
        return await self._poll(request, socket)

    async def _open_websocket(self, request: web.Request) -> web.StreamResponse:
        """python-engineio's `_handle_connect`, for a WebSocket."""
        eio = self._eio
        socket, refusal = await self._open(request, [])
        if socket is None:
            return await self._refused_handshake(request, refusal)
        socket.schedule_ping()
        try:
            response = await self._websocket_response(request, socket)
        except BaseException:
            await socket.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
            raise
        socket.connected = socket.upgraded = True
        await socket.run_websocket(response, request.transport)  # which forgets the socket
        return response

    async def _websocket_response(
        self, request: web.Request, socket: GatewaySocket
    ) -> web.WebSocketResponse:
        """The socket's WebSocket, prepared: compression negotiated only under
        `WS_COMPRESSION` (python-engineio's driver always negotiates it)."""
        response = web.WebSocketResponse(
            max_msg_size=self._eio.max_http_buffer_size, compress=self._compression
        )
        await response.prepare(request)
        self._connections[socket] = request.transport
        return response

    async def _sweep(self) -> None:
        """python-engineio's service task: each socket's ping check and the closed sockets'
        removal, spread over a ping timeout. Its loop holds a copy of every socket while it
        sleeps (a closed one is kept up to 20 s: a storm of connections piles them up); this
        one holds their ids."""
        eio = self._eio
        stop = eio.service_task_event = eio.create_event()
        while not stop.is_set():
            sids = list(eio.sockets)
            interval = eio.ping_timeout / max(1, len(sids))
            for sid in sids or [None]:
                socket = eio.sockets.get(sid) if sid is not None else None
                try:
                    if socket is not None and socket.closed:
                        if eio.sockets.get(sid) is socket:
                            del eio.sockets[sid]
                    elif socket is not None and not socket.closing:
                        if await socket.check_ping_timeout():
                            self._check_connect_timeout(socket)
                except Exception:
                    logger.exception("ping check failed", extra={"eio_sid": sid})
                socket = None  # not kept while this waits
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()
                if stop.is_set():
                    return

    def _check_connect_timeout(self, socket: engineio.async_socket.AsyncSocket) -> None:
        """Close a connection that has connected no namespace within the connect timeout
        (the protocol's `connectTimeout`): it has no use but holding a socket."""
        timeout_s = self._connect_timeout_s
        if (
            timeout_s is not None
            and type(socket) is GatewaySocket
            and not socket.namespaced
            and time.monotonic() - socket.opened_at > timeout_s
        ):
            socket.namespaced = True  # closed once
            logger.info("connect timeout", extra={"eio_sid": socket.sid})
            self._tasks.spawn(self.close(socket.sid), name="connect timeout")

    async def _disconnect(self, sid: str | None = None) -> None:
        """python-engineio's `disconnect`, which closes a socket and forgets it at once: a
        long-polling one is kept for its last poll (`GatewaySocket._close_after_last_poll`),
        and forgotten by the sweep or that poll."""
        socket = self._eio.sockets.get(sid) if sid is not None else None
        if type(socket) is GatewaySocket and not socket.upgraded:
            await socket.close(reason=self._eio.reason.SERVER_DISCONNECT)
        else:
            await self._forget(sid)

    # -- installing -------------------------------------------------------------------------
    def _install_driver(self) -> None:
        driver = self._eio._async["websocket"]  # the aiohttp driver's WebSocket wrapper class
        control = self

        class GatewayWebSocket(driver):  # type: ignore[misc, valid-type]
            """The driver's wrapper (for the WebSocket requests `route` leaves to the
            library), with the response `route` builds, handing the socket's loop the
            response and its transport."""

            response: web.WebSocketResponse
            transport: asyncio.Transport

            async def __call__(self, environ: dict[str, Any]) -> Any:
                request = environ["aiohttp.request"]
                # the handler is the engine.io socket's bound `_websocket_handler`
                socket = self.handler.__self__
                self.response = self._sock = await control._websocket_response(request, socket)
                self.environ = environ
                self.transport = request.transport
                await self.handler(self)
                return self.response

        self._eio._async = {**self._eio._async, "websocket": GatewayWebSocket}

    def _end_connection(self, eio_sid: str) -> None:
        self._tasks.spawn(self.close(eio_sid), name="end a connection")

    def _create_outbox(self, *args: Any, **kwargs: Any) -> Outbox:
        return Outbox(self.bounds, self._overflowed)

    def _overflowed(self, outbox: Outbox) -> None:
        for eio_sid, socket in list(self._eio.sockets.items()):
            if socket.queue is outbox:
                logger.warning(
                    "slow client cut off",
                    extra={"sid": eio_sid, "backlog": outbox.qsize(), "bytes": outbox.bytes},
                )
                self.slow_clients_closed += 1
                self._tasks.spawn(self.close(eio_sid, abort=True), name="slow client cut")
                return

    def _install_lifecycle(self) -> None:
        eio = self._eio
        # python-socketio's own handlers of Engine.IO's connection events
        handle_connect = eio.handlers["connect"]
        handle_disconnect = eio.handlers["disconnect"]

        async def on_connect(eio_sid: str, environ: dict[str, Any]) -> Any:
            socket = eio.sockets[eio_sid]
            if type(socket) is engineio.async_socket.AsyncSocket:
                socket.__class__ = GatewaySocket  # before its pings and its transport start
            socket.opened_at = time.monotonic()
            if "aiohttp.request" in environ:  # python-socketio keeps it for the connection's life
                environ = connect_environ(environ["aiohttp.request"])
            accepted = await handle_connect(eio_sid, environ)
            if accepted is not False:
                self._opened(eio_sid)
            return accepted

        async def on_disconnect(eio_sid: str, reason: Any) -> None:
            try:
                await handle_disconnect(eio_sid, reason)
            finally:
                self._closed(eio_sid)
            # Answer a polling client's pending GET when that client closes the connection:
            # python-engineio closes such a socket without writing to it, so the client's
            # outstanding long-poll waits for the ping interval (25 s) before it returns, and
            # python clients wait for it inside `disconnect()` (and a refused `connect()`).
            # Engine.IO's reference server answers it at once, with a NOOP; so do we.
            socket = eio.sockets.get(eio_sid)
            if (
                reason == eio.reason.CLIENT_DISCONNECT
                and socket is not None
                and not socket.upgraded
            ):
                socket.queue.put_nowait(_NOOP)

        eio.on("connect", on_connect)
        eio.on("disconnect", on_disconnect)

    # -- closing ----------------------------------------------------------------------------
    async def close(self, eio_sid: str, abort: bool = False) -> None:
        """Close one client's transport, not with a Socket.IO disconnect (which would tell
        the client not to come back) nor an Engine.IO CLOSE packet (python clients do not
        reconnect after one): the connection just ends, and clients reconnect.

        A `None` in the socket's outbox ends its transport: on WebSocket the socket is closed,
        on long-polling the pending GET returns and the next finds no session. With `abort`,
        the TCP connection is cut at once, for a client that does not read.
        """
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        if not abort and not socket.upgraded and not socket.queue.empty():
            # a long-polling client fetches what it was last sent (say, `auth_error` and the
            # DISCONNECT) with its next poll: the session must outlive that poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_POLL_WAIT_S):
                    await socket.queue.join()
            if socket.closed:
                return
        connection = self._connections.get(socket)
        socket.queue.put_nowait(None)
        await socket.close(wait=False, abort=True, reason=self._eio.reason.SERVER_DISCONNECT)
        if abort and connection is not None:
            connection.abort()

    async def wait_for_room(self, eio_sid: str, packets: int, size_bytes: int) -> None:
        """Return once this client's outbox has room for `packets` more packets of
        `size_bytes` in all, and as much again (at once if it has, or the client is gone): how
        a long replay keeps to the pace of the client while live events still fit."""
        socket = self._eio.sockets.get(eio_sid)
        if socket is not None and isinstance(socket.queue, Outbox):
            await socket.queue.wait_for_room(
                max(0, self.bounds.packets - 2 * packets),
                max(0, self.bounds.bytes - 2 * size_bytes),
            )

    async def close_all(self) -> None:
        if self.admin is not None:
            await self.admin.shutdown()
        await asyncio.gather(
            *(self.close(sid) for sid in list(self._eio.sockets)), return_exceptions=True
        )


def _cors_environ(request: web.Request) -> dict[str, str]:
    """What python-engineio's CORS answer (`_cors_headers`) reads of a request's environ."""
    environ = {
        "REQUEST_METHOD": request.method,
        "wsgi.url_scheme": request.headers.get("X-Forwarded-Proto", "http"),
    }
    for header in (
        "Host",
        "Origin",
        "Access-Control-Request-Headers",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    ):
        values = request.headers.getall(header, ())
        if values:  # repeated headers joined, as python-engineio's driver joins them
            environ["HTTP_" + header.upper().replace("-", "_")] = ",".join(values)
    return environ


def connect_environ(request: web.Request) -> dict[str, str]:
    """The WSGI-style environ python-socketio keeps for each connection (and hands the
    namespace's `connect`): a few fields of the request that opened it, not the request (and
    its headers) itself. REMOTE_ADDR is the TCP peer (python-engineio's driver says
    127.0.0.1)."""
    environ = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query_string,
        "REMOTE_ADDR": request.remote or "",
    }
    for header in ("Origin", "User-Agent", "X-Forwarded-For"):
        values = request.headers.getall(header, None)
        if values:
            # every line: a proxy may add its own X-Forwarded-For beside the client's
            environ["HTTP_" + header.upper().replace("-", "_")] = ",".join(values)
    if request.get(_PAST_ITS_RATE):
        environ[RATE_LIMITED] = "1"
    return environ


def _nothing(eio_sid: str) -> None:
    pass


def _admitted(environ: Mapping[str, str]) -> Admission:
    return Admission.ADMITTED
