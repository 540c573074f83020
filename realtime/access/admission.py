"""What each client may open and send here: connections per address, events per connection,
sockets per user. The rates are `RATE_LIMIT_*`; the buckets are `realtime/limits.py`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from realtime.config import Settings
from realtime.engine import RATE_LIMITED
from realtime.errors import GatewayError
from realtime.limits import (
    TOO_MANY_CONNECTIONS,
    Admission,
    KeyedBuckets,
    TokenBucket,
    address_key,
    client_address,
    trusted_networks,
)
from realtime.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)  # one per Engine.IO connection: kept small
class TransportUse:
    """What one Engine.IO connection has used of its limits. Kept by the connection, not by
    the socket it carries: a socket disconnected for flooding that connects the namespace
    again on the same connection gets no fresh allowance."""

    events: TokenBucket | None = None  # what it may still send (made at its first event)
    refused_in_a_row: int = 0  # events refused rate_limited since it last kept to its rate
    # (for a whole burst: a client sending steadily past its rate gets some through, and is
    # still disconnected)
    sockets: int = 0  # namespace connections it has carried


class ConnectionLimits:
    """Admits connections, sockets and events, and counts what each one used."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        flooding: Callable[[str, str], None],
    ):
        self._settings = settings
        self._metrics = metrics
        self._flooding = flooding  # (connection, sid): a socket to disconnect for flooding
        self.open: dict[str, TransportUse] = {}  # by connection
        self._users: dict[str, set[str]] = {}  # user id -> its authenticated sids here
        self._trusted_proxies = trusted_networks(settings.trusted_proxies)
        rate = settings.rate_limit_connections
        burst = max(1.0, 2 * rate)  # bursts of twice the rate, and at least one
        self._connections = KeyedBuckets(rate, burst)  # new connections per address
        self._refusals = KeyedBuckets(rate, burst)  # and those refused past it

    def opened(self, connection: str) -> None:
        self.open[connection] = TransportUse()

    def closed(self, connection: str) -> None:
        self.open.pop(connection, None)

    def socket_opened(self, connection: str) -> None:
        use = self.open.get(connection)
        if use is not None:
            use.sockets += 1

    def admit_transport(self, environ: Mapping[str, str]) -> Admission:
        """A new Engine.IO connection from this client's address (an IPv6 one by its /64),
        before it opens: within `RATE_LIMIT_CONNECTIONS`, admitted. Past it, it opens and its
        Socket.IO handshake is refused `rate_limited` (which clients show); past it twice
        over, it is turned away before it opens, so that a client that ignores the refusals
        holds nothing here."""
        address = address_key(client_address(environ, self._trusted_proxies))
        if self._connections.take(address):
            return Admission.ADMITTED
        self._metrics.rate_limited.labels("connections").inc()
        return Admission.REFUSED if self._refusals.take(address) else Admission.TURNED_AWAY

    def admit_socket(self, connection: str, environ: Mapping[str, str]) -> None:
        """The Socket.IO handshake of a connection `admit_transport` refused is refused; so
        is one past its address's rate on a connection that carried a socket before (a new
        socket on an old connection is a new connection: one disconnected for flooding
        would otherwise come back at once, free)."""
        if environ.get(RATE_LIMITED) is not None:
            raise GatewayError("rate_limited", TOO_MANY_CONNECTIONS)
        use = self.open.get(connection)
        if use is not None and use.sockets > 1:
            if self.admit_transport(environ) is not Admission.ADMITTED:
                raise GatewayError("rate_limited", TOO_MANY_CONNECTIONS)

    def admit_event(self, connection: str, sid: str) -> None:
        """One more client event from this socket, within `RATE_LIMIT_EVENTS`; a socket that
        goes on sending past `RATE_LIMIT_DISCONNECT` refusals is disconnected."""
        use = self.open.get(connection)
        if use is None:
            return  # closing: the event is answered as for a socket that went
        now = time.monotonic()
        if use.events is None:
            rate = self._settings.rate_limit_events
            use.events = TokenBucket(rate, max(1.0, 2 * rate), now)
        if use.events.take(now):
            if use.refused_in_a_row and use.events.idle(now):
                use.refused_in_a_row = 0  # it kept to its rate for a whole burst: forgiven
            return
        use.refused_in_a_row += 1
        self._metrics.rate_limited.labels("events").inc()
        if use.refused_in_a_row == self._settings.rate_limit_disconnect:
            logger.info("socket disconnected: too many events", extra={"sid": sid})
            self._flooding(connection, sid)  # after this event's answer, already on its way
        raise GatewayError(
            "rate_limited",
            f"more than {self._settings.rate_limit_events:g} events a second: slow down",
        )

    def admit_user_socket(self, user_id: str) -> None:
        most = self._settings.max_connections_per_user
        if len(self._users.get(user_id, ())) >= most:
            self._metrics.rate_limited.labels("user_connections").inc()
            raise GatewayError(
                "rate_limited", f"this user has {most} connections already: close one first"
            )

    def user_socket_added(self, user_id: str, sid: str) -> None:
        self._users.setdefault(user_id, set()).add(sid)

    def user_socket_gone(self, user_id: str, sid: str) -> None:
        sids = self._users.get(user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._users[user_id]
