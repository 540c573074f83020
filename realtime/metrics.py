"""Prometheus metrics, one registry per app (no module-level state: tests run many apps).

Figures the gateway already keeps (connections, emitted events, lag) are read at scrape time
from their owners; only what nobody else counts has a counter here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.broadcast_requests = Counter(
            "realtime_broadcast_requests",
            "POST /broadcast requests, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "realtime_auth_failures",
            "Refused authentications, by error code",
            ["code"],
            registry=self.registry,
        )
        self.sockets_cut = Counter(
            "realtime_sockets_cut",
            "Sockets cut by an operator (POST /disconnect, POST /revoke) on this instance",
            registry=self.registry,
        )
        self.jwks_fetches = Counter(
            "realtime_jwks_fetches",
            "Fetches of the identity provider's JWKS (JWT_JWKS_URL), by outcome (ok, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "realtime_rate_limited",
            "Refusals rate_limited, by limit (events, connections, user_connections, rooms)",
            ["limit"],
            registry=self.registry,
        )
        self.admin_logins_refused = Counter(
            "realtime_admin_logins_refused",
            "Admin UI logins refused, by reason (credentials, rate_limited)",
            ["reason"],
            registry=self.registry,
        )
        self.socket_errors = Counter(
            "realtime_socket_errors",
            "Socket.IO events answered with an error, by code",
            ["code"],
            registry=self.registry,
        )

    def observe(
        self,
        connections: Callable[[], Mapping[str, int]],
        emitted: Callable[[], Mapping[str, int]],
        changes_handled: Callable[[], int],
        lag_s: Callable[[], Mapping[str, float]],
        lease_held: Callable[[], int],
        takeovers: Callable[[], int],
        caught_up: Callable[[], int],
    ) -> None:
        """Register the figures read from their owners at scrape time."""
        self.registry.register(
            _Observed(
                connections, emitted, changes_handled, lag_s, lease_held, takeovers, caught_up
            )
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# Sessions.counts() key -> gauge
_CONNECTION_GAUGES = (
    (
        "transports",
        "realtime_transports",
        "Engine.IO connections on this instance, with or without a Socket.IO socket",
    ),
    ("connections", "realtime_connections", "Connected Socket.IO clients on this instance"),
    (
        "authenticated",
        "realtime_authenticated_connections",
        "Authenticated Socket.IO clients on this instance",
    ),
    ("users", "realtime_users", "Distinct authenticated users on this instance"),
)


class _Observed(Collector):
    def __init__(
        self, connections, emitted, changes_handled, lag_s, lease_held, takeovers, caught_up
    ):
        self._connections = connections
        self._emitted = emitted
        self._changes_handled = changes_handled
        self._lag_s = lag_s
        self._lease_held = lease_held
        self._takeovers = takeovers
        self._caught_up = caught_up

    def collect(self):
        counts = self._connections()
        for key, name, help_text in _CONNECTION_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=counts.get(key, 0))
        emitted = CounterMetricFamily(
            "realtime_events_emitted", "Data events emitted, by event name", labels=["event"]
        )
        for name, count in sorted(self._emitted().items()):
            emitted.add_metric([name], count)
        yield emitted
        yield CounterMetricFamily(
            "realtime_changes_handled",
            "Database changes consumed from the change stream",
            value=self._changes_handled(),
        )
        lag = GaugeMetricFamily(
            "realtime_change_lag_seconds",
            "Seconds between the last change and its processing",
            labels=["collection"],
        )
        for collection, seconds in sorted(self._lag_s().items()):
            lag.add_metric([collection], seconds)
        yield lag
        yield GaugeMetricFamily(
            "realtime_watcher_lease_held",
            "1 while this instance holds the watcher lease and runs the change feed",
            value=self._lease_held(),
        )
        yield CounterMetricFamily(
            "realtime_watcher_takeovers",
            "Times this instance took the watcher lease",
            value=self._takeovers(),
        )
        yield CounterMetricFamily(
            "realtime_events_caught_up",
            "Events this instance read from the log because no message brought them",
            value=self._caught_up(),
        )
