"""`SettingsSchema`, every variable in one schema, and `describe_variables` for --help.

Each variable is declared once, with its parser, check, help and default, in the module of its
concern: `server` (listening, Socket.IO, the HTTP API), `auth` (tokens), `storage` (stores, the
event log, scale-out), `limits` (sizes, back-pressure, rate limits), `pages` (test page, Admin
UI). `SettingsSchema` inherits them all; its `Meta.fields` sets the order --help and the README
list them in, which mixes the concerns (a variable left out of it stops the import).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, post_load

from realtime.config.schema.auth import AuthSchema
from realtime.config.schema.limits import LimitsSchema
from realtime.config.schema.pages import PagesSchema
from realtime.config.schema.server import ServerSchema
from realtime.config.schema.storage import StorageSchema
from realtime.config.settings import Settings


class SettingsSchema(ServerSchema, AuthSchema, StorageSchema, LimitsSchema, PagesSchema):
    """One declaration per environment variable: its parser, check and help."""

    class Meta:
        unknown = EXCLUDE
        # Attribute names in the order of --help and the README's table, and of the checks:
        # with several bad values, the first in this order is the one reported.
        fields = (
            "host",
            "port",
            "jwt_secret",
            "jwt_public_key",
            "jwt_algorithms",
            "jwt_audience",
            "jwt_issuer",
            "jwt_claim_user_id",
            "jwt_claim_role",
            "jwt_claim_shop_ids",
            "jwt_jwks_url",
            "jwt_jwks_cache_s",
            "jwt_jwks_refetch_s",
            "jwt_leeway_s",
            "revocation_reload_s",
            "mongodb_url",
            "mongodb_db",
            "mongodb_state_db",
            "store_path",
            "redis_url",
            "broadcast_token",
            "cors_origins",
            "auth_timeout_s",
            "ping_interval_s",
            "ping_timeout_s",
            "connect_timeout_s",
            "auth_expiring_lead_s",
            "max_payload_bytes",
            "log_level",
            "socketio_path",
            "ws_compression",
            "event_loop",
            "bookings_collection",
            "payments_collection",
            "booking_fields",
            "payment_fields",
            "published_booking_fields",
            "broadcast_events",
            "event_retention_s",
            "replay_max_events",
            "idempotency_ttl_s",
            "watcher_poll_ms",
            "shutdown_timeout_s",
            "client_backlog_max",
            "client_backlog_max_bytes",
            "client_stall_timeout_s",
            "watcher_lease_ttl_s",
            "rate_limit_events",
            "rate_limit_disconnect",
            "rate_limit_connections",
            "trusted_proxies",
            "max_connections_per_user",
            "max_rooms_per_socket",
            "reservation_cache_s",
            "status_rooms_max",
            "test_page",
            "admin_ui_username",
            "admin_ui_password",
            "admin_ui_read_only",
        )

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Settings:
        return Settings(**data)


def _check_every_variable_is_listed() -> None:
    schema = SettingsSchema()  # a listed name that no concern declares raises KeyError here
    unlisted = schema.declared_fields.keys() - schema.fields.keys()
    if unlisted:
        raise TypeError(f"SettingsSchema.Meta.fields must list {sorted(unlisted)}")


_check_every_variable_is_listed()


def describe_variables() -> list[tuple[str, str, str]]:
    """(variable, meaning, default) for every setting, for --help and the README."""
    rows = []
    for field in SettingsSchema().fields.values():
        rows.append((field.data_key, field.metadata["help"], field.metadata["default_text"]))
    return rows
