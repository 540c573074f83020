"""What each module of `realtime/engine/` touches inside python-engineio and python-socketio:
one test per module, which fails if an internal it relies on moves (an upgrade of either
library is then read module by module, against the docstring that names the same internals).
"""

from __future__ import annotations

import inspect
import re

import aiohttp.base_protocol
import aiohttp.http
import aiohttp.http_parser
import aiohttp.web
import aiohttp.web_protocol
import aiohttp.web_request
import aiohttp.web_runner
import aiohttp.web_server
import aiohttp.web_ws
import engineio
import engineio.async_drivers.aiohttp as engineio_aiohttp
import engineio.async_socket
import engineio.base_socket
import engineio.json
import engineio.payload
import socketio
import socketio.admin
import socketio.async_manager
import socketio.async_server
import socketio.base_manager

from realtime.engine import create_engine, membership, packets
from realtime.tasks import TaskKeeper


def _takes(call, *names: str) -> None:
    parameters = inspect.signature(call).parameters
    assert all(name in parameters for name in names), (call, list(parameters))


def test_packets():
    # python-engineio's integer reader (integers of at most 100 digits), reused
    assert engineio.json._safe_int("12") == 12
    assert "json" in vars(socketio.packet.Packet)  # the JSON module, a class attribute
    assert "encode_cache" in inspect.getsource(engineio.packet.Packet.encode)
    # the fields a packet's `__init__` sets, which `SharedPacket` sets itself
    made = set(re.findall(r"self\.(\w+) =", inspect.getsource(engineio.packet.Packet.__init__)))
    assert made == {"packet_type", "data", "encode_cache", "binary"}, made
    shared = packets.SharedPacket("2[1]")
    assert vars(shared).keys() >= made and shared.encode() == "42[1]"
    # the standard library's scanner: (value, end), reading from an offset
    assert packets._SCAN('x["a",{"b":1}] ', 1) == (["a", {"b": 1}], 14)


def test_outbox():
    # python-engineio makes each socket's queue with `create_queue` and uses these of it
    assert callable(engineio.AsyncServer.create_queue)
    source = inspect.getsource(engineio.async_socket.AsyncSocket)
    for call in ("put(", "put_nowait(", "get(", "get_nowait(", "task_done(", "join("):
        assert f"self.queue.{call}" in source, call
    assert isinstance(engineio.payload.Payload.max_decode_packets, int)


def test_socket():
    socket_class = engineio.async_socket.AsyncSocket
    for name in ("_websocket_handler", "schedule_ping", "poll", "close", "receive", "send"):
        assert name in vars(socket_class), name
    assert "handle_post_request" in vars(socket_class)
    assert "_send_ping" in vars(socket_class)  # replaced by `sio.instrument()`, put back
    assert "_trigger_event" in vars(engineio.AsyncServer)
    assert "run_async" in inspect.getsource(engineio.AsyncServer._trigger_event)
    for attribute in ("last_ping", "upgrading", "upgraded", "closing", "closed", "queue"):
        assert attribute in inspect.getsource(engineio.base_socket.BaseSocket), attribute


def test_answers(settings):
    sio = create_engine(settings, TaskKeeper()).sio
    assert callable(sio.eio._cors_headers)
    assert callable(sio.eio._cors_allowed_origins)
    _takes(sio.eio._cors_headers, "environ")


def test_polling(settings):
    sio = create_engine(settings, TaskKeeper()).sio
    for encoding in sio.eio.compression_methods:
        assert callable(getattr(sio.eio, "_" + encoding)), encoding


def test_endpoint(settings):
    sio = create_engine(settings, TaskKeeper()).sio
    # its WebSocket wrapper, a subclass of the driver's, for this server only
    assert issubclass(sio.eio._async["websocket"], engineio_aiohttp.WebSocket)
    assert sio.eio._async["websocket"] is not engineio_aiohttp.WebSocket
    assert engineio_aiohttp._async["websocket"] is engineio_aiohttp.WebSocket
    for name in ("_unauthorized", "handle_request", "generate_id"):
        assert callable(getattr(sio.eio, name)), name
    assert isinstance(sio.eio.ping_interval_grace_period, (int, float))


def test_runner():
    # the lane's runner wraps the server aiohttp's runner makes, and hands connections over to
    # the handlers it makes; the runner calls these of it
    assert inspect.iscoroutinefunction(aiohttp.web.AppRunner._make_server)
    for name in ("__call__", "pre_shutdown", "shutdown"):
        assert callable(getattr(aiohttp.web_server.Server, name)), name
    assert "self._server.pre_shutdown()" in inspect.getsource(aiohttp.web_runner.BaseRunner)
    assert isinstance(aiohttp.http.SERVER_SOFTWARE, str)  # (the lane's answers say it too)
    # the headers aiohttp's parser refuses twice: the lane hands such a head over
    assert "host" in {name.lower() for name in aiohttp.http_parser.SINGLETON_HEADERS}


def test_websocket():
    # aiohttp's request handler reads its HTTP parser and request queue for requests only;
    # an upgraded connection's bytes go to its WebSocket reader (`_payload_parser`)
    handler = aiohttp.web_protocol.RequestHandler
    slots = {*handler.__slots__, *aiohttp.base_protocol.BaseProtocol.__slots__}
    names = ("_parser", "_messages", "_payload_parser", "_upgraded", "_current_request", "_cache")
    for name in names:
        assert name in slots, name
    for call in ("pause_reading", "resume_reading"):  # the parser, paused while not upgraded
        source = inspect.getsource(getattr(aiohttp.base_protocol.BaseProtocol, call))
        assert "not self._upgraded" in source, call
    assert "self._payload_parser is None and not self._upgraded" in inspect.getsource(
        handler.data_received
    )
    assert "if self._parser is not None:" in inspect.getsource(handler.start)
    assert "self._cache: dict" in inspect.getsource(aiohttp.web_request.BaseRequest.__init__)
    # `detach`: the connection's task closes `self.transport` as it ends, having answered the
    # handler's response with its `prepare` and `write_eof`; a WebSocket closes its
    # connection through its request (`_req`), which is all it reads of it once prepared
    start = inspect.getsource(handler.start)
    assert "if not self._force_close:" in start and "self.transport.close()" in start
    finish = inspect.getsource(handler.finish_response)
    assert "resp.prepare" in finish and "await resp.write_eof()" in finish
    websocket = inspect.getsource(aiohttp.web_ws.WebSocketResponse)
    assert set(re.findall(r"self\._req\.(\w+)", websocket)) <= {"transport", "_protocol"}
    assert "self._req.transport.close()" in websocket


def test_lifecycle(settings):
    sio = create_engine(settings, TaskKeeper()).sio
    for name in ("_service_task", "disconnect", "create_queue"):
        assert name in vars(engineio.AsyncServer), name
    assert isinstance(sio.eio.start_service_task, bool)
    source = inspect.getsource(engineio.AsyncServer)
    for attribute in ("service_task_handle", "service_task_event"):
        assert f"self.{attribute}" in source, attribute
    # python-socketio's handlers of Engine.IO's connection events, wrapped
    assert set(sio.eio.handlers) >= {"connect", "disconnect", "message"}
    assert sio.eio.handlers["message"] == sio._handle_eio_message


def test_dispatch(settings):
    sio = create_engine(settings, TaskKeeper()).sio
    server = socketio.async_server.AsyncServer
    # client events enter through `_handle_event` (overridden); the lifecycle through these,
    # of which `_handle_connect` and `_handle_eio_disconnect` are only wrapped
    for name in (
        "_handle_event",
        "_handle_event_internal",
        "_handle_connect",
        "_handle_disconnect",
        "_handle_eio_disconnect",
        "_handle_eio_message",
        "_send_packet",
    ):
        assert name in vars(server), name
    assert "_handle_disconnect" not in vars(type(sio))
    assert isinstance(socketio.base_server.BaseServer.reserved_events, list)
    # python-socketio's reader of Engine.IO messages, registered on python-engineio's server
    # (`message_now` reads the usual event in its place while it is the one registered)
    assert sio.eio.handlers["message"] == sio._handle_eio_message
    assert sio.eio.handlers["message"] is sio._reading and sio.eio.message_now == sio.message_now


def test_membership(settings):
    manager = create_engine(settings, TaskKeeper()).sio.manager
    assert isinstance(manager, membership.RoomIndex)
    for name in ("basic_enter_room", "basic_leave_room", "get_participants"):
        assert name in vars(socketio.base_manager.BaseManager), name
    # every way out of a room goes through `basic_leave_room`
    for call in ("basic_disconnect", "basic_close_room"):
        source = inspect.getsource(getattr(socketio.base_manager.BaseManager, call))
        assert "basic_leave_room" in source, call
    assert "basic_enter_room" in inspect.getsource(socketio.async_manager.AsyncManager.enter_room)
    assert "basic_leave_room" in inspect.getsource(socketio.async_manager.AsyncManager.leave_room)
    # `basic_disconnect` is replaced: what the library's does beside leaving the rooms
    disconnect = inspect.getsource(socketio.base_manager.BaseManager.basic_disconnect)
    for name in ("self.callbacks", "self.pending_connect", "self.pending_disconnect"):
        assert name in disconnect, name
    assert "basic_disconnect" in inspect.getsource(socketio.async_manager.AsyncManager.disconnect)
    assert "get_rooms" in vars(socketio.base_manager.BaseManager)


class Unscannable(dict):
    """A namespace's rooms that refuse to be scanned: only looked up by name."""

    def _refused(self, *args, **kwargs):
        raise AssertionError("every room of the namespace was scanned")

    items = keys = values = copy = __iter__ = _refused


def test_a_disconnect_leaves_a_sockets_rooms_by_the_index(settings):
    # python-socketio scanned (and copied) every room of the namespace for each disconnect:
    # 19,000 sockets closing at once stalled the loop for minutes
    manager = create_engine(settings, TaskKeeper()).sio.manager
    for n in range(3):
        sid = f"s{n}"
        for room in (None, sid, f"user-u{n}", "availability-s1"):
            manager.basic_enter_room(sid, "/", room, eio_sid=f"e{n}")
    manager.rooms["/"] = Unscannable(manager.rooms["/"])
    assert sorted(manager.get_rooms("s1", "/")) == ["availability-s1", "s1", "user-u1"]
    manager.basic_disconnect("s1", "/")
    rooms = dict.items(manager.rooms["/"])
    assert {room: sorted(members) for room, members in rooms} == {
        None: ["s0", "s2"],
        "s0": ["s0"],
        "s2": ["s2"],
        "user-u0": ["s0"],
        "user-u2": ["s2"],
        "availability-s1": ["s0", "s2"],
    }
    assert "s1" not in manager.named_rooms


def test_admin(settings):
    server = socketio.async_server.AsyncServer
    assert "_trigger_event" in vars(server)
    assert "instrument" in vars(server)
    from socketio.async_admin import InstrumentedAsyncServer

    # the library's dispatch, kept aside (name-mangled) when `instrument()` wraps it
    source = inspect.getsource(InstrumentedAsyncServer)
    assert "self.sio.__trigger_event = self.sio._trigger_event" in source
    assert "def serialize_socket" in source
    for name in ("self.stats_task", "manager._timestamps"):
        assert name in source, name
    # the UI's orders, registered by name (none when read-only), each checked
    for order in ("emit", "join", "leave", "_disconnect"):
        assert f"self.sio.on('{order}'" in inspect.getsource(InstrumentedAsyncServer.instrument)
    # the stats loop, replaced: started by name, with the state it reads, and sending what the
    # library's sends (a field it adds fails here)
    assert "self._emit_server_stats" in inspect.getsource(
        InstrumentedAsyncServer._handle_eio_connect
    )
    for name in ("stop_stats_event", "event_buffer", "admin_queue", "server_id"):
        assert f"self.{name} =" in inspect.getsource(InstrumentedAsyncServer.__init__), name
    assert "self.server_stats_interval" in source
    library_stats = inspect.getsource(InstrumentedAsyncServer._emit_server_stats)
    assert set(re.findall(r"'(\w+)':", library_stats)) == {
        "serverId",
        "hostname",
        "pid",
        "uptime",
        "clientsCount",
        "pollingClientsCount",
        "aggregatedEvents",
        "namespaces",
        "name",
        "socketsCount",
    }
    assert {"push", "get_and_clear"} <= set(vars(socketio.admin.EventBuffer))
