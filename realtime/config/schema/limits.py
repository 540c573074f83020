"""Limits variables: how much one client, user or socket may take before it is refused.

`LimitsSchema` declares the largest message, the back-pressure on a client that does not read
(queued packets and bytes, a stalled replay), the rate limits on events and new connections
(and the proxies trusted to name a client's address), and the caps per user and per socket.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from realtime.config.fields import _CommaList, _env, _positive


class LimitsSchema(Schema):
    """Sizes, back-pressure, rate limits and caps."""

    max_payload_bytes = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1024)),
        "MAX_PAYLOAD_BYTES",
        "largest Socket.IO message or HTTP body accepted",
        "1000000",
    )
    client_backlog_max = _env(
        fields.Integer(strict=False, validate=validate.Range(min=10)),
        "CLIENT_BACKLOG_MAX",
        "packets queued for one client that does not read before its "
        "transport is closed (it reconnects and catches up by replay)",
        "1000",
    )
    client_backlog_max_bytes = _env(
        fields.Integer(strict=False, validate=validate.Range(min=10_000)),
        "CLIENT_BACKLOG_MAX_BYTES",
        "bytes queued for one client that does not read before its transport is closed; "
        "replays are read and sent in slices of a quarter of it",
        "2000000",
    )
    client_stall_timeout_s = _env(
        fields.Float(validate=_positive),
        "CLIENT_STALL_TIMEOUT",
        "seconds a replay waits for a client that reads nothing before its transport is closed",
        "30",
    )
    rate_limit_events = _env(
        fields.Float(validate=validate.Range(min=0.1)),
        "RATE_LIMIT_EVENTS",
        "events one connection may send per second, with bursts of twice as many; past it an "
        "event is answered rate_limited",
        "20",
    )
    rate_limit_disconnect = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1)),
        "RATE_LIMIT_DISCONNECT",
        "events refused rate_limited in a row after which the socket is disconnected and its "
        "connection closed",
        "100",
    )
    rate_limit_connections = _env(
        fields.Float(validate=validate.Range(min=0.1)),
        "RATE_LIMIT_CONNECTIONS",
        "new connections (Engine.IO handshakes) one client address, an IPv6 one by its /64, "
        "may open per second, with bursts of twice as many; past it the Socket.IO handshake "
        "is refused rate_limited, and past twice that the connection is answered 429",
        "50",
    )
    trusted_proxies = _env(
        _CommaList(),
        "TRUSTED_PROXIES",
        "comma-separated addresses or networks (CIDR) of proxies whose X-Forwarded-For "
        "names the client's IP",
        "none: the TCP peer is the client",
    )
    max_connections_per_user = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1)),
        "MAX_CONNECTIONS_PER_USER",
        "live authenticated connections one user may hold on one instance; past it the "
        "handshake or authenticate is refused rate_limited",
        "20",
    )
    max_rooms_per_socket = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1)),
        "MAX_ROOMS_PER_SOCKET",
        "rooms one socket may be in, its own user room included; past it join_room is "
        "refused rate_limited",
        "100",
    )
