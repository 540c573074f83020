"""Waits between retries: how the change feed and the Redis bus come back after a failure."""

from __future__ import annotations

import random

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 30.0


class Backoff:
    """Waits that double up to a cap, with full jitter; `reset()` after a success."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S):
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s

    def reset(self) -> None:
        self._next_s = self._first_s

    def next_delay(self) -> float:
        delay = random.uniform(self._next_s / 2, self._next_s)
        self._next_s = min(self._max_s, self._next_s * 2)
        return delay
