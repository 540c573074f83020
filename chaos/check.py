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
    return {event_id(e.sequence): tuple(e.rooms) for e in log if tuple(e.rooms) != (EVERYONE,)}


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


def producers_problems(log: list[StoredEvent], broadcasts, bookings) -> list[str]:
    """What the producers did against what the log holds: each accepted broadcast logged once,
    under the id its 202 named, and no broadcast logged that was never sent; each booking's
    statuses logged once each, in the order written; each payment once. (A change the watcher
    never read, or read twice, shows here: no client would expect it otherwise.)"""
    problems = []
    by_n: dict[int, list[str]] = {}
    statuses: dict[str, list[str]] = {}
    payments: dict[str, int] = {}
    for event in log:
        payload = event.payload
        if event.name == "notification":
            by_n.setdefault(payload.get("n"), []).append(event_id(event.sequence))
        elif event.name == "reservation_update":
            statuses.setdefault(payload.get("reservationId"), []).append(payload.get("status"))
        elif event.name == "payment_update":
            booking = payload.get("reservationId")
            payments[booking] = payments.get(booking, 0) + 1
    for n, ids in sorted(by_n.items(), key=lambda item: str(item[0])):
        if len(ids) > 1:
            problems.append(f"broadcast {n} logged {len(ids)} times: {ids}")
        if not isinstance(n, int) or not 1 <= n <= broadcasts.sent:
            problems.append(f"a broadcast never sent is logged: {n} {ids}")
    for n, accepted_id in sorted(broadcasts.accepted.items()):
        if accepted_id not in by_n.get(n, []):
            problems.append(f"broadcast {n} was accepted as {accepted_id}, logged as {by_n.get(n)}")
    for booking, written in sorted(bookings.statuses.items()):
        if statuses.get(booking, []) != written:
            problems.append(f"booking {booking}: wrote {written}, logged {statuses.get(booking)}")
    for booking in sorted(set(statuses) - set(bookings.statuses)):
        problems.append(f"booking {booking} never written, logged {statuses[booking]}")
    for booking in sorted(set(payments) | set(bookings.payments)):
        if payments.get(booking, 0) != bookings.payments.get(booking, 0):
            problems.append(
                f"booking {booking}: {bookings.payments.get(booking, 0)} payment(s) written, "
                f"{payments.get(booking, 0)} logged"
            )
    return problems


def resyncs_logged(log: list[StoredEvent]) -> int:
    """`resync`s in the log: none is due (nothing is lost from this log, no change stream
    history either), and one never replayed would reach only the clients connected then."""
    return sum(1 for e in log if tuple(e.rooms) == (EVERYONE,))
