"""`load_settings`: the environment read, checked and completed once at start-up; `ConfigError`.

Each variable's own check is in the schema; here are those it cannot make alone
(IDEMPOTENCY_TTL within EVENT_RETENTION, MONGODB_STATE_DB apart from MONGODB_DB, JWT_JWKS_URL
over https, TRUSTED_PROXIES as networks, the two Admin UI credentials together). Then the keys
are completed: a public key read from its file, the default algorithms (checked against
`SUPPORTED_JWT_ALGORITHMS`), and on the embedded store a development secret made once and kept
beside it (`development_secret`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError

from realtime.config.schema import SettingsSchema
from realtime.config.schema.auth import SUPPORTED_JWT_ALGORITHMS
from realtime.config.settings import Settings

DEV_SECRET_SUFFIX = ".jwt-secret"
DEMO_BROADCAST_SUFFIX = ".broadcast-token"
DEMO_ADMIN_UI_SUFFIX = ".admin-ui-password"
DEMO_ADMIN_UI_USERNAME = "admin"


class ConfigError(Exception):
    """A configuration value is missing or wrong; `variable` names it."""

    def __init__(self, variable: str, message: str):
        self.variable = variable
        self.message = message
        super().__init__(f"{variable}: {message}")


def load_settings(
    environ: Mapping[str, str] | None = None, make_secret: bool = True, **overrides: Any
) -> Settings:
    """Read, validate and complete the settings; raise `ConfigError` on the first bad value.

    Without `make_secret`, a development secret is only read, never made: a token signed
    with one that no gateway uses would be refused with nothing pointing at why."""
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
    return _complete_keys(settings, make_secret)


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


def _complete_keys(settings: Settings, make_secret: bool) -> Settings:
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
        secret, generated = _development_secret(settings.store_path, make_secret), True
    return settings.replace(
        jwt_public_key=public_key,
        jwt_algorithms=tuple(algorithms),
        jwt_secret=secret,
        jwt_secret_generated=generated,
    )


def development_secret(store_path: str) -> str:
    """The embedded store's development JWT secret: made once, kept beside the store (0600)."""
    return _kept_secret(store_path + DEV_SECRET_SUFFIX)


def _development_secret(store_path: str, make: bool) -> str:
    if make:
        return development_secret(store_path)
    path = os.path.abspath(store_path + DEV_SECRET_SUFFIX)
    secret = _read_secret(path)
    if secret is None:
        raise ConfigError(
            "JWT_SECRET",
            f"no development secret at {path}: start the gateway first (it makes one beside "
            "its store), or give this command the gateway's STORE_PATH (run it from the "
            "directory the gateway runs in, as scripts/token does) or its JWT_SECRET",
        )
    return secret


def with_demo_credentials(settings: Settings) -> Settings:
    """`--demo` turns everything on: a broadcast token and an Admin UI login, each the
    operator's own when set, otherwise made once and kept beside the store (0600), so a
    pasted curl keeps working across restarts."""
    changes: dict[str, Any] = {}
    if settings.broadcast_token is None:
        changes["broadcast_token"] = _kept_secret(settings.store_path + DEMO_BROADCAST_SUFFIX)
        changes["broadcast_token_generated"] = True
    if settings.admin_ui_username is None:
        changes["admin_ui_username"] = DEMO_ADMIN_UI_USERNAME
        changes["admin_ui_password"] = _kept_secret(settings.store_path + DEMO_ADMIN_UI_SUFFIX)
        changes["admin_ui_password_generated"] = True
    return settings.replace(**changes)


def _read_secret(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            existing = handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError("STORE_PATH", f"cannot read {path}: {exc}") from None
    return existing if len(existing) >= 32 else None


def _kept_secret(path: str) -> str:
    """A secret read from `path`, or made and written there (0600) if it holds none."""
    existing = _read_secret(path)
    if existing is not None:
        return existing
    secret = secrets.token_urlsafe(48)
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
    except OSError as exc:
        raise ConfigError("STORE_PATH", f"cannot write {path}: {exc}") from None
    return secret
