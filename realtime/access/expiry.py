"""How long a socket's token binds: until its `exp` and the leeway, with `auth_expiring`
shortly before; past it the socket gets `auth_error` `token_expired` and is disconnected,
unless a fresh token for the same user arrived first (which arms its deadlines again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from realtime import events
from realtime.access.auth import Principal
from realtime.access.socket import SocketSession
from realtime.config import Settings
from realtime.delivery.emitter import Emitter
from realtime.engine import Engine
from realtime.errors import GatewayError
from realtime.metrics import Metrics

logger = logging.getLogger(__name__)

# a step of a socket's life run in the background (its name given), which closes the socket
# if it fails; and whether a session is still the registered one for its sid
Step = Callable[[SocketSession, Coroutine[Any, Any, None], str], None]


class TokenExpiry:
    """Arms each socket's one deadline (`SocketSession.deadline`) for its token."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        emitter: Emitter,
        metrics: Metrics,
        run_step: Step,
        current: Callable[[SocketSession], bool],
        clock: Callable[[], float] = time.time,
    ):
        self._settings = settings
        self._engine = engine
        self._emitter = emitter
        self._metrics = metrics
        self._run_step = run_step
        self._current = current
        self._clock = clock
        # a token accepted within the leeway past its `exp` binds until then, not at once
        self._leeway_s = settings.jwt_leeway_s

    def bind(self, session: SocketSession) -> None:
        """The socket's token binds from now on: disconnection at its end."""
        assert session.principal is not None
        self._arm(session, self._left_s(session.principal), self._token_expired)

    def warn(self, session: SocketSession) -> None:
        """And `auth_expiring` before that (armed once `auth_success` is sent)."""
        self._arm_expiry(session)

    def _left_s(self, principal: Principal) -> float:
        """Seconds until the socket's token no longer binds: its `exp` and the leeway."""
        return principal.expires_at + self._leeway_s - self._clock()

    def _arm_expiry(self, session: SocketSession) -> None:
        assert session.principal is not None
        left_s = self._left_s(session.principal)
        lead_s = self._settings.auth_expiring_lead_s
        self._arm(session, max(0.0, left_s - lead_s), self._auth_expiring)

    async def _auth_expiring(self, session: SocketSession) -> None:
        principal = session.principal
        assert principal is not None
        left_s = max(0.0, self._left_s(principal))
        self._emitter.send_control(
            session.sid,
            events.AUTH_EXPIRING,
            {"expiresAt": principal.expires_at_iso(), "secondsLeft": int(left_s)},
        )
        self._arm(session, left_s, self._token_expired)

    async def _token_expired(self, session: SocketSession) -> None:
        logger.info("token expired", extra={"sid": session.sid})
        self._metrics.auth_failures.labels("token_expired").inc()
        error = GatewayError("token_expired").to_dict()
        self._emitter.send_control(session.sid, events.AUTH_ERROR, error)
        await self._engine.disconnect(session.sid)

    def _arm(
        self,
        session: SocketSession,
        delay_s: float,
        action: Callable[[SocketSession], Coroutine[Any, Any, None]],
    ) -> None:
        session.cancel_deadline()
        session.deadline = asyncio.get_running_loop().call_later(
            max(0.0, delay_s), self._deadline_passed, session, action
        )

    def _deadline_passed(
        self,
        session: SocketSession,
        action: Callable[[SocketSession], Coroutine[Any, Any, None]],
    ) -> None:
        session.deadline = None
        if self._current(session):
            self._run_step(session, action(session), action.__name__)
