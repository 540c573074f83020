"""Keys from an identity provider's JWKS (`JWT_JWKS_URL`), end to end: a JWKS served by a
local HTTP server in the test, RS256 and ES256 tokens chosen by `kid`, rotation without a
restart, unknown kids, the bound on refetches, leeway, the provider down, `jku` ignored."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from realtime.access.auth import JwksKeys
from realtime.config import load_settings
from realtime.errors import GatewayError
from server.app import create_app
from tests.clients import Refused, make_client
from tests.conftest import SECRET
from tests.test_transport import eventually

pytestmark = pytest.mark.env(JWT_ALGORITHMS="RS256,ES256,HS256")


class SigningKey:
    """A private key and its public JWK, as an identity provider publishes it."""

    def __init__(self, algorithm: str, kid: str | None = None):
        self.algorithm = algorithm
        self.kid = kid or uuid.uuid4().hex[:12]
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": self.kid, "alg": algorithm, "use": "sig"}

    def token(self, sub: str = "u1", ttl: float = 3600, headers=None, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": sub, "role": "customer", "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(
            body,
            self.private,
            algorithm=self.algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )


# generated once: RSA keys take a while to make
RSA_KEY = SigningKey("RS256", "rsa-1")
EC_KEY = SigningKey("ES256", "ec-1")
NEXT_KEY = SigningKey("RS256", "rsa-2")
ATTACKER_KEY = SigningKey("RS256", "evil")


class JwksServer:
    """What the provider publishes, how it answers, and how often it was asked."""

    def __init__(self, keys: list[SigningKey]):
        self.keys: list[dict] = [key.jwk for key in keys]
        self.status = 200
        self.hits = 0
        self.gate: asyncio.Event | None = None  # while set to an unset event, answers wait
        self.asked = asyncio.Event()  # set by every request
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="provider down")
        return web.json_response({"keys": self.keys})


async def serve_jwks(aiohttp_server, keys: list[SigningKey]) -> JwksServer:
    jwks = JwksServer(keys)
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks.handle)
    server = await aiohttp_server(app)
    jwks.url = str(server.make_url("/.well-known/jwks.json"))
    return jwks


@pytest.fixture
async def jwks(aiohttp_server) -> JwksServer:
    return await serve_jwks(aiohttp_server, [RSA_KEY, EC_KEY])


@pytest.fixture
def environ(environ, jwks) -> dict[str, str]:
    """The gateway reads the test's JWKS; a test's `env` marker overrides these."""
    return {"JWT_JWKS_URL": jwks.url, "JWT_JWKS_REFETCH_INTERVAL": "0", **environ}


async def handshake(clients, token: str, kind: str = "py-websocket") -> dict:
    """auth_success's payload, or `{"refused": code}`."""
    client = clients(kind)
    try:
        await client.connect({"token": token})
    except Refused as refused:
        return {"refused": refused.data["code"], "message": refused.data["message"]}
    return await client.next_event("auth_success")


async def refusal(gateway, token: str) -> str:
    with pytest.raises(GatewayError) as error:
        await gateway.verifier.verify(token)
    return error.value.code


@pytest.mark.parametrize("kind", ["py-websocket", "js-polling"])
async def test_rs256_and_es256_tokens_are_verified_with_the_key_of_their_kid(clients, kind):
    assert (await handshake(clients, RSA_KEY.token("rsa-user"), kind))["userId"] == "rsa-user"
    assert (await handshake(clients, EC_KEY.token("ec-user"), kind))["userId"] == "ec-user"
    # the key is the one its kid names: another key's signature under that kid fails
    forged = ATTACKER_KEY.token(headers={"kid": RSA_KEY.kid})
    assert (await handshake(clients, forged, kind))["refused"] == "invalid_token"
    # and the JWKS key's algorithm binds: an ES256 key cannot verify an RS256 token
    mixed = RSA_KEY.token(headers={"kid": EC_KEY.kid})
    assert (await handshake(clients, mixed, kind))["refused"] == "invalid_token"


async def test_hs_tokens_keep_the_shared_secret_beside_the_jwks(clients, raw_token, jwks):
    now = int(time.time())
    hs = raw_token({"sub": "svc", "role": "customer", "exp": now + 60})
    assert (await handshake(clients, hs))["userId"] == "svc"
    # a symmetric key published in the JWKS is never used: HS tokens need JWT_SECRET
    published = b"a-secret-published-by-the-attacker-0123"
    jwks.keys.append(
        {"kty": "oct", "kid": "sym", "k": jwt.utils.base64url_encode(published).decode()}
    )
    forged = jwt.encode(
        {"sub": "x", "role": "admin", "exp": now + 60},
        published,
        algorithm="HS256",
        headers={"kid": "sym"},
    )
    assert (await handshake(clients, forged))["refused"] == "invalid_token"


async def test_a_rotated_key_is_used_without_a_restart_and_a_retired_one_is_refused(
    clients, jwks, gateway
):
    assert (await handshake(clients, RSA_KEY.token("before")))["userId"] == "before"
    hits = jwks.hits
    jwks.keys = [NEXT_KEY.jwk, EC_KEY.jwk]  # the provider rotates: rsa-1 retired, rsa-2 new
    assert (await handshake(clients, NEXT_KEY.token("after")))["userId"] == "after"
    assert jwks.hits == hits + 1  # the new kid fetched the set again, once
    # fetched again, the set no longer has the retired key
    assert (await handshake(clients, RSA_KEY.token("old")))["refused"] == "invalid_token"


async def test_an_unknown_kid_is_refused_as_an_invalid_token(clients):
    stranger = SigningKey("ES256", "nobody-knows-me")
    refused = await handshake(clients, stranger.token())
    assert refused["refused"] == "invalid_token" and "kid" in refused["message"]
    client = clients("js-websocket")
    await client.connect()
    answer = await client.call("authenticate", {"token": stranger.token()})
    assert answer["error"]["code"] == "invalid_token"
    assert (await client.next_event("auth_error"))["code"] == "invalid_token"


@pytest.mark.env(JWT_JWKS_REFETCH_INTERVAL="60")
async def test_a_flood_of_unknown_kids_fetches_the_set_at_most_once_per_interval(
    clients, jwks, gateway
):
    assert (await handshake(clients, RSA_KEY.token()))["userId"] == "u1"
    made_up = [SigningKey("ES256", f"bogus-{n}") for n in range(5)]
    tokens = [made_up[n % 5].token(headers={"kid": f"bogus-{n}"}) for n in range(200)]
    codes = await asyncio.gather(*(refusal(gateway, t) for t in tokens))
    assert set(codes) == {"invalid_token"}
    sockets = await asyncio.gather(*(handshake(clients, t) for t in tokens[:10]))
    assert {s["refused"] for s in sockets} == {"invalid_token"}
    # the set fetched at start (or by the first token), and within the interval nothing more
    assert jwks.hits == 1
    assert (await handshake(clients, EC_KEY.token("still-fine")))["userId"] == "still-fine"


async def test_concurrent_verifications_wait_on_one_fetch_that_never_blocks_the_loop(
    clients, jwks, gateway, http
):
    assert (await handshake(clients, RSA_KEY.token()))["userId"] == "u1"
    hits = jwks.hits
    jwks.gate = asyncio.Event()  # the provider takes its time answering
    jwks.keys = [*jwks.keys, NEXT_KEY.jwk]
    jwks.asked.clear()
    waiting = [
        asyncio.create_task(gateway.verifier.verify(NEXT_KEY.token(f"w{n}"))) for n in range(20)
    ]
    await asyncio.wait_for(jwks.asked.wait(), 10)  # the fetch has reached the provider
    # the loop serves on meanwhile (this JWKS server runs on it too)
    response = await http.get("/health")
    assert response.status == 200
    assert not any(task.done() for task in waiting)
    jwks.gate.set()
    principals = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert sorted(p.user_id for p in principals) == sorted(f"w{n}" for n in range(20))
    assert jwks.hits == hits + 1  # one fetch for the twenty


@pytest.mark.env(JWT_LEEWAY="30")
async def test_the_leeway_allows_clock_skew_and_the_socket_lives_until_it_ends(clients):
    client = clients("py-websocket")
    await client.connect({"token": RSA_KEY.token("skewed", ttl=-5)})  # expired 5 s ago here
    success = await client.next_event("auth_success")
    assert success["userId"] == "skewed"
    warning = await client.next_event("auth_expiring")
    assert 20 <= warning["secondsLeft"] <= 25  # bound until exp + leeway, not cut at once
    assert (await client.call("join_room", {"roomId": "availability-s1"}))["ok"] is True
    early = RSA_KEY.token("early", nbf=int(time.time()) + 10)  # the issuer's clock is ahead
    assert (await handshake(clients, early))["userId"] == "early"
    too_late = RSA_KEY.token("late", ttl=-40)
    assert (await handshake(clients, too_late))["refused"] == "token_expired"


async def test_without_leeway_a_token_just_expired_is_refused(clients):
    assert (await handshake(clients, RSA_KEY.token(ttl=-5)))["refused"] == "token_expired"
    early = RSA_KEY.token(nbf=int(time.time()) + 10)
    assert (await handshake(clients, early))["refused"] == "invalid_token"


@pytest.fixture
def down_url(free_port) -> str:
    return f"http://127.0.0.1:{free_port()}/jwks.json"


async def test_an_unreachable_provider_is_unavailable_and_hs_tokens_still_work(
    aiohttp_server, down_url, raw_token, tmp_path
):
    settings = load_settings(
        {
            "STORE_PATH": str(tmp_path / "down.db"),
            "JWT_SECRET": SECRET,
            "JWT_ALGORITHMS": "RS256,HS256",
            "JWT_JWKS_URL": down_url,
        }
    )
    server = await aiohttp_server(create_app(settings))  # starts although the provider is down
    client = make_client("py-websocket", str(server.make_url("")).rstrip("/"))
    try:
        with pytest.raises(Refused) as refused:
            await client.connect({"token": RSA_KEY.token()})
        assert refused.value.data["code"] == "unavailable"
        assert "JWT_JWKS_URL" in refused.value.data["message"]
        hs = raw_token({"sub": "svc", "role": "customer", "exp": int(time.time()) + 60})
        await client.connect({"token": hs})
        assert (await client.next_event("auth_success"))["userId"] == "svc"
    finally:
        await client.close()


@pytest.mark.env(JWT_JWKS_CACHE="0.001")
async def test_a_provider_down_keeps_the_keys_it_gave_and_comes_back(clients, jwks, gateway):
    assert (await handshake(clients, RSA_KEY.token()))["userId"] == "u1"
    jwks.status = 503  # down; the set fetched before is stale at once (JWT_JWKS_CACHE)
    hits = jwks.hits
    jwks.asked.clear()
    assert (await handshake(clients, RSA_KEY.token("known")))["userId"] == "known"
    await asyncio.wait_for(jwks.asked.wait(), 10)  # it was asked (in the background) ...
    assert jwks.hits > hits
    assert await refusal(gateway, NEXT_KEY.token()) == "invalid_token"  # ... and failed
    metrics = gateway.metrics.exposition().decode()
    assert 'realtime_jwks_fetches_total{outcome="failed"}' in metrics
    jwks.status = 200  # back, with a new key
    jwks.keys = [*jwks.keys, NEXT_KEY.jwk]
    assert (await handshake(clients, NEXT_KEY.token("next")))["userId"] == "next"


async def test_jku_and_x5u_headers_are_never_followed(clients, jwks, aiohttp_server):
    attacker = await serve_jwks(aiohttp_server, [ATTACKER_KEY])
    headers = {"jku": attacker.url, "x5u": attacker.url}
    evil = ATTACKER_KEY.token(role="admin", headers=headers)
    assert (await handshake(clients, evil))["refused"] == "invalid_token"
    # a known kid, the attacker's signature, the attacker's key set named: still refused
    posing = ATTACKER_KEY.token(headers={**headers, "kid": RSA_KEY.kid})
    assert (await handshake(clients, posing))["refused"] == "invalid_token"
    embedded = ATTACKER_KEY.token(headers={"jwk": ATTACKER_KEY.jwk})
    assert (await handshake(clients, embedded))["refused"] == "invalid_token"
    assert attacker.hits == 0
    assert (await handshake(clients, RSA_KEY.token(headers=headers)))["userId"] == "u1"


async def test_a_stale_set_serves_known_kids_while_one_refresh_runs_in_the_background(jwks):
    now = [1000.0]
    fetches: list[str] = []
    keys = JwksKeys(
        jwks.url, cache_s=300, refetch_s=30, on_fetch=fetches.append, clock=lambda: now[0]
    )
    try:
        await keys.prefetch()
        assert jwks.hits == 1
        jwks.gate = asyncio.Event()  # from now on the provider hangs
        jwks.asked.clear()
        jwks.keys = [*jwks.keys, NEXT_KEY.jwk]
        now[0] += 301  # the set is stale (JWT_JWKS_CACHE)
        # known kids are answered at once, from the stale set, while the refresh hangs
        found = await asyncio.wait_for(
            asyncio.gather(*(keys.key(k.kid, k.algorithm) for k in [RSA_KEY, EC_KEY] * 10)), 2
        )
        assert {key.key_id for key in found} == {RSA_KEY.kid, EC_KEY.kid}
        await asyncio.wait_for(jwks.asked.wait(), 10)  # the refresh has reached the provider
        now[0] += 301  # stale again: still the one refresh under way
        await asyncio.wait_for(keys.key(RSA_KEY.kid, "RS256"), 2)
        assert jwks.hits == 2 and fetches == ["ok"]
        # an unknown kid waits for the refresh, which may bring it (it does)
        unknown = asyncio.create_task(keys.key(NEXT_KEY.kid, "RS256"))
        await asyncio.wait_for(keys.key(EC_KEY.kid, "ES256"), 2)  # meanwhile known ones pass
        assert not unknown.done()
        jwks.gate.set()
        assert (await asyncio.wait_for(unknown, 10)).key_id == NEXT_KEY.kid
        assert jwks.hits == 2 and fetches == ["ok", "ok"]
        await keys.key(NEXT_KEY.kid, "RS256")  # fresh: no fetch
        assert jwks.hits == 2
    finally:
        if jwks.gate is not None:
            jwks.gate.set()
        await keys.close()


async def test_a_set_never_fetched_is_waited_for(jwks):
    keys = JwksKeys(jwks.url, cache_s=300, refetch_s=30)
    try:
        jwks.gate = asyncio.Event()
        first = asyncio.create_task(keys.key(RSA_KEY.kid, "RS256"))
        await asyncio.wait_for(jwks.asked.wait(), 10)
        second = asyncio.create_task(keys.key(EC_KEY.kid, "ES256"))
        assert not first.done()  # nothing to verify with until the set comes
        jwks.gate.set()
        found = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert [key.key_id for key in found] == [RSA_KEY.kid, EC_KEY.kid]
        assert jwks.hits == 1
    finally:
        jwks.gate.set()
        await keys.close()


@pytest.mark.env(JWT_JWKS_CACHE="0.001")
async def test_handshakes_of_known_kids_do_not_wait_for_a_hanging_provider(clients, jwks, gateway):
    assert (await handshake(clients, RSA_KEY.token()))["userId"] == "u1"
    # the stale set's refresh that handshake started ends first (else the next handshake
    # finds it under way and starts none: nothing would ask the hanging provider)
    await eventually(lambda: gateway.verifier.jwks._fetching is None)
    jwks.gate = asyncio.Event()  # the provider hangs; the set is stale at once
    jwks.asked.clear()
    try:
        assert (await handshake(clients, EC_KEY.token("first")))["userId"] == "first"
        await asyncio.wait_for(jwks.asked.wait(), 10)  # a refresh hangs now
        hits = jwks.hits
        answers = await asyncio.wait_for(
            asyncio.gather(*(handshake(clients, RSA_KEY.token(f"k{n}")) for n in range(10))), 4
        )
        assert sorted(a["userId"] for a in answers) == sorted(f"k{n}" for n in range(10))
        assert jwks.hits == hits  # one refresh at a time
    finally:
        jwks.gate.set()
