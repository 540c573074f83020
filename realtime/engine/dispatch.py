"""What clients send, dispatched: python-socketio's server with the gateway's rules.

Replaces python-socketio's `AsyncServer` handling of client packets (`GatewayServer`): an event
with a reserved name (or no string name) reaches the namespace as `RefusedEventName`, never
its lifecycle handlers; binary events are refused at once (the library kept every announced
attachment); a client that leaves its last namespace is closed; the gateway's namespace is
answered without the library's dispatch chain, its EVENT packets read without the library's
packet object, and on a WebSocket (`message_now`) the usual one without a coroutine. Without
`rules` (the conformance app) it is the protocol's own server.

Library internals touched: `AsyncServer._handle_connect`, `_handle_eio_disconnect`,
`_handle_eio_message`, `_handle_event` (overridden) and `_send_packet`; python-engineio's
server's `handlers["message"]` (python-socketio's reader, compared), `message_now` (set here,
read by `socket.py`), `closing_turns` and `connecting_turns` (set by `lifecycle.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import socketio

from realtime.engine.packets import FastJson, ack_packet

NAMESPACE = "/"
ADMIN_NAMESPACE = "/admin"  # the Socket.IO Admin UI's, when ADMIN_UI_USERNAME is set
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


class Later:
    """What a namespace's `answer_now` returns for an event it cannot answer without a wait:
    the coroutine that answers it (its result is the acknowledgement's)."""

    __slots__ = ("answer",)

    def __init__(self, answer: Coroutine[Any, Any, Any]):
        self.answer = answer


MAX_ID_DIGITS = 18  # an ack id the fast read takes; longer ones the library reads (up to 99)
# Socket.IO packet types with binary attachments (BINARY_EVENT, BINARY_ACK)
_BINARY_PACKETS = (str(socketio.packet.BINARY_EVENT), str(socketio.packet.BINARY_ACK))


def _event_on_main_namespace(data: str, at: int = 0) -> tuple[int | None, Any] | None:
    """An EVENT on namespace `/` (`2[...]`, `2<id>[...]`) at `at` in `data`: its ack id and
    its data, read as python-socketio's `Packet.decode` reads them; None for any other shape
    (the library reads those)."""
    start = data.find("[", at + 1, at + MAX_ID_DIGITS + 2)
    if start == -1:
        return None
    digits = data[at + 1 : start]
    if digits and not (digits.isascii() and digits.isdigit()):
        return None
    return (int(digits) if digits else None), FastJson.loads_from(data, start)


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
        self.eio.message_now = self.message_now  # what its WebSockets read (`socket.py`)
        self._reading = self.eio.handlers["message"]  # python-socketio's reader of messages

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
        turns = getattr(self.eio, "connecting_turns", None)
        if turns is not None:
            await turns.take()  # a flood of connects (a reconnect storm): a few per turn
            if eio_sid not in self.environ:
                return  # its connection closed while it waited: nothing to connect
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
        if type(data) is str and data[:1] == "2":
            event = _event_on_main_namespace(data)
            if event is not None:  # the usual packet, read without building a packet object
                await self._handle_event(eio_sid, None, *event)
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
        # it with no session, outside the per-user limit. A flood of them (every client
        # leaving at once) is handled a few per turn of the loop.
        turns = getattr(self.eio, "closing_turns", None)
        if turns is not None:
            await turns.take()
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
        self._ack(eio_sid, id, await handler.trigger_event(data[0], sid, *data[1:]))

    def message_now(self, eio_sid: str, message: str) -> Coroutine[Any, Any, None] | None:
        """An Engine.IO MESSAGE read from a WebSocket (`message`: its text, `4` first): the
        usual one, a named EVENT on `/` that the namespace answers without a wait
        (`answer_now`), is handled now, its ACK put in the socket's outbox, and None is
        returned; for any other, the coroutine that handles it, to await before the next.
        No coroutine is made for the usual event, none awaited."""
        reader = self.eio.handlers["message"]  # (another's, on a server that only echoes)
        if message[1:2] == "2" and reader is self._reading and self._answers_now():
            handler = self.namespace_handlers.get(NAMESPACE)
            answer_now = getattr(handler, "answer_now", None)
            if eio_sid not in self.environ:
                return None  # read after its transport closed (as `_handle_eio_message`)
            event = _event_on_main_namespace(message, 1) if answer_now else None
            if event is not None:
                id, data = event
                if not (type(data) is list and data and type(data[0]) is str) or (
                    data[0] in RESERVED_EVENTS
                ):
                    return self._handle_event(eio_sid, None, id, data)  # refused there
                sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
                if not self.manager.is_connected(sid, NAMESPACE):
                    return None
                answer = answer_now(data[0], sid, *data[1:])
                if type(answer) is Later:
                    return self._ack_later(eio_sid, id, answer.answer)
                self._ack(eio_sid, id, answer)
                return None
        return reader(eio_sid, message[1:])

    def _answers_now(self) -> bool:
        # the gateway's rules; no Admin UI (the library's path reports events); no task per event
        return self.rules and not (self.instrumented or self.async_handlers)

    async def _ack_later(self, eio_sid: str, id: Any, answer: Coroutine[Any, Any, Any]) -> None:
        self._ack(eio_sid, id, await answer)

    def _ack(self, eio_sid: str, id: Any, answer: Any) -> None:
        """The ACK of an event that asked for one (an `id`): its answer as its one argument
        (None: none), as python-socketio's `_handle_event_internal` sends it."""
        if id is not None:
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                socket.queue.put_nowait(ack_packet(id, answer))
