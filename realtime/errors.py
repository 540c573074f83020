"""The one error catalogue: codes of the spec, their default messages and HTTP statuses.

Acks, `error` events, `auth_error` events, `connect_error` data and HTTP bodies all speak
these codes, so a client handles one vocabulary whatever the channel.
"""

from __future__ import annotations

import logging
from typing import Any

from storage.base import DocumentRejected, StoreError

# code -> (HTTP status, default message)
CATALOGUE: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "authentication required"),
    "invalid_payload": (400, "the payload is not valid"),
    "unknown_room": (400, "no such room name"),
    "forbidden": (403, "not allowed"),
    "not_found": (404, "not found"),
    "method_not_allowed": (405, "this route does not take this method"),
    "payload_too_large": (413, "the payload is too large"),
    "unsupported_media_type": (415, "the body must be JSON (application/json)"),
    "idempotency_conflict": (422, "this Idempotency-Key was used with another body"),
    "rate_limited": (429, "too many requests"),
    "internal": (500, "internal error"),
    # authentication
    "missing_token": (401, "a token is required"),
    "invalid_token": (401, "the token is not valid"),
    "token_expired": (401, "the token has expired"),
    "auth_timeout": (401, "not authenticated in time"),
    "identity_changed": (403, "a token for another user cannot replace the current one"),
    "revoked": (401, "an operator revoked this token or cut this socket"),
    "unavailable": (503, "a dependency is unavailable"),
}

AUTH_CODES = frozenset(
    {
        "missing_token",
        "invalid_token",
        "token_expired",
        "auth_timeout",
        "identity_changed",
        "revoked",
    }
)


class GatewayError(Exception):
    """An expected failure with a catalogue code; handlers turn it into an answer."""

    def __init__(self, code: str, message: str | None = None, details: Any = None):
        if code not in CATALOGUE:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message or CATALOGUE[code][1]
        self.details = details
        super().__init__(f"{code}: {self.message}")

    @property
    def http_status(self) -> int:
        return CATALOGUE[self.code][0]

    def to_dict(self) -> dict[str, Any]:
        """The `{code, message, details?}` object used everywhere an error is answered."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


def answer_for(error: Exception, what: str, log: logging.Logger, **context: Any) -> GatewayError:
    """The catalogue error any failure of `what` (an event, a handshake, a request) is
    answered with, logged at its level: an expected refusal as it is (INFO), a store outage
    as `unavailable` (WARNING: retry later), anything else as `internal` (ERROR, traceback)."""
    if isinstance(error, GatewayError):
        log.info(f"{what} refused", extra={**context, "code": error.code})
        return error
    if isinstance(error, DocumentRejected):
        log.info(f"{what} refused by the store", extra={**context, "error": str(error)})
        return GatewayError("invalid_payload", f"the store cannot keep this payload: {error}")
    if isinstance(error, StoreError):
        log.warning(f"{what} failed: store unavailable", extra={**context, "error": str(error)})
        return GatewayError("unavailable", "the store is unavailable; retry later")
    log.error(f"{what} failed", extra=context, exc_info=error)
    return GatewayError("internal")
