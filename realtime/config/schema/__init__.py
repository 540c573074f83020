"""`SettingsSchema`, every variable in one schema, and `describe_variables` for --help.

Each variable is declared once, with its parser, check, help and default, in the module of its
concern: `server` (listening, Socket.IO, the HTTP API), `auth` (tokens), `storage` (stores, the
event log, scale-out), `limits` (sizes, back-pressure, rate limits), `pages` (test page, Admin
UI). `SettingsSchema` inherits them all; --help lists them concern by concern.
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


class SettingsSchema(PagesSchema, LimitsSchema, StorageSchema, AuthSchema, ServerSchema):
    # (marshmallow lists inherited fields from the last base to the first)
    """One declaration per environment variable: its parser, check and help."""

    class Meta:
        unknown = EXCLUDE

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Settings:
        return Settings(**data)


def describe_variables() -> list[tuple[str, str, str]]:
    """(variable, meaning, default) for every setting, for --help and the README."""
    rows = []
    for field in SettingsSchema().fields.values():
        rows.append((field.data_key, field.metadata["help"], field.metadata["default_text"]))
    return rows
