"""The Socket.IO Admin UI (`sio.instrument()`), made safe to expose.

Adjusts python-socketio's instrumentation: the UI is shown what an allow-list chooses (a
keyed digest for each Engine.IO id; sockets, their user and client events as the gateway's
`AdminView` shows them), never a session id or a token; logins are bounded (`LoginGuard`), a
connection whose login was refused takes no other; refused sockets are reported gone,
delivered events (which bypass `sio.emit`) as a sample, a socket whose user changed again;
the stats list every namespace and the bytes of the engine's own transports; an order the UI
may not give is refused where it shows.

Library internals touched: `AsyncServer._trigger_event`, the instrumentation's own
(`_InstrumentedAsyncServer__trigger_event`, `serialize_socket`, `stats_task`,
`_emit_server_stats` (replaced), `stop_stats_event`, `event_buffer`, `admin_queue`,
`server_id`) and the manager's `_timestamps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hmac
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import socketio

from realtime.engine.dispatch import ADMIN_NAMESPACE, NAMESPACE, GatewayServer
from realtime.engine.packets import Traffic
from realtime.engine.socket import kept_socket_calls, put_back_socket_calls
from realtime.limits import LoginGuard
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdminView:
    """What the Admin UI is shown and how its logins are bounded (the gateway's policies,
    handed to the engine): `received(event, args)` a client event (`[name, *args]`),
    `sent(event, payload)` an event sent, `socket(described, client_id, data)` a socket from
    the library's description, `identity(sid)` a gateway socket's data (None: nothing);
    `logins` bounds failed logins; `refused(reason, address)` hears of each refused one."""

    received: Callable[[Any, list[Any]], list[Any]]
    sent: Callable[[str, Any], Any]
    socket: Callable[[Mapping[str, Any], str, dict[str, Any]], dict[str, Any]]
    identity: Callable[[str], dict[str, Any] | None]
    logins: LoginGuard
    refused: Callable[[str, str], None]


class AdminReport:
    """The Socket.IO Admin UI (`sio.instrument()`), on namespace `/admin`, for the right
    credentials only (`authorised`), at a bounded rate of failed logins. The library sees
    connections, rooms and received events; the rest is reported here. What the UI is shown
    is chosen field by field: nothing that acts as a user (a session id, a token)."""

    def __init__(
        self,
        sio: GatewayServer,
        authorised: Callable[[Any], bool],
        read_only: bool,
        tasks: TaskKeeper,
        view: AdminView,
    ):
        self._sio = sio
        self._tasks = tasks
        self._view = view
        self._client_key = os.urandom(32)  # of the digests of Engine.IO ids (`client_id`)
        self._authorised = authorised  # whether a login's `auth` holds the credentials
        kept = kept_socket_calls()
        self._server = sio.instrument(
            auth=authorised, read_only=read_only, namespace=ADMIN_NAMESPACE
        )
        # the library also patches python-engineio's socket class, for every server of the
        # process; the gateway's sockets do not take those paths
        put_back_socket_calls(kept)
        self._report_safely()
        self._check_orders(read_only)
        self._reporting = 0  # reports of delivered events under way
        self.traffic = Traffic()  # what the engine's transports carry (the endpoint counts)
        self.stats_interval_s = self._server.server_stats_interval  # read at each report
        self._server._emit_server_stats = self._report_stats
        sio.instrumented = True

    def _watching(self) -> bool:
        """Whether an Admin UI is connected here (nothing is reported to nobody)."""
        return bool(self._sio.manager.rooms.get(ADMIN_NAMESPACE, {}).get(None))

    def client_id(self, eio_sid: str) -> str:
        """A client's Engine.IO id (its session's credential, a long-polling client's whole
        one) as the UI is shown it: a keyed digest, which groups its sockets and no more."""
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
            if namespace == ADMIN_NAMESPACE:
                if event == "connect":
                    return await self._login(reporting, *args)
                return await dispatching(event, namespace, *args)
            watched = self._watching()
            shown = self._data(args[0], namespace) if watched else None  # as the UI has it
            if event != "connect":
                if watched:
                    received = view.received(event, list(args[1:]))
                    await self._tell("event_received", (namespace, args[0], received, _now()))
                answer = await dispatching(event, namespace, *args)
                if watched:  # an `authenticate` may have changed its user
                    await self._data_changed(args[0], namespace, shown)
                return answer
            try:
                accepted = await reporting(event, namespace, *args)
            except socketio.exceptions.ConnectionRefusedError:
                await self._refused(namespace, args[0])
                raise
            if accepted is False:
                await self._refused(namespace, args[0])
            elif watched:  # reported before the namespace ran: authenticated since
                await self._data_changed(args[0], namespace, shown)
            return accepted

        sio._trigger_event = trigger_event
        serialize = self._server.serialize_socket

        def serialize_socket(sid: str, namespace: str, eio_sid: str | None = None) -> dict:
            described = serialize(sid, namespace, eio_sid)
            client_id = self.client_id(described["clientId"])
            return view.socket(described, client_id, self._data(sid, namespace))

        self._server.serialize_socket = serialize_socket

    def _data(self, sid: str, namespace: str) -> dict[str, Any]:
        """A socket's data as the UI is shown it: a gateway socket's user, else nothing."""
        return (self._view.identity(sid) or {}) if namespace == NAMESPACE else {}

    async def _data_changed(self, sid: str, namespace: str, shown: Any) -> None:
        data = self._data(sid, namespace)
        if data != shown and self._sio.manager.eio_sid_from_sid(sid, namespace) is not None:
            await self._tell("socket_updated", {"id": sid, "nsp": namespace, "data": data})

    def _check_orders(self, read_only: bool) -> None:
        """The UI's orders checked: read-only, the library answers none (the UI offers its join
        form still); with full powers, it would join or leave a room that is no name (None,
        every socket's connection room: left, the socket is never forgotten; a number breaks
        room sorts) or another socket's own room. Those are refused, where the UI shows it."""
        orders = self._sio.handlers[ADMIN_NAMESPACE]
        for event in ("emit", "join", "leave", "_disconnect"):
            carry_out = orders.get(event)  # the library's (none when read-only)

            async def order(sid: str, *args: Any, _event: str = event, _do: Any = carry_out) -> Any:
                if _do is None:
                    return await self._refuse_order(sid, _event, "read_only")
                if _event in ("join", "leave") and not self._nameable(*args[:2]):
                    return await self._refuse_order(sid, _event, "room")
                return await _do(sid, *args)

            orders[event] = order

    def _nameable(self, namespace: Any = None, room: Any = None) -> bool:
        named = isinstance(namespace, str) and isinstance(room, str) and bool(room)
        return named and not self._sio.manager.is_sid_room(namespace, room)

    async def _refuse_order(self, sid: str, order: str, reason: str) -> None:
        """An order not carried out: logged, answered `order_refused`, and that answer listed
        among the UI's events of namespace `/admin` (it has no place for a message)."""
        logger.warning("admin ui order refused", extra={"order": order, "reason": reason})
        refusal = {"order": order, "reason": reason, "message": _ORDER_REFUSALS[reason]}
        await self._tell("order_refused", refusal, to=sid)
        await self._tell("event_sent", (ADMIN_NAMESPACE, sid, ["order_refused", refusal], _now()))

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
        await self._tell("socket_disconnected", (namespace, sid, "refused", _now()))

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
            at = _now()
            for sid in sids:
                await self._tell("event_sent", (NAMESPACE, sid, [event, payload], at))
        finally:
            self._reporting -= 1

    async def _report_stats(self) -> None:
        """python-socketio's `server_stats` loop (`_emit_server_stats`), with every namespace
        (it read those of decorated handlers once: not `/`) and the bytes of the engine's own
        transports (its counts see only the library's)."""
        server, sio, traffic = self._server, self._sio, self.traffic
        started = time.time()
        while not server.stop_stats_event.is_set():
            await sio.sleep(self.stats_interval_s)
            buffer = server.event_buffer
            for kind, count in (("bytesIn", traffic.received), ("bytesOut", traffic.sent)):
                if count:
                    buffer.push(kind, count)
            traffic.received = traffic.sent = 0
            rooms = sio.manager.rooms
            stats = {
                "serverId": server.server_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "uptime": time.time() - started,
                "clientsCount": len(sio.eio.sockets),
                "pollingClientsCount": sum(not s.upgraded for s in sio.eio.sockets.values()),
                "aggregatedEvents": buffer.get_and_clear(),
                "namespaces": [
                    {"name": name, "socketsCount": len(rooms.get(name, {}).get(None, ()))}
                    for name in sorted({*sio.handlers, *sio.namespace_handlers} - {"*"})
                ],
            }
            await self._tell("server_stats", stats)
            while server.admin_queue:  # the library's reports of rooms joined and left
                await self._tell(*server.admin_queue.pop(0))

    async def _tell(self, event: str, data: Any, to: str | None = None) -> None:
        await self._sio.emit(event, data, to=to, namespace=ADMIN_NAMESPACE)

    async def shutdown(self) -> None:
        # the library's own shutdown waits out the stats task's sleep (two seconds)
        task = self._server.stats_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._server.stats_task = None


ADMIN_REPORTED_RECIPIENTS = 50  # of one delivered event, reported to the Admin UI
ADMIN_REPORTS_UNDER_WAY = 8  # past it, delivered events go unreported until some are sent
_ORDER_REFUSALS = {
    "read_only": "the Admin UI is read-only here (ADMIN_UI_READ_ONLY): nothing was done",
    "room": "not a room the Admin UI may name (none, or a socket's own room): nothing was done",
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
