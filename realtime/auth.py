"""Token verification: a JWT in, a `Principal` out. Knows nothing of sockets or HTTP."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import jwt

from realtime.config import Settings
from realtime.errors import GatewayError
from realtime.wire import iso_timestamp
from storage.paths import set_at, value_at

ROLES = ("customer", "staff", "admin")
MAX_EXP_S = 253_402_300_799  # 9999-12-31T23:59:59Z
NO_SHOPS: frozenset[str] = frozenset()  # one for every principal without shops


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says the caller is."""

    user_id: str
    role: str
    shop_ids: frozenset[str]
    expires_at: float  # unix seconds, from `exp`

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def expires_at_iso(self) -> str:
        return iso_timestamp(self.expires_at)


class TokenVerifier:
    """Verifies tokens with the configured keys, algorithms and claim names."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._algorithms = list(settings.jwt_algorithms)
        if not self._algorithms:
            raise ValueError("no JWT algorithm configured")

    def verify(self, token: Any) -> Principal:
        """The token's principal, or `GatewayError` missing_token/invalid_token/token_expired."""
        if token is None or token == "":
            raise GatewayError("missing_token")
        if not isinstance(token, str):
            raise GatewayError("invalid_token", "the token must be a string")
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in self._algorithms:
                raise GatewayError("invalid_token", f"algorithm {algorithm!r} is not accepted")
            claims = jwt.decode(
                token,
                key=self._key_for(algorithm),
                algorithms=self._algorithms,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"require": ["exp"], "verify_aud": self._settings.jwt_audience is not None},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise GatewayError("token_expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise GatewayError("invalid_token", f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise GatewayError("invalid_token", "the token's audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise GatewayError("invalid_token", "the token's issuer is not accepted") from None
        except jwt.InvalidSignatureError:
            raise GatewayError("invalid_token", "the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise GatewayError("invalid_token", "the token cannot be decoded") from None
        return self._principal(claims)

    def _key_for(self, algorithm: str) -> str:
        if algorithm.startswith("HS"):
            key = self._settings.jwt_secret
        else:
            key = self._settings.jwt_public_key
        if not key:
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
        return Principal(
            user_id=user_id,
            role=role,
            shop_ids=frozenset(str(s) for s in shop_ids) if shop_ids else NO_SHOPS,
            expires_at=self._expiry(claims["exp"]),
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
