"""Server & HTTP variables: where the gateway listens, how the process runs, what it serves.

`ServerSchema` declares the listen address, the log level, event loop and shutdown time, the
Socket.IO endpoint (its path, compression and the Engine.IO heartbeat and connect timeouts),
and the HTTP API: its bearer token, CORS origins, the extra events POST /broadcast may send
and how many rooms GET /status names. `LOG_LEVELS` and `EVENT_LOOPS`: what LOG_LEVEL and
EVENT_LOOP accept.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from realtime.config.fields import _Boolean, _CommaList, _env, _positive

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class ServerSchema(Schema):
    """Listening, the process, the Socket.IO endpoint and the HTTP API."""

    host = _env(
        fields.String(validate=validate.Length(min=1)), "HOST", "listen address", "127.0.0.1"
    )
    port = _env(
        fields.Integer(strict=False, validate=validate.Range(0, 65535)),
        "PORT",
        "listen port (0: any free port)",
        "8000",
    )
    broadcast_token = _env(
        fields.String(validate=validate.Length(min=16)),
        "BROADCAST_TOKEN",
        "bearer token for POST /broadcast and GET /status (16+ characters)",
        "unset: both answer 403",
    )
    cors_origins = _env(
        _CommaList(),
        "CORS_ORIGINS",
        "comma-separated origins allowed to call the HTTP API and Socket.IO from a browser",
        "none (same origin only)",
    )
    ping_interval_s = _env(
        fields.Float(validate=validate.Range(min=0.05, max=3600)),
        "PING_INTERVAL",
        "seconds between the server's Engine.IO pings: shorter than the idle timeout of every "
        "proxy and mobile network on the way, longer to spare mobile radios and CPU",
        "25",
    )
    ping_timeout_s = _env(
        fields.Float(validate=validate.Range(min=0.05, max=3600)),
        "PING_TIMEOUT",
        "seconds a client has to answer a ping before its connection is closed (a dead client "
        "is noticed within PING_INTERVAL + PING_TIMEOUT)",
        "20",
    )
    connect_timeout_s = _env(
        fields.Float(validate=_positive),
        "CONNECT_TIMEOUT",
        "seconds an Engine.IO connection may stay without connecting a namespace (the "
        "protocol's connectTimeout, checked every PING_TIMEOUT; AUTH_TIMEOUT closes one "
        "without an authenticated socket sooner by default)",
        "45",
    )
    log_level = _env(
        fields.String(validate=validate.OneOf(LOG_LEVELS)),
        "LOG_LEVEL",
        "debug, info, warning or error",
        "info",
    )
    socketio_path = _env(
        fields.String(validate=validate.Regexp(r"/[\w./-]*\Z")),
        "SOCKETIO_PATH",
        "URL path of the Socket.IO endpoint",
        "/socket.io/",
    )
    ws_compression = _env(
        _Boolean(),
        "WS_COMPRESSION",
        "negotiate WebSocket per-message compression (about 4x the memory per connection)",
        "false",
    )
    event_loop = _env(
        fields.String(validate=validate.OneOf(EVENT_LOOPS)),
        "EVENT_LOOP",
        "uvloop, asyncio, or auto (uvloop when it is installed: it is, on Linux)",
        "auto",
    )
    broadcast_events = _env(
        _CommaList(), "BROADCAST_EVENTS", "extra event names POST /broadcast may send", "none"
    )
    shutdown_timeout_s = _env(
        fields.Float(validate=_positive),
        "SHUTDOWN_TIMEOUT",
        "seconds a graceful shutdown may take",
        "10",
    )
    status_rooms_max = _env(
        fields.Integer(strict=False, validate=validate.Range(min=0, max=10_000)),
        "STATUS_ROOMS_MAX",
        "largest rooms GET /status lists by name (it counts all of them)",
        "100",
    )
