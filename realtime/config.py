"""Settings from the environment (12-factor), validated once at start-up.

Every variable is declared once in `SettingsSchema`, with its help text; `--help` and the
README's table are written from the same declarations. A bad value raises `ConfigError`
naming the variable, which `__main__` prints as one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

logger = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
SUPPORTED_JWT_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)
DEV_SECRET_SUFFIX = ".jwt-secret"


class ConfigError(Exception):
    """A configuration value is missing or wrong; `variable` names it."""

    def __init__(self, variable: str, message: str):
        self.variable = variable
        self.message = message
        super().__init__(f"{variable}: {message}")


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = None
    jwt_secret_generated: bool = False
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_claim_user_id: str = "sub"
    jwt_claim_role: str = "role"
    jwt_claim_shop_ids: str = "shop_ids"
    jwt_jwks_url: str | None = None
    jwt_jwks_cache_s: float = 300.0
    jwt_jwks_refetch_s: float = 30.0
    jwt_leeway_s: float = 0.0
    revocation_reload_s: float = 5.0
    mongodb_url: str | None = None
    mongodb_db: str = "booking"
    mongodb_state_db: str | None = None
    store_path: str = "./realtime.db"
    redis_url: str | None = None
    broadcast_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    auth_timeout_s: float = 10.0
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    connect_timeout_s: float = 45.0
    auth_expiring_lead_s: float = 60.0
    max_payload_bytes: int = 1_000_000
    log_level: str = "info"
    socketio_path: str = "/socket.io/"
    ws_compression: bool = False
    event_loop: str = "auto"
    bookings_collection: str = "bookings"
    payments_collection: str = "payments"
    booking_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    payment_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    published_booking_fields: tuple[str, ...] = ()
    broadcast_events: tuple[str, ...] = ()
    event_retention_s: float = 7 * 24 * 3600.0
    idempotency_ttl_s: float = 24 * 3600.0
    replay_max_events: int = 10_000
    watcher_poll_ms: int = 10
    shutdown_timeout_s: float = 10.0
    client_backlog_max: int = 1000
    client_backlog_max_bytes: int = 2_000_000
    client_stall_timeout_s: float = 30.0
    watcher_lease_ttl_s: float = 10.0
    rate_limit_events: float = 20.0
    rate_limit_disconnect: int = 100
    rate_limit_connections: float = 50.0
    trusted_proxies: tuple[str, ...] = ()
    max_connections_per_user: int = 20
    max_rooms_per_socket: int = 100
    reservation_cache_s: float = 2.0
    status_rooms_max: int = 100
    test_page: bool | None = None  # None: on with the embedded store, off with MongoDB
    admin_ui_username: str | None = None
    admin_ui_password: str | None = None
    admin_ui_read_only: bool = True

    @property
    def serves_test_page(self) -> bool:
        return (not self.uses_mongodb) if self.test_page is None else self.test_page

    @property
    def admin_ui(self) -> bool:
        return self.admin_ui_username is not None

    @property
    def issues_dev_tokens(self) -> bool:
        """The test page's "dev token" button: only for the embedded store's own secret."""
        return self.jwt_secret_generated and not self.uses_mongodb

    @property
    def uses_mongodb(self) -> bool:
        return self.mongodb_url is not None

    @property
    def mongodb_state_database(self) -> str:
        return self.mongodb_state_db or f"{self.mongodb_db}_realtime"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


class _CommaList(fields.Field):
    """A comma-separated string -> tuple of non-empty, stripped items."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("must be a comma-separated string")
        return tuple(item.strip() for item in value.split(",") if item.strip())


class _JsonObjectOfStrings(fields.Field):
    """A JSON object of string -> string (field-name overrides)."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be a JSON object: {exc}") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in parsed.items()
        ):
            raise ValidationError(
                'must be a JSON object of names, e.g. {"customerId": "client_id"}'
            )
        return parsed


class _Boolean(fields.Boolean):
    truthy = {"1", "true", "yes", "on"}
    falsy = {"0", "false", "no", "off", ""}


def _env(field: fields.Field, name: str, help_text: str, default: Any = None) -> fields.Field:
    field.data_key = name
    field.metadata["help"] = help_text
    field.metadata["default_text"] = default
    return field


_positive = validate.Range(min=0, min_inclusive=False)


class SettingsSchema(Schema):
    """One declaration per environment variable: its parser, check and help."""

    class Meta:
        unknown = EXCLUDE

    host = _env(
        fields.String(validate=validate.Length(min=1)), "HOST", "listen address", "127.0.0.1"
    )
    port = _env(
        fields.Integer(strict=False, validate=validate.Range(0, 65535)),
        "PORT",
        "listen port (0: any free port)",
        "8000",
    )
    jwt_secret = _env(
        fields.String(validate=validate.Length(min=32)),
        "JWT_SECRET",
        "HS256 key (at least 32 characters)",
        "unset: on the embedded store a random secret is kept in "
        "STORE_PATH + '.jwt-secret' (mode 0600); with MONGODB_URL a key is required",
    )
    jwt_public_key = _env(
        fields.String(),
        "JWT_PUBLIC_KEY",
        "PEM public key (or a path to one) for RS256/ES256 tokens",
        "unset",
    )
    jwt_algorithms = _env(
        _CommaList(),
        "JWT_ALGORITHMS",
        "accepted token algorithms, comma-separated",
        "HS256 with JWT_SECRET, RS256,ES256 with JWT_PUBLIC_KEY",
    )
    jwt_audience = _env(
        fields.String(), "JWT_AUDIENCE", "required `aud` claim", "unset: not checked"
    )
    jwt_issuer = _env(fields.String(), "JWT_ISSUER", "required `iss` claim", "unset: not checked")
    jwt_claim_user_id = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_USER_ID",
        "claim holding the user id (dotted path)",
        "sub",
    )
    jwt_claim_role = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_ROLE",
        "claim holding the role: customer, staff or admin (dotted path, e.g. app_metadata.role)",
        "role",
    )
    jwt_claim_shop_ids = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_SHOP_IDS",
        "claim holding a staff member's shop ids (dotted path)",
        "shop_ids",
    )
    jwt_jwks_url = _env(
        fields.String(validate=validate.Regexp(r"^https?://")),
        "JWT_JWKS_URL",
        "identity provider's JWKS URL: RS/ES/EdDSA keys chosen by the token's `kid`",
        "unset",
    )
    jwt_jwks_cache_s = _env(
        fields.Float(validate=_positive),
        "JWT_JWKS_CACHE",
        "seconds a fetched JWKS is used before it is fetched again",
        "300",
    )
    jwt_jwks_refetch_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "JWT_JWKS_REFETCH_INTERVAL",
        "least seconds between fetches caused by a token with an unknown `kid` (a key rotation)",
        "30",
    )
    jwt_leeway_s = _env(
        fields.Float(validate=validate.Range(min=0, max=3600)),
        "JWT_LEEWAY",
        "seconds of clock skew allowed when checking `exp`, `nbf` and `iat`",
        "0",
    )
    revocation_reload_s = _env(
        fields.Float(validate=validate.Range(min=0.1, max=3600)),
        "REVOCATION_RELOAD",
        "seconds between each instance's re-reads of the revocations in the store (a safety "
        "net: with REDIS_URL they reach every instance at once)",
        "5",
    )
    mongodb_url = _env(
        fields.String(validate=validate.Regexp(r"^mongodb(\+srv)?://")),
        "MONGODB_URL",
        "use this MongoDB replica set instead of the embedded store",
        "unset",
    )
    mongodb_db = _env(
        fields.String(validate=validate.Length(min=1)),
        "MONGODB_DB",
        "MongoDB database name",
        "booking",
    )
    mongodb_state_db = _env(
        fields.String(validate=validate.Length(min=1, max=63)),
        "MONGODB_STATE_DB",
        "MongoDB database for the gateway's own state (event log, ids, resume tokens, keys)",
        "MONGODB_DB + '_realtime'",
    )
    store_path = _env(
        fields.String(validate=validate.Length(min=1)),
        "STORE_PATH",
        "embedded SQLite store file",
        "./realtime.db",
    )
    redis_url = _env(
        fields.String(validate=validate.Regexp(r"^rediss?://")),
        "REDIS_URL",
        "fan emits out across instances through this Redis",
        "unset",
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
    auth_timeout_s = _env(
        fields.Float(validate=_positive),
        "AUTH_TIMEOUT",
        "seconds an unauthenticated socket may stay connected",
        "10",
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
    auth_expiring_lead_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "AUTH_EXPIRING_LEAD",
        "seconds before a token's exp that `auth_expiring` is sent",
        "60",
    )
    max_payload_bytes = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1024)),
        "MAX_PAYLOAD_BYTES",
        "largest Socket.IO message or HTTP body accepted",
        "1000000",
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
    bookings_collection = _env(
        fields.String(validate=validate.Length(min=1)),
        "BOOKINGS_COLLECTION",
        "collection holding bookings",
        "bookings",
    )
    payments_collection = _env(
        fields.String(validate=validate.Length(min=1)),
        "PAYMENTS_COLLECTION",
        "collection holding payments",
        "payments",
    )
    booking_fields = _env(
        _JsonObjectOfStrings(),
        "BOOKING_FIELDS",
        'JSON object renaming booking fields (dotted paths), e.g. {"customerId": "customer.id"}',
        "{}",
    )
    payment_fields = _env(
        _JsonObjectOfStrings(),
        "PAYMENT_FIELDS",
        "JSON object renaming payment fields (dotted paths)",
        "{}",
    )
    published_booking_fields = _env(
        _CommaList(),
        "PUBLISHED_BOOKING_FIELDS",
        "booking document fields copied into reservation_update.data",
        "none",
    )
    broadcast_events = _env(
        _CommaList(), "BROADCAST_EVENTS", "extra event names POST /broadcast may send", "none"
    )
    event_retention_s = _env(
        fields.Float(validate=_positive),
        "EVENT_RETENTION",
        "seconds the event log (and the embedded store's change log) keeps entries",
        "604800 (7 days)",
    )
    replay_max_events = _env(
        fields.Integer(strict=False, validate=validate.Range(min=1)),
        "REPLAY_MAX_EVENTS",
        "most events replayed on one join; past it the answer says gap: true",
        "10000",
    )
    idempotency_ttl_s = _env(
        fields.Float(validate=_positive),
        "IDEMPOTENCY_TTL",
        "seconds an Idempotency-Key is remembered (at most EVENT_RETENTION)",
        "86400",
    )
    watcher_poll_ms = _env(
        fields.Integer(strict=False, validate=validate.Range(1, 10_000)),
        "WATCHER_POLL_MS",
        "how often the embedded store's change log is read while idle",
        "10",
    )
    shutdown_timeout_s = _env(
        fields.Float(validate=_positive),
        "SHUTDOWN_TIMEOUT",
        "seconds a graceful shutdown may take",
        "10",
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
    watcher_lease_ttl_s = _env(
        fields.Float(validate=validate.Range(min=0.5, max=3600)),
        "WATCHER_LEASE_TTL",
        "seconds the change watcher's lease lasts: a dead holder is replaced within this time",
        "10",
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
    reservation_cache_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "RESERVATION_CACHE",
        "seconds a reservation's parties, looked up for join_room, are kept (0: not kept); "
        "a change to the booking forgets them at once",
        "2",
    )
    status_rooms_max = _env(
        fields.Integer(strict=False, validate=validate.Range(min=0, max=10_000)),
        "STATUS_ROOMS_MAX",
        "largest rooms GET /status lists by name (it counts all of them)",
        "100",
    )
    test_page = _env(
        _Boolean(allow_none=True),
        "TEST_PAGE",
        "serve the live test page at GET /websocket-test",
        "true with the embedded store, false with MONGODB_URL",
    )
    admin_ui_username = _env(
        fields.String(validate=validate.Length(min=1)),
        "ADMIN_UI_USERNAME",
        "turns on the Socket.IO Admin UI (namespace /admin, page /admin-ui/) with this user",
        "unset: no Admin UI",
    )
    admin_ui_password = _env(
        fields.String(validate=validate.Length(min=12)),
        "ADMIN_UI_PASSWORD",
        "the Admin UI's password (12+ characters; required with ADMIN_UI_USERNAME)",
        "unset",
    )
    admin_ui_read_only = _env(
        _Boolean(),
        "ADMIN_UI_READ_ONLY",
        "false gives the Admin UI its full powers: disconnect, join, leave and emit, around the "
        "room policy and the event log (development only)",
        "true",
    )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Settings:
        return Settings(**data)


def describe_variables() -> list[tuple[str, str, str]]:
    """(variable, meaning, default) for every setting, for --help and the README."""
    rows = []
    for field in SettingsSchema().fields.values():
        rows.append((field.data_key, field.metadata["help"], field.metadata["default_text"]))
    return rows


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read, validate and complete the settings; raise `ConfigError` on the first bad value."""
    environ = os.environ if environ is None else environ
    schema = SettingsSchema()
    # Empty variables count as unset, as shells and .env files often leave them.
    present = {k: v for k, v in environ.items() if v != ""}
    try:
        settings: Settings = schema.load(present)
    except ValidationError as exc:
        variable, problems = next(iter(exc.normalized_messages().items()))
        message = problems[0] if isinstance(problems, list) else str(problems)
        raise ConfigError(variable, f"{message} (got {present.get(variable)!r})") from None
    if overrides:
        settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
    if settings.idempotency_ttl_s > settings.event_retention_s:
        # a retry must find the first attempt's event in the log
        raise ConfigError(
            "IDEMPOTENCY_TTL",
            f"must not exceed EVENT_RETENTION ({settings.event_retention_s:g} s)",
        )
    if settings.mongodb_state_database == settings.mongodb_db:
        # saving the gateway's state would be a change of the database it watches
        raise ConfigError("MONGODB_STATE_DB", "must differ from MONGODB_DB")
    if settings.jwt_jwks_url is not None and not _trusted_url(settings.jwt_jwks_url):
        # whoever can change the key set in transit can sign any identity
        raise ConfigError("JWT_JWKS_URL", "must be https:// (http:// only to this machine)")
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError("TRUSTED_PROXIES", f"not an address or network: {proxy!r}") from None
    if (settings.admin_ui_username is None) != (settings.admin_ui_password is None):
        missing = "ADMIN_UI_PASSWORD" if settings.admin_ui_password is None else "ADMIN_UI_USERNAME"
        raise ConfigError(missing, "ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD go together")
    return _complete_keys(settings)


def _trusted_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _complete_keys(settings: Settings) -> Settings:
    public_key = settings.jwt_public_key
    if public_key and "-----BEGIN" not in public_key:
        try:
            with open(public_key, encoding="ascii") as handle:
                public_key = handle.read()
        except OSError as exc:
            raise ConfigError(
                "JWT_PUBLIC_KEY", f"not a PEM key nor a readable file: {exc}"
            ) from None
    asymmetric = bool(public_key or settings.jwt_jwks_url)
    algorithms = settings.jwt_algorithms
    if not algorithms:
        algorithms = ("RS256", "ES256") if asymmetric and not settings.jwt_secret else ("HS256",)
    unsupported = [a for a in algorithms if a not in SUPPORTED_JWT_ALGORITHMS]
    if unsupported:
        raise ConfigError("JWT_ALGORITHMS", f"unsupported algorithm(s): {', '.join(unsupported)}")
    secret, generated = settings.jwt_secret, False
    needs_secret = any(a.startswith("HS") for a in algorithms)
    if needs_secret and not secret:
        if asymmetric:
            raise ConfigError("JWT_SECRET", "an HS* algorithm is configured but no JWT_SECRET")
        if settings.uses_mongodb:
            raise ConfigError(
                "JWT_SECRET", "required with MONGODB_URL (or set JWT_PUBLIC_KEY or JWT_JWKS_URL)"
            )
        secret, generated = development_secret(settings.store_path), True
    return settings.replace(
        jwt_public_key=public_key,
        jwt_algorithms=tuple(algorithms),
        jwt_secret=secret,
        jwt_secret_generated=generated,
    )


def development_secret(store_path: str) -> str:
    """The embedded store's development JWT secret: made once, kept beside the store (0600)."""
    path = store_path + DEV_SECRET_SUFFIX
    try:
        with open(path, encoding="ascii") as handle:
            existing = handle.read().strip()
        if len(existing) >= 32:
            return existing
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            "STORE_PATH", f"cannot read the development secret {path}: {exc}"
        ) from None
    secret = secrets.token_urlsafe(48)
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
    except OSError as exc:
        raise ConfigError(
            "STORE_PATH", f"cannot write the development secret {path}: {exc}"
        ) from None
    return secret
