"""Authentication variables: how a token is verified and where its claims are read.

`AuthSchema` declares the keys (a shared secret, a PEM public key, an identity provider's
JWKS), the accepted algorithms, the checked `aud`, `iss` and clock skew, the claims holding the
user id, role and shop ids, and the deadlines around authentication and revocation. Which
algorithm names are accepted (`SUPPORTED_JWT_ALGORITHMS`) is checked by `loading`, after the
defaults that depend on the keys are filled in.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from realtime.config.fields import _Boolean, _CommaList, _env, _positive

SUPPORTED_JWT_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)


class AuthSchema(Schema):
    """Keys, algorithms and claims of tokens; authentication and revocation timing."""

    jwt_secret = _env(
        fields.String(validate=validate.Length(min=32)),
        "JWT_SECRET",
        "HS256 key (at least 32 characters)",
        "unset: on the embedded store a random secret is kept in "
        "STORE_PATH + '.jwt-secret' (mode 0600); with MONGODB_URL a key is required",
    )
    jwt_public_key = _env(
        fields.String(),
        "JWT_PUBLIC_KEY",
        "PEM public key (or a path to one) for RS256/ES256 tokens",
        "unset",
    )
    jwt_algorithms = _env(
        _CommaList(),
        "JWT_ALGORITHMS",
        "accepted token algorithms, comma-separated",
        "HS256 with JWT_SECRET, RS256,ES256 with JWT_PUBLIC_KEY",
    )
    jwt_audience = _env(
        fields.String(), "JWT_AUDIENCE", "required `aud` claim", "unset: not checked"
    )
    jwt_issuer = _env(fields.String(), "JWT_ISSUER", "required `iss` claim", "unset: not checked")
    jwt_claim_user_id = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_USER_ID",
        "claim holding the user id (dotted path)",
        "sub",
    )
    jwt_claim_role = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_ROLE",
        "claim holding the role: customer, staff or admin (dotted path, e.g. app_metadata.role)",
        "role",
    )
    jwt_claim_shop_ids = _env(
        fields.String(validate=validate.Length(min=1)),
        "JWT_CLAIM_SHOP_IDS",
        "claim holding a staff member's shop ids (dotted path)",
        "shop_ids",
    )
    jwt_jwks_url = _env(
        fields.String(validate=validate.Regexp(r"^https?://")),
        "JWT_JWKS_URL",
        "identity provider's JWKS URL: RS/ES/EdDSA keys chosen by the token's `kid`",
        "unset",
    )
    jwt_jwks_cache_s = _env(
        fields.Float(validate=_positive),
        "JWT_JWKS_CACHE",
        "seconds a fetched JWKS is used before it is fetched again",
        "300",
    )
    jwt_jwks_refetch_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "JWT_JWKS_REFETCH_INTERVAL",
        "least seconds between fetches caused by a token with an unknown `kid` (a key rotation)",
        "30",
    )
    jwt_leeway_s = _env(
        fields.Float(validate=validate.Range(min=0, max=3600)),
        "JWT_LEEWAY",
        "seconds of clock skew allowed when checking `exp`, `nbf` and `iat`",
        "0",
    )
    revocation_reload_s = _env(
        fields.Float(validate=validate.Range(min=0.1, max=3600)),
        "REVOCATION_RELOAD",
        "seconds between each instance's re-reads of the revocations in the store (a safety "
        "net: with REDIS_URL they reach every instance at once)",
        "5",
    )
    auth_timeout_s = _env(
        fields.Float(validate=_positive),
        "AUTH_TIMEOUT",
        "seconds an unauthenticated socket may stay connected",
        "10",
    )
    auth_expiring_lead_s = _env(
        fields.Float(validate=validate.Range(min=0)),
        "AUTH_EXPIRING_LEAD",
        "seconds before a token's exp that `auth_expiring` is sent",
        "60",
    )
    staff_shop_rooms = _env(
        _Boolean(),
        "STAFF_SHOP_ROOMS",
        "put staff in their shops' rooms (`shop-{shopId}`) when they authenticate, as admins "
        "are put in `admin-general`; false: they join them with `join_room`",
        "true",
    )
