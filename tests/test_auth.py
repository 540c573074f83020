"""Token verification, without a server."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from realtime.access.auth import TokenVerifier, issue_token
from realtime.config import load_settings
from realtime.errors import GatewayError
from realtime.wire import iso_timestamp

SECRET = "s" * 40


@pytest.fixture
def settings(tmp_path):
    return load_settings({"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": SECRET})


def claims(**overrides):
    return {"sub": "u1", "role": "customer", "exp": int(time.time()) + 60, **overrides}


async def refused(verifier, token) -> str:
    with pytest.raises(GatewayError) as error:
        await verifier.verify(token)
    return error.value.code


async def test_a_valid_token_gives_its_principal(settings):
    token = jwt.encode(claims(role="staff", shop_ids=["s1", 7]), SECRET, algorithm="HS256")
    principal = await TokenVerifier(settings).verify(token)
    assert principal.user_id == "u1" and principal.role == "staff"
    assert principal.shop_ids == {"s1", "7"}


async def test_issued_development_tokens_verify(settings):
    token = issue_token(settings, "bob", "staff", ["s9"], ttl_s=120)
    principal = await TokenVerifier(settings).verify(token)
    assert (principal.user_id, principal.role, principal.shop_ids) == ("bob", "staff", {"s9"})
    assert 110 < principal.expires_at - time.time() <= 120


@pytest.mark.parametrize(
    "token, code",
    [
        (None, "missing_token"),
        ("", "missing_token"),
        (17, "invalid_token"),
        ("abc", "invalid_token"),
    ],
)
async def test_not_a_token(settings, token, code):
    assert await refused(TokenVerifier(settings), token) == code


async def test_refusals(settings):
    verifier = TokenVerifier(settings)
    now = int(time.time())
    assert await refused(verifier, jwt.encode(claims(exp=now - 1), SECRET)) == "token_expired"
    assert (
        await refused(verifier, jwt.encode({"sub": "u1", "role": "customer"}, SECRET))
        == "invalid_token"
    )
    assert (
        await refused(verifier, jwt.encode(claims(), "another-key-0123456789-0123456789"))
        == "invalid_token"
    )
    assert await refused(verifier, jwt.encode(claims(), None, algorithm="none")) == "invalid_token"
    assert await refused(verifier, jwt.encode(claims(role="root"), SECRET)) == "invalid_token"
    assert await refused(verifier, jwt.encode(claims(sub=""), SECRET)) == "invalid_token"
    assert await refused(verifier, jwt.encode(claims(shop_ids={"a": 1}), SECRET)) == "invalid_token"
    assert (
        await refused(verifier, jwt.encode(claims(), SECRET * 2, algorithm="HS512"))
        == "invalid_token"
    )


async def test_audience_and_issuer_are_checked_when_configured(tmp_path):
    settings = load_settings(
        {
            "STORE_PATH": str(tmp_path / "r.db"),
            "JWT_SECRET": SECRET,
            "JWT_AUDIENCE": "booking",
            "JWT_ISSUER": "https://id.example",
        }
    )
    verifier = TokenVerifier(settings)
    good = claims(aud="booking", iss="https://id.example")
    assert (await verifier.verify(jwt.encode(good, SECRET))).user_id == "u1"
    assert await refused(verifier, jwt.encode({**good, "aud": "other"}, SECRET)) == "invalid_token"
    assert (
        await refused(verifier, jwt.encode({**good, "iss": "https://evil"}, SECRET))
        == "invalid_token"
    )
    assert await refused(verifier, jwt.encode(claims(), SECRET)) == "invalid_token"


async def test_claim_names_are_dotted_paths(tmp_path):
    settings = load_settings(
        {
            "STORE_PATH": str(tmp_path / "r.db"),
            "JWT_SECRET": SECRET,
            "JWT_CLAIM_ROLE": "app_metadata.role",
            "JWT_CLAIM_SHOP_IDS": "app_metadata.shops",
        }
    )
    token = jwt.encode(
        {
            "sub": "u1",
            "exp": int(time.time()) + 60,
            "app_metadata": {"role": "staff", "shops": ["s1"]},
        },
        SECRET,
    )
    principal = await TokenVerifier(settings).verify(token)
    assert principal.role == "staff" and principal.shop_ids == {"s1"}
    issued = issue_token(settings, "u2", "admin")
    assert jwt.decode(issued, SECRET, algorithms=["HS256"])["app_metadata"] == {"role": "admin"}


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_asymmetric_tokens_verify_with_the_public_key(tmp_path, algorithm):
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key_file = tmp_path / "public.pem"
    key_file.write_text(pem)
    settings = load_settings(
        {"STORE_PATH": str(tmp_path / "r.db"), "JWT_PUBLIC_KEY": str(key_file)}
    )
    verifier = TokenVerifier(settings)
    principal = await verifier.verify(jwt.encode(claims(), private, algorithm=algorithm))
    assert principal.user_id == "u1"
    # an HS token "signed" with the public key must not pass (algorithm confusion)
    assert (
        await refused(verifier, jwt.encode(claims(), "x" * 32, algorithm="HS256"))
        == "invalid_token"
    )


def test_times_are_iso_utc_with_milliseconds():
    moment = dt.datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert iso_timestamp(moment.timestamp()) == "2026-11-21T10:00:00.123Z"


async def test_the_leeway_allows_that_much_clock_skew_and_no_more(tmp_path):
    settings = load_settings(
        {"STORE_PATH": str(tmp_path / "r.db"), "JWT_SECRET": SECRET, "JWT_LEEWAY": "30"}
    )
    verifier = TokenVerifier(settings)
    now = int(time.time())
    expired_just = jwt.encode(claims(exp=now - 10), SECRET)
    assert (await verifier.verify(expired_just)).expires_at == now - 10  # exp as the token says
    assert await refused(verifier, jwt.encode(claims(exp=now - 40), SECRET)) == "token_expired"
    assert (await verifier.verify(jwt.encode(claims(nbf=now + 20, iat=now + 20), SECRET))).user_id
    early = jwt.encode(claims(nbf=now + 60), SECRET)
    assert await refused(verifier, early) == "invalid_token"


async def test_the_jti_is_part_of_the_principal(settings):
    verifier = TokenVerifier(settings)
    assert (await verifier.verify(jwt.encode(claims(jti="t-1"), SECRET))).jti == "t-1"
    assert (await verifier.verify(jwt.encode(claims(), SECRET))).jti is None
    assert await refused(verifier, jwt.encode(claims(jti=17), SECRET)) == "invalid_token"
    assert await refused(verifier, jwt.encode(claims(jti="x" * 300), SECRET)) == "invalid_token"
