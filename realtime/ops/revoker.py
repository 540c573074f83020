"""Operators cutting sockets (`POST /disconnect`) and refusing tokens (`POST /revoke`), on
every instance.

A revocation is kept in the store (the truth, read at start), held in memory by each instance
(an authentication checks it without asking the store), announced on the bus so that the
other instances refuse it and cut their sockets at once, and read again from the store every
`REVOCATION_RELOAD` seconds in case a message was lost (a Redis outage; or no Redis, several
processes on one embedded store). A store read that started before a revocation was applied
here does not undo it: what was applied during the read is kept as held, the rest is taken
from the store. A cut socket first gets `auth_error` `revoked`, then a
Socket.IO disconnect, after which the official clients do not reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from realtime import events
from realtime.access.auth import Principal
from realtime.access.revocations import REVOKED, Revocations
from realtime.access.sessions import Sessions
from realtime.tasks import TaskKeeper
from realtime.wire import iso_timestamp
from storage.base import Revocation, Store, StoreError

logger = logging.getLogger(__name__)

DISCONNECTED = "an operator disconnected this socket"

_DISCONNECT = events.DisconnectSchema()
_REVOKE = events.RevokeSchema()


class Revoker:
    """The capability behind `/disconnect` and `/revoke`, and what the bus brings of them."""

    def __init__(
        self,
        store: Store,
        revocations: Revocations,
        sessions: Sessions,
        tasks: TaskKeeper,
        reload_interval_s: float,
    ):
        self._store = store
        self._revocations = revocations
        self._sessions = sessions
        self._tasks = tasks
        self._reload_interval_s = reload_interval_s
        self._announce: Callable[[dict[str, Any]], None] | None = None
        self._reloads: asyncio.Task | None = None

    def announce_with(self, announce: Callable[[dict[str, Any]], None]) -> None:
        """How to tell the other instances (the bus); none without Redis."""
        self._announce = announce

    async def start(self) -> None:
        """The store's revocations, before serving; then read again now and then."""
        read_from = self._revocations.version
        self._revocations.replace(await self._store.revocations(), read_from)
        self._reloads = self._tasks.spawn(self._reload_forever(), name="revocations:reload")

    async def stop(self) -> None:
        if self._reloads is not None:
            self._reloads.cancel()
            await asyncio.gather(self._reloads, return_exceptions=True)
            self._reloads = None

    async def disconnect(self, body: Any) -> dict[str, Any]:
        """Cut these users' and these sockets' connections here and on the other instances;
        returns `{disconnected}`, how many were cut on this instance."""
        request = events.load(_DISCONNECT, body, unknown_fields="refuse")
        users, sids = sorted(set(request["users"])), sorted(set(request["sids"]))
        message = request.get("reason") or DISCONNECTED
        self._tell({"control": "disconnect", "users": users, "sids": sids, "message": message})
        count = await self._disconnect(set(users), set(sids), message)
        logger.info(
            "sockets disconnected",
            extra={"users": len(users), "sids": len(sids), "disconnected": count},
        )
        return {"disconnected": count}

    async def revoke(self, body: Any) -> dict[str, Any]:
        """Keep the revocation in the store, refuse its tokens and cut their sockets here and
        on the other instances; returns what is revoked and how many sockets were cut here."""
        request = events.load(_REVOKE, body, unknown_fields="refuse")
        kind = "jti" if "jti" in request else "sub"
        revocation = Revocation(kind, request[kind], int(request["until"] * 1000))
        message = request.get("reason") or REVOKED[kind]
        await self._store.revoke(revocation)  # first: what is answered is also kept
        self._tell(
            {
                "control": "revoke",
                "kind": kind,
                "value": revocation.value,
                "untilMs": revocation.until_ms,
                "message": message,
            }
        )
        in_force = self._revocations.apply(revocation)  # else its time has passed: a lift
        count = await self._cut_revoked(revocation, message) if in_force else 0
        logger.info("revoked", extra={"kind": kind, "disconnected": count})
        return {
            kind: revocation.value,
            "until": iso_timestamp(revocation.until_ms / 1000),
            "disconnected": count,
        }

    def heard(self, message: dict[str, Any]) -> None:
        """A control message another instance announced; never waits (the bus reads on)."""
        try:
            if message["control"] == "disconnect":
                cut = self._disconnect(
                    set(map(str, message["users"])),
                    set(map(str, message["sids"])),
                    str(message["message"]),
                )
            elif message["control"] == "revoke":
                revocation = Revocation(
                    str(message["kind"]), str(message["value"]), int(message["untilMs"])
                )
                if revocation.kind not in REVOKED:
                    raise ValueError(revocation.kind)
                # held at once, so that no authentication slips in before the cut
                if not self._revocations.apply(revocation):
                    return
                cut = self._cut_revoked(revocation, str(message["message"]))
            else:
                raise ValueError(message["control"])
        except (KeyError, TypeError, ValueError):
            logger.warning("malformed control message on the bus")
            return
        self._tasks.spawn(cut, name="revocations:cut")

    async def _disconnect(self, users: set[str], sids: set[str], message: str) -> int:
        def chosen(sid: str, principal: Principal | None) -> str | None:
            if sid in sids or (principal is not None and principal.user_id in users):
                return message
            return None

        return await self._sessions.cut(chosen)

    async def _cut_revoked(self, revocation: Revocation, message: str) -> int:
        target = (revocation.kind, revocation.value)

        def chosen(sid: str, principal: Principal | None) -> str | None:
            if principal is not None and target in (
                ("jti", principal.jti),
                ("sub", principal.user_id),
            ):
                return message
            return None

        return await self._sessions.cut(chosen)

    def _tell(self, message: dict[str, Any]) -> None:
        if self._announce is not None:
            self._announce(message)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval_s)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # the store is away: the ones held stay in force
                logger.warning("revocations not reloaded", extra={"error": str(exc)[:200]})
            except Exception:
                logger.exception("revocations not reloaded")

    async def reload(self) -> int:
        """Hold the store's revocations; when some were not held before (a message that did
        not come), cut every socket they refuse. Returns how many sockets were cut."""
        read_from = self._revocations.version  # before the read: what is applied during it stays
        if not self._revocations.replace(await self._store.revocations(), read_from):
            return 0
        logger.info("revocations caught up from the store")

        def chosen(sid: str, principal: Principal | None) -> str | None:
            kind = self._revocations.revoked_by(principal) if principal is not None else None
            return REVOKED[kind] if kind is not None else None

        return await self._sessions.cut(chosen)
