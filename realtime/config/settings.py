"""`Settings`: the validated configuration every part of the gateway is handed.

A frozen dataclass of plain values, filled by `schema` and completed by `loading`; its
properties answer what several parts ask alike (is MongoDB in use, is the Admin UI on), and
`replace` makes a changed copy (command-line overrides, tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


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
    broadcast_token_generated: bool = False  # the demo's, kept beside the store
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
    admin_ui_password_generated: bool = False  # the demo's, kept beside the store
    staff_shop_rooms: bool = True

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
