"""The invariant, checked against the store's log, client by client: every event of its rooms
from its first cursor on, delivered exactly once and in `eventId` order, nothing of a room it
is not in, and no `gap` or `resync` (the soak's log keeps its whole history, so none is due).
A duplicate is the protocol's own only when it came twice in one catch-up and is an event of
two of the client's rooms (each rejoin replays it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from chaos.clients import History
from realtime.wire import event_id
from storage.base import StoredEvent

EVERYONE = "*"


@dataclass
class Verdict:
    client: str
    expected: int
    delivered: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # events of rooms it is not in
    duplicates: list[str] = field(default_factory=list)  # not explained by the protocol
    explained_duplicates: int = 0
    reorders: list[str] = field(default_factory=list)
    refetches: int = 0

    @property
    def violated(self) -> bool:
        return bool(
            self.missing or self.extra or self.duplicates or self.reorders or self.refetches
        )


def rooms_by_id(log: list[StoredEvent]) -> dict[str, tuple[str, ...]]:
    return {event_id(e.sequence): e.rooms for e in log if e.rooms != (EVERYONE,)}


def expected_ids(history: History, rooms_of: dict[str, tuple[str, ...]]) -> list[str]:
    """The events of the client's rooms (its first cursor is the log's start: the clients
    connect before anything is published)."""
    mine = set(history.rooms)
    return sorted(i for i, rooms in rooms_of.items() if mine.intersection(rooms))


def judge(history: History, rooms_of: dict[str, tuple[str, ...]]) -> Verdict:
    expected = expected_ids(history, rooms_of)
    delivered = [i for i, _, _ in history.delivered]
    verdict = Verdict(history.name, len(expected), len(delivered))
    seen = set(delivered)
    verdict.missing = [i for i in expected if i not in seen]
    wanted = set(expected)
    verdict.extra = sorted({i for i in delivered if i not in wanted})
    counted: dict[str, int] = {}
    for i in delivered:
        counted[i] = counted.get(i, 0) + 1
    verdict.duplicates = sorted(i for i, n in counted.items() if n > 1)  # delivered twice
    newest = ""
    for i in delivered:
        if i < newest:
            verdict.reorders.append(f"{i} after {newest}")
        newest = max(newest, i)
    mine = set(history.rooms)
    for i, phase in history.duplicates:
        if phase == "catchup" and len(mine.intersection(rooms_of.get(i, ()))) > 1:
            verdict.explained_duplicates += 1
        else:
            verdict.duplicates.append(f"{i} ({phase})")
    verdict.refetches = len(history.refetches)
    return verdict


def delays_ms(histories: list[History], log: list[StoredEvent]) -> list[float]:
    """From an event's logging to its delivery to each client, first deliveries only."""
    logged = {event_id(e.sequence): e.timestamp_ms for e in log}
    return [at - logged[i] for h in histories for i, at, _ in h.delivered if i in logged]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else [ordered[0]] * 99
    return {"p50": cut[49], "p99": cut[98], "max": ordered[-1]}
