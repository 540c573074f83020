"""Token verification: a JWT in, a `Principal` out. Knows nothing of sockets or HTTP.

The algorithm chooses the key: HS* the shared secret; RS/ES/PS/EdDSA the identity provider's
JWKS key of the token's `kid` when `JWT_JWKS_URL` is set, else (or for a token without `kid`)
`JWT_PUBLIC_KEY`. A token's `jku`/`x5u`/`jwk` headers are never read: keys come only from
the configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from realtime.config import Settings
from realtime.errors import GatewayError
from realtime.wire import iso_timestamp
from storage.paths import set_at, value_at

logger = logging.getLogger(__name__)

DEV_SECRET_HINT = (
    " with this gateway's development secret (kept beside its store): make tokens with "
    "scripts/token, or `python -m realtime token` run where the gateway runs, or the test "
    "page's dev token"
)

ROLES = ("customer", "staff", "admin")
JWKS_TIMEOUT_S = 5.0  # one fetch of the JWKS; a handshake waits for it at most this long
JTI_MAX = 256
MAX_EXP_S = 253_402_300_799  # 9999-12-31T23:59:59Z
NO_SHOPS: frozenset[str] = frozenset()  # one for every principal without shops


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says the caller is."""

    user_id: str
    role: str
    shop_ids: frozenset[str]
    expires_at: float  # unix seconds, from `exp`
    jti: str | None = None  # the token's id, when it has one: what `POST /revoke` names

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def expires_at_iso(self) -> str:
        return iso_timestamp(self.expires_at)


class JwksKeys:
    """The identity provider's signing keys (`JWT_JWKS_URL`), by `kid`.

    A fetched set is fetched again after `cache_s`, in the background: meanwhile, and while
    the provider is down, the kids it has are still verified with it at once. A `kid` it lacks
    waits for a fetch (a key rotation needs no restart), but causes one at most once every
    `refetch_s` (0: no bound, for tests), so a flood of made-up kids costs the provider one
    request per interval. PyJWKClient reads with urllib: fetches run on a thread, one at a
    time, and the verifications that wait share it. A failed fetch keeps the set fetched
    before (an outage of the provider does not refuse tokens of keys already known) and is not
    tried again before `refetch_s` either. Until a set has been fetched, every verification
    waits for the fetch.
    """

    def __init__(
        self,
        url: str,
        cache_s: float,
        refetch_s: float,
        on_fetch: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_TIMEOUT_S)
        self._cache_s = cache_s
        self._refetch_s = refetch_s
        self._on_fetch = on_fetch
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}  # kid -> its JWK, as published
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}  # (kid, algorithm) -> key
        self._fetched_at: float | None = None  # the last fetch that succeeded
        self._attempted_at: float | None = None  # the last fetch, whatever came of it
        self._failed = False  # the last fetch failed
        self._fetching: asyncio.Task | None = None

    async def key(self, kid: str, algorithm: str) -> jwt.PyJWK:
        """The key of `kid` for `algorithm`, or `GatewayError` invalid_token (no such key
        after the fetches allowed) / unavailable (no key set could be fetched yet)."""
        if kid in self._keys:
            if self._fetching is None and self._due():
                self._start_fetch()  # in the background: the stale set serves meanwhile
        else:  # perhaps published since the last fetch (a rotation), or no set yet
            if self._fetching is not None:
                await self._wait_fetch()
            if kid not in self._keys and self._fetching is None:
                if self._due() or self._may_fetch():
                    self._start_fetch()
                    await self._wait_fetch()
        jwk = self._keys.get(kid)
        if jwk is None:
            if self._fetched_at is None:
                raise GatewayError(
                    "unavailable",
                    "the identity provider's keys (JWT_JWKS_URL) cannot be fetched; retry later",
                )
            raise GatewayError("invalid_token", "no key of the identity provider has this kid")
        return self._key_for(kid, jwk, algorithm)

    async def prefetch(self) -> None:
        if self._fetching is None:
            self._start_fetch()
        await self._wait_fetch()

    async def close(self) -> None:
        """Stop a fetch under way (its thread ends by its timeout)."""
        fetching = self._fetching
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)

    def _due(self) -> bool:
        """The set is missing or older than `cache_s`, and no fetch failed just now."""
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < self._cache_s:
            return False
        return not (self._failed and now - self._attempted_at < self._refetch_s)

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._refetch_s

    def _start_fetch(self) -> None:
        """The one fetch: referenced by `_fetching` until it ends (it clears it)."""
        self._attempted_at = self._clock()
        self._fetching = asyncio.get_running_loop().create_task(self._fetch(), name="jwks:fetch")

    async def _wait_fetch(self) -> None:
        fetching = self._fetching
        if fetching is not None:
            # shielded: a caller that gives up (a closed handshake) leaves the fetch to the
            # others; `_fetch` never raises but when cancelled by `close`
            await asyncio.shield(fetching)

    async def _fetch(self) -> None:
        try:
            keys = await asyncio.to_thread(self._read_keys)
        except Exception as exc:  # unreachable, an HTTP error, not JSON, not a JWKS
            self._failed = True
            logger.warning(
                "jwks fetch failed",
                extra={"url": self._client.uri, "error": str(exc)[:200], "known": len(self._keys)},
            )
            self._report("failed")
        else:
            self._keys, self._parsed = keys, {}
            self._fetched_at, self._failed = self._attempted_at, False
            logger.info("jwks fetched", extra={"url": self._client.uri, "keys": len(keys)})
            self._report("ok")
        finally:
            self._fetching = None

    def _report(self, outcome: str) -> None:
        if self._on_fetch is not None:
            self._on_fetch(outcome)

    def _read_keys(self) -> dict[str, dict[str, Any]]:
        """On a thread: the published signing keys by kid (a symmetric key never counts: an
        HS token is checked with JWT_SECRET only)."""
        data = self._client.fetch_data()
        published = data.get("keys")
        if not isinstance(published, list):
            raise ValueError("not a JWKS: no list of keys")
        keys = {}
        for jwk in published:
            if (
                isinstance(jwk, dict)
                and isinstance(jwk.get("kid"), str)
                and jwk.get("kty") not in (None, "oct")
                and jwk.get("use") in (None, "sig")
            ):
                keys[jwk["kid"]] = jwk
        return keys

    def _key_for(self, kid: str, jwk: dict[str, Any], algorithm: str) -> jwt.PyJWK:
        key = self._parsed.get((kid, algorithm))
        if key is not None:
            return key
        declared = jwk.get("alg")
        if declared is not None and declared != algorithm:
            raise GatewayError("invalid_token", f"the key of this kid is for {declared!r}")
        try:
            key = jwt.PyJWK(jwk, algorithm)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise GatewayError(
                "invalid_token", f"the key of this kid cannot verify {algorithm}"
            ) from None
        self._parsed[(kid, algorithm)] = key
        return key


class TokenVerifier:
    """Verifies tokens with the configured keys, algorithms and claim names."""

    def __init__(self, settings: Settings, on_jwks_fetch: Callable[[str], None] | None = None):
        self._settings = settings
        self._algorithms = list(settings.jwt_algorithms)
        if not self._algorithms:
            raise ValueError("no JWT algorithm configured")
        self.jwks = (
            JwksKeys(
                settings.jwt_jwks_url,
                settings.jwt_jwks_cache_s,
                settings.jwt_jwks_refetch_s,
                on_jwks_fetch,
            )
            if settings.jwt_jwks_url
            else None
        )

    async def verify(self, token: Any) -> Principal:
        """The token's principal, or `GatewayError` missing_token/invalid_token/token_expired
        (unavailable while no JWKS could be fetched)."""
        if token is None or token == "":
            raise GatewayError("missing_token")
        if not isinstance(token, str):
            raise GatewayError("invalid_token", "the token must be a string")
        if not token.isascii():  # a JWT is; PyJWT would fail encoding a lone surrogate
            raise GatewayError("invalid_token", "the token cannot be decoded")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise GatewayError("invalid_token", "the token cannot be decoded") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise GatewayError("invalid_token", f"algorithm {algorithm!r} is not accepted")
        key = await self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self._algorithms,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"require": ["exp"], "verify_aud": self._settings.jwt_audience is not None},
                leeway=self._settings.jwt_leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise GatewayError("token_expired") from None
        except jwt.ImmatureSignatureError:
            raise GatewayError("invalid_token", "the token is not valid yet (nbf or iat)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise GatewayError("invalid_token", f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise GatewayError("invalid_token", "the token's audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise GatewayError("invalid_token", "the token's issuer is not accepted") from None
        except jwt.InvalidSignatureError:
            message = "the token's signature does not verify"
            if self._settings.jwt_secret_generated:
                # the usual cause: a token made with another store's development secret
                message += DEV_SECRET_HINT
            raise GatewayError("invalid_token", message) from None
        except jwt.PyJWTError:
            raise GatewayError("invalid_token", "the token cannot be decoded") from None
        return self._principal(claims)

    async def _key_for(self, algorithm: str, kid: Any) -> Any:
        if algorithm.startswith("HS"):
            key = self._settings.jwt_secret
        elif self.jwks is not None and kid is not None:
            return await self.jwks.key(kid, algorithm)
        else:
            key = self._settings.jwt_public_key
        if not key:
            if self.jwks is not None:
                raise GatewayError("invalid_token", "the token has no kid to choose a key by")
            raise GatewayError("invalid_token", f"no key is configured for {algorithm}")
        return key

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self._settings
        user_id = value_at(claims, names.jwt_claim_user_id)
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id:
            raise GatewayError(
                "invalid_token", f"the token has no user id claim {names.jwt_claim_user_id!r}"
            )
        role = value_at(claims, names.jwt_claim_role)
        if role not in ROLES:
            raise GatewayError(
                "invalid_token",
                f"the token's {names.jwt_claim_role!r} claim must be one of {', '.join(ROLES)}",
            )
        shop_ids = value_at(claims, names.jwt_claim_shop_ids) or []
        if isinstance(shop_ids, (str, int)):
            shop_ids = [shop_ids]
        if not isinstance(shop_ids, list):
            raise GatewayError(
                "invalid_token", f"the token's {names.jwt_claim_shop_ids!r} claim must be a list"
            )
        jti = claims.get("jti")  # PyJWT has checked it is a string
        if jti is not None and not 0 < len(jti) <= JTI_MAX:
            raise GatewayError("invalid_token", f"the token's jti must be 1 to {JTI_MAX} long")
        return Principal(
            user_id=user_id,
            role=role,
            shop_ids=frozenset(str(s) for s in shop_ids) if shop_ids else NO_SHOPS,
            expires_at=self._expiry(claims["exp"]),
            jti=jti,
        )

    @staticmethod
    def _expiry(exp: Any) -> float:
        # PyJWT has checked that `exp` is a number in the future; a date past year 9999 is no
        # expiry a clock, a timer or an ISO timestamp can hold
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not exp <= MAX_EXP_S:
            raise GatewayError("invalid_token", "the token's exp is out of range")
        return float(exp)


def issue_token(
    settings: Settings,
    sub: str,
    role: str,
    shop_ids: Iterable[str] = (),
    ttl_s: float = 3600.0,
    extra: dict[str, Any] | None = None,
) -> str:
    """A development token signed with the configured HS secret, shaped by the claim names."""
    if not settings.jwt_secret:
        raise GatewayError(
            "invalid_token",
            "only HS tokens can be issued here; sign RS/ES tokens with your identity provider",
        )
    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), "HS256")
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + int(ttl_s)}
    set_at(claims, settings.jwt_claim_user_id, sub)
    set_at(claims, settings.jwt_claim_role, role)
    if shop_ids:
        set_at(claims, settings.jwt_claim_shop_ids, list(shop_ids))
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    claims.update(extra or {})
    return jwt.encode(claims, settings.jwt_secret, algorithm=algorithm)
