"""Settings: every variable parsed and checked, errors name the variable."""

from __future__ import annotations

import os
import re
import stat

import pytest

from realtime.config import ConfigError, describe_variables, load_settings


def test_defaults_match_the_spec(tmp_path):
    settings = load_settings({"STORE_PATH": str(tmp_path / "r.db")})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.auth_timeout_s == 10 and settings.auth_expiring_lead_s == 60
    assert settings.max_payload_bytes == 1_000_000 and settings.log_level == "info"
    assert settings.jwt_algorithms == ("HS256",) and settings.ws_compression is False
    assert settings.broadcast_token is None and settings.cors_origins == ()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("AUTH_TIMEOUT", "-1"),
        ("AUTH_TIMEOUT", "soon"),
        ("MAX_PAYLOAD_BYTES", "12"),
        ("LOG_LEVEL", "loud"),
        ("REDIS_URL", "localhost:6379"),
        ("MONGODB_URL", "http://db"),
        ("JWT_SECRET", "short"),
        ("BOOKING_FIELDS", "[1]"),
        ("BOOKING_FIELDS", "{not json"),
        ("WS_COMPRESSION", "maybe"),
        ("JWT_ALGORITHMS", "none"),
        ("BROADCAST_TOKEN", "tiny"),
    ],
)
def test_a_bad_value_names_its_variable(tmp_path, variable, value):
    environ = {"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32, variable: value}
    with pytest.raises(ConfigError) as error:
        load_settings(environ)
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ")


def test_lists_and_flags_are_parsed(tmp_path):
    settings = load_settings(
        {
            "STORE_PATH": str(tmp_path / "r.db"),
            "JWT_SECRET": "x" * 32,
            "CORS_ORIGINS": "https://a.example, https://b.example,",
            "WS_COMPRESSION": "true",
            "BOOKING_FIELDS": '{"customerId": "client.id"}',
            "LOG_LEVEL": "warning",
        }
    )
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.ws_compression is True
    assert settings.booking_fields == {"customerId": "client.id"}


def test_the_development_secret_is_made_once_and_kept_private(tmp_path):
    store = str(tmp_path / "r.db")
    first = load_settings({"STORE_PATH": store})
    assert first.jwt_secret_generated is True and len(first.jwt_secret) >= 32
    mode = stat.S_IMODE(os.stat(store + ".jwt-secret").st_mode)
    assert mode == 0o600
    assert load_settings({"STORE_PATH": store}).jwt_secret == first.jwt_secret


def test_mongodb_refuses_to_start_without_a_key(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_settings({"MONGODB_URL": "mongodb://db:27017/?replicaSet=rs0"})
    assert error.value.variable == "JWT_SECRET"


def test_a_public_key_selects_asymmetric_algorithms(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    settings = load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_PUBLIC_KEY": pem})
    assert settings.jwt_algorithms == ("RS256", "ES256") and settings.jwt_secret is None


def test_every_variable_is_described():
    names = [name for name, _, _ in describe_variables()]
    for required in (
        "HOST",
        "PORT",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "JWT_ALGORITHMS",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "MONGODB_URL",
        "MONGODB_DB",
        "STORE_PATH",
        "REDIS_URL",
        "BROADCAST_TOKEN",
        "CORS_ORIGINS",
        "AUTH_TIMEOUT",
        "MAX_PAYLOAD_BYTES",
        "LOG_LEVEL",
        "AUTH_EXPIRING_LEAD",
    ):
        assert required in names
    assert len(names) == len(set(names))


def test_the_readme_documents_exactly_these_variables():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    documented = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)
    assert sorted(documented) == sorted(name for name, _, _ in describe_variables())


def test_an_idempotency_key_may_not_outlive_the_event_it_answers_with(tmp_path):
    environ = {"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32}
    with pytest.raises(ConfigError) as error:
        load_settings({**environ, "IDEMPOTENCY_TTL": "7200", "EVENT_RETENTION": "3600"})
    assert error.value.variable == "IDEMPOTENCY_TTL"
    assert load_settings({**environ, "IDEMPOTENCY_TTL": "3600", "EVENT_RETENTION": "3600"})


@pytest.mark.parametrize("value", ["0.5", "0.999", "0", "-1"])
def test_an_event_retention_under_a_second_is_refused(tmp_path, value):
    # MongoDB's TTL index counts whole seconds: 0.5 s would become 0, which deletes the log
    environ = {"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": "x" * 32}
    with pytest.raises(ConfigError) as error:
        load_settings({**environ, "EVENT_RETENTION": value, "IDEMPOTENCY_TTL": "0.1"})
    assert error.value.variable == "EVENT_RETENTION"
    assert "at least 1 second" in str(error.value)
    kept = load_settings({**environ, "EVENT_RETENTION": "1", "IDEMPOTENCY_TTL": "1"})
    assert kept.event_retention_s == 1
