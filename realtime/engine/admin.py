"""The Socket.IO Admin UI (`sio.instrument()`), made safe to expose.

Adjusts python-socketio's instrumentation: the UI is shown what an allow-list chooses (a
keyed digest in place of each Engine.IO id, the Origin header and two query keys of each
handshake, client events by the gateway's `AdminView`), never a session id or a token; its
logins are bounded (`LoginGuard`) and a connection whose login was refused takes no other;
refused sockets are reported gone; delivered events (which bypass `sio.emit`) are reported
as a sample.

Library internals touched: `AsyncServer._trigger_event` and the instrumentation's own
(`_InstrumentedAsyncServer__trigger_event`, `serialize_socket`, `stats_task`), and the
manager's `_timestamps`.
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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import socketio

from realtime.engine.dispatch import ADMIN_NAMESPACE, NAMESPACE, GatewayServer
from realtime.engine.socket import kept_socket_calls, put_back_socket_calls
from realtime.limits import LoginGuard
from realtime.tasks import TaskKeeper

logger = logging.getLogger(__name__)


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
        kept = kept_socket_calls()
        self._server = sio.instrument(
            auth=authorised, read_only=read_only, namespace=ADMIN_NAMESPACE
        )
        # the library also patches python-engineio's socket class, for every server of the
        # process; the gateway's sockets do not take those paths
        put_back_socket_calls(kept)
        self._report_safely()
        if not read_only:
            self._check_room_orders()
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

    def _check_room_orders(self) -> None:
        """With its full powers the UI joins and leaves sockets to and from any room it names:
        a room that is no name (None is every socket's connection room, whose loss makes a
        socket never forgotten; a number breaks every sort of room names) or another socket's
        own room is refused and logged, not carried out (python-socketio would act on it, or
        raise inside the UI's connection and end it)."""
        orders = self._sio.handlers.get(ADMIN_NAMESPACE, {})
        manager = self._sio.manager
        for event in ("join", "leave"):
            carry_out = orders.get(event)
            if carry_out is None:
                continue

            async def checked(
                sid: str,
                namespace: Any = None,
                room: Any = None,
                *rest: Any,
                _event: str = event,
                _carry_out: Any = carry_out,
            ) -> Any:
                if (
                    not isinstance(namespace, str)
                    or not isinstance(room, str)
                    or not room
                    or manager.is_sid_room(namespace, room)
                ):
                    logger.warning("admin ui order refused", extra={"order": _event})
                    return None
                return await _carry_out(sid, namespace, room, *rest)

            orders[event] = checked

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
