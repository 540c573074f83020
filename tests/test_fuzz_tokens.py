"""Every way a token is refused, through the handshake and through `authenticate`, on a real
server with a real python-socketio client: each with its code (`missing_token`,
`invalid_token`, `token_expired`; `invalid_payload` for a token that is not a string), never
`internal`, and the server alive after.

tests/test_auth.py holds the verifier's refusals without a server, tests/test_socket.py a few
of them through the handshake and tests/test_jwks.py `jku`/`x5u` with a JWKS configured; this
adds the whole list on both routes, algorithm confusion (the RS256 public key as an HS256
secret), `kid`/`jku` without a JWKS, huge tokens, undecodable segments and NULs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from realtime.errors import CATALOGUE
from tests.clients import Refused, make_client
from tests.conftest import SECRET
from tests.test_fuzz_payloads import UNLIMITED

pytestmark = UNLIMITED
WAIT_S = 10.0
RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = (
    RSA_PRIVATE.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, claims: dict, key: bytes) -> str:
    """An HS256 token signed by hand (PyJWT refuses a PEM as an HMAC key, as it should)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())


def claims(**overrides: Any) -> dict:
    return {"sub": "u1", "role": "customer", "exp": int(time.time()) + 600, **overrides}


def refusals(max_payload_bytes: int) -> dict[str, tuple[Any, str]]:
    """name -> (token, the code it is refused with)."""
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    now = int(time.time())
    huge_segment = "A" * (max_payload_bytes - 4096)
    return {
        "missing (null)": (None, "missing_token"),
        "missing (empty)": ("", "missing_token"),
        "a number": (42, "invalid_payload"),
        "a list": ([good], "invalid_payload"),
        "an object": ({"token": good}, "invalid_payload"),
        "bad signature": (jwt.encode(claims(), "another-" + SECRET), "invalid_token"),
        "signature cut": (good[:-4], "invalid_token"),
        "signature removed": (good.rsplit(".", 1)[0] + ".", "invalid_token"),
        "alg none": (jwt.encode(claims(), None, algorithm="none"), "invalid_token"),
        "alg none, uppercase": (
            b64(b'{"alg":"NONE","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode()) + ".",
            "invalid_token",
        ),
        "unaccepted alg HS512": (
            jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
            "invalid_token",
        ),
        "RS256 with no public key configured": (
            jwt.encode(claims(), RSA_PRIVATE, algorithm="RS256"),
            "invalid_token",
        ),
        "no exp": (jwt.encode({"sub": "u1", "role": "customer"}, SECRET), "invalid_token"),
        "exp a string": (jwt.encode(claims(exp="tomorrow"), SECRET), "invalid_token"),
        "expired": (jwt.encode(claims(exp=now - 5), SECRET), "token_expired"),
        "exp beyond 9999": (jwt.encode(claims(exp=253_402_300_800), SECRET), "invalid_token"),
        "not yet valid": (jwt.encode(claims(nbf=now + 600), SECRET), "invalid_token"),
        "no user id": (
            jwt.encode({"role": "customer", "exp": now + 600}, SECRET),
            "invalid_token",
        ),
        "user id empty": (jwt.encode(claims(sub=""), SECRET), "invalid_token"),
        "user id a list": (jwt.encode(claims(sub=["u1"]), SECRET), "invalid_token"),
        "bad role": (jwt.encode(claims(role="superuser"), SECRET), "invalid_token"),
        "role missing": (
            jwt.encode({"sub": "u1", "exp": now + 600}, SECRET),
            "invalid_token",
        ),
        "role with a NUL": (jwt.encode(claims(role="admin\x00"), SECRET), "invalid_token"),
        "shop_ids an object": (
            jwt.encode(claims(role="staff", shop_ids={"s1": True}), SECRET),
            "invalid_token",
        ),
        "shop_ids a float": (
            jwt.encode(claims(role="staff", shop_ids=1.5), SECRET),
            "invalid_token",
        ),
        "jti a number": (jwt.encode(claims(jti=7), SECRET), "invalid_token"),
        "100 KB of junk": ("x" * 100_000, "invalid_token"),
        "near MAX_PAYLOAD_BYTES": (
            f"{huge_segment}.{huge_segment[:100]}.{huge_segment[:100]}",
            "invalid_token",
        ),
        "a valid token padded to 100 KB": (good + "A" * 100_000, "invalid_token"),
        "header not UTF-8": (
            b64(b"\xff\xfe\xfd") + "." + b64(json.dumps(claims()).encode()) + ".c2ln",
            "invalid_token",
        ),
        "claims not UTF-8": (
            b64(b'{"alg":"HS256"}') + "." + b64(b"\xc3\x28\xa0\xa1") + ".c2ln",
            "invalid_token",
        ),
        "header not JSON": (b64(b"{alg:HS256") + ".e30.c2ln", "invalid_token"),
        "header a list": (b64(b'["HS256"]') + ".e30.c2ln", "invalid_token"),
        "not base64": ("!!!.@@@.###", "invalid_token"),
        "two segments": (good.rsplit(".", 1)[0], "invalid_token"),
        "four segments": (good + ".x", "invalid_token"),
        "dots only": ("..", "invalid_token"),
        "a NUL inside": (good[:10] + "\x00" + good[10:], "invalid_token"),
        "a NUL after": (good + "\x00", "invalid_token"),
        "RTL override and emoji": ("\u202e" + good + "\U0001f600", "invalid_token"),
        "bearer prefix": ("Bearer " + good, "invalid_token"),
    }


async def handshake(base_url: str, path: str, token: Any) -> str | None:
    """The code a handshake with this token is refused with, or None when accepted."""
    client = make_client("py-websocket", base_url, path)
    try:
        await client.connect({"token": token})
    except Refused as refused:
        return refused.data["code"]
    finally:
        await client.close()
    return None


async def refusals_through_both_routes(
    base_url: str, path: str, cases: dict[str, tuple[Any, str]], gateway, good: str | None = None
) -> list[str]:
    """Each case through the handshake and through `authenticate`: what differs from the
    expected code (in the handshake, a missing token is accepted unauthenticated)."""
    wrong = []
    anonymous = make_client("py-websocket", base_url, path)
    await anonymous.connect()
    try:
        for name, (token, code) in cases.items():
            got = await handshake(base_url, path, token)
            expected = None if code == "missing_token" else code
            if got != expected:
                wrong.append(f"handshake, {name}: {got} (expected {expected})")
            answer = await anonymous.call("authenticate", {"token": token}, WAIT_S)
            got = answer["error"]["code"] if answer.get("ok") is False else "ok"
            if got != code or got not in CATALOGUE:
                wrong.append(f"authenticate, {name}: {got} (expected {code})")
            else:
                pushed = "auth_error" if code != "invalid_payload" else "error"
                assert (await anonymous.next_event(pushed))["code"] == code
        # the socket is still there for a good token, and nothing was kept of the others
        good = good or jwt.encode(claims(), SECRET, algorithm="HS256")
        answer = await anonymous.call("authenticate", {"token": good})
        assert answer["ok"] is True, answer
        assert gateway.sessions.counts()["authenticated"] == 1
    finally:
        await anonymous.close()
    return wrong


async def test_every_refusal_through_the_handshake_and_authenticate(
    request, base_url, settings, gateway, http
):
    cases = refusals(settings.max_payload_bytes)
    wrong = await refusals_through_both_routes(base_url, settings.socketio_path, cases, gateway)
    assert not wrong, wrong
    assert (await http.get("/health")).status == 200
    print(f"fuzzed {2 * len(cases)} token refusals")
    request.node.user_properties.append(("token refusals", 2 * len(cases)))


@pytest.mark.env(JWT_AUDIENCE="booking", JWT_ISSUER="https://id.example")
async def test_audience_and_issuer_refusals_on_both_routes(base_url, settings, gateway):
    good = claims(aud="booking", iss="https://id.example")
    cases = {
        "wrong aud": (jwt.encode({**good, "aud": "other"}, SECRET), "invalid_token"),
        "aud list without ours": (jwt.encode({**good, "aud": ["a", "b"]}, SECRET), "invalid_token"),
        "no aud": (
            jwt.encode({k: v for k, v in good.items() if k != "aud"}, SECRET),
            "invalid_token",
        ),
        "wrong iss": (jwt.encode({**good, "iss": "https://evil.example"}, SECRET), "invalid_token"),
        "iss with a NUL": (
            jwt.encode({**good, "iss": "https://id.example\x00"}, SECRET),
            "invalid_token",
        ),
        "no iss": (
            jwt.encode({k: v for k, v in good.items() if k != "iss"}, SECRET),
            "invalid_token",
        ),
    }
    valid = jwt.encode(good, SECRET)
    path = settings.socketio_path
    wrong = await refusals_through_both_routes(base_url, path, cases, gateway, valid)
    assert not wrong, wrong
    assert await handshake(base_url, path, valid) is None


@pytest.mark.env(JWT_PUBLIC_KEY=RSA_PUBLIC_PEM, JWT_ALGORITHMS="RS256,HS256", JWT_SECRET=SECRET)
async def test_the_public_key_used_as_an_hs256_secret_is_refused(base_url, settings, gateway):
    path = settings.socketio_path
    header = {"alg": "HS256", "typ": "JWT"}
    cases = {
        f"HS256 signed with the PEM{variant}": (
            hand_signed(header, claims(role="admin"), key),
            "invalid_token",
        )
        for variant, key in [
            ("", RSA_PUBLIC_PEM.encode()),
            (" without its last newline", RSA_PUBLIC_PEM.strip().encode()),
            (
                " as DER",
                RSA_PRIVATE.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            ),
        ]
    }
    wrong = await refusals_through_both_routes(base_url, path, cases, gateway)
    assert not wrong, wrong
    # both configured algorithms still work with their own keys
    assert await handshake(base_url, path, jwt.encode(claims(), RSA_PRIVATE, "RS256")) is None
    assert await handshake(base_url, path, jwt.encode(claims(), SECRET, "HS256")) is None


async def test_kid_and_jku_headers_are_ignored_and_never_fetched(
    base_url, settings, gateway, aiohttp_server
):
    hits: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        hits.append(request.path)
        attacker = {"kty": "oct", "kid": "evil", "k": b64(b"attacker-secret-0123456789abcdef")}
        return web.json_response({"keys": [attacker]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", keys)
    elsewhere = await aiohttp_server(app)
    url = str(elsewhere.make_url("/jwks.json"))
    headers = {"jku": url, "x5u": url, "kid": "evil"}
    path = settings.socketio_path
    attacker_key = "attacker-secret-0123456789abcdef"
    cases = {
        "signed with the key the jku names": (
            jwt.encode(claims(role="admin"), attacker_key, "HS256", headers=headers),
            "invalid_token",
        ),
        "kid of a file path": (
            jwt.encode(claims(), attacker_key, "HS256", headers={"kid": "../../etc/passwd"}),
            "invalid_token",
        ),
        "kid an object": (
            hand_signed({"alg": "HS256", "kid": {"$ne": None}}, claims(), attacker_key.encode()),
            "invalid_token",
        ),
        "embedded jwk": (
            jwt.encode(claims(), attacker_key, "HS256", headers={"jwk": {"kty": "oct", "k": "eA"}}),
            "invalid_token",
        ),
    }
    wrong = await refusals_through_both_routes(base_url, path, cases, gateway)
    assert not wrong, wrong
    # a token signed with the configured secret: its kid and jku change nothing
    honest = jwt.encode(claims(sub="honest"), SECRET, "HS256", headers=headers)
    assert await handshake(base_url, path, honest) is None
    assert hits == []  # nothing was ever fetched from where a token pointed


async def test_a_token_with_a_lone_surrogate_is_an_invalid_token(base_url, settings, gateway):
    cases = {"lone surrogate": ("\ud800" + jwt.encode(claims(), SECRET), "invalid_token")}
    wrong = await refusals_through_both_routes(base_url, settings.socketio_path, cases, gateway)
    assert not wrong, wrong
