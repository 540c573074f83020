"""Revoked tokens and users, as this instance holds them: what an authentication checks
without asking the store. `realtime/ops/revoker.py` keeps them, on every instance, in step
with the store and the bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from realtime.access.auth import Principal
from realtime.errors import GatewayError
from storage.base import Revocation

REVOKED = {"jti": "this token has been revoked", "sub": "this user's tokens have been revoked"}


class Revocations:
    """The revocations in force, in memory: what every authentication is checked against."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._until_ms: dict[tuple[str, str], int] = {}  # (kind, value) -> until, unix ms
        self._version = 0  # counts the applies
        # (kind, value) -> the version of its last apply (a lift too), while no store read
        # that started after that apply has been held: the store read may not know of it
        self._applied: dict[tuple[str, str], int] = {}
        self._read_from = 0  # the version when the store read held last started

    @property
    def version(self) -> int:
        """Read it before a store read, and hand it to `replace` with what was read."""
        return self._version

    def __len__(self) -> int:
        return len(self._until_ms)

    def check(self, principal: Principal) -> None:
        """`GatewayError` revoked when this principal's token or user is revoked."""
        kind = self.revoked_by(principal)
        if kind is not None:
            raise GatewayError("revoked", REVOKED[kind])

    def revoked_by(self, principal: Principal) -> str | None:
        """Which revocation ("jti", "sub") refuses this principal, if any."""
        if not self._until_ms:  # the common case: nothing to look up
            return None
        now_ms = self._clock() * 1000
        for kind, value in (("jti", principal.jti), ("sub", principal.user_id)):
            until_ms = self._until_ms.get((kind, value)) if value is not None else None
            if until_ms is not None and until_ms > now_ms:
                return kind
        return None

    def apply(self, revocation: Revocation) -> bool:
        """Hold this revocation (replacing the one of the same kind and value); True when it
        is in force, False when its time has passed (then it is forgotten: a lift)."""
        key = (revocation.kind, revocation.value)
        self._version += 1
        self._applied[key] = self._version
        if revocation.until_ms <= self._clock() * 1000:
            self._until_ms.pop(key, None)
            return False
        self._until_ms[key] = revocation.until_ms
        return True

    def replace(
        self, revocations: list[Revocation], read_from: int | None = None
    ) -> list[Revocation]:
        """Hold these (the store's, read from when `version` was `read_from`: now when not
        given), except for what was applied since, which the read may not have seen: that
        stays as held (a revocation, or its absence after a lift). A read older than the one
        held already changes nothing. Returns the ones taken from the store that were not
        held, or held until an earlier time: those whose sockets may not have been cut yet."""
        if read_from is None:
            read_from = self._version
        if read_from < self._read_from:
            return []
        now_ms = self._clock() * 1000
        held = self._until_ms
        newer = {key for key, version in self._applied.items() if version > read_from}
        until_ms = {key: held[key] for key in newer if key in held}
        missed = []
        for revocation in revocations:
            key = (revocation.kind, revocation.value)
            if key in newer or revocation.until_ms <= now_ms:
                continue
            until_ms[key] = revocation.until_ms
            if held.get(key, 0) < revocation.until_ms:
                missed.append(revocation)
        self._until_ms = until_ms
        self._applied = {key: self._applied[key] for key in newer}
        self._read_from = read_from
        return missed
