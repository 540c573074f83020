"""The chaos soak (`python -m chaos`): its check catches each kind of violation, and a short
soak, with every kind of fault on a fixed seed, finds none."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chaos.check import judge, producers_problems, rooms_by_id
from chaos.clients import History
from chaos.cluster import missing_tools
from realtime.wire import event_id
from storage.base import StoredEvent
from tests.clients import ROOT

LOG = [
    StoredEvent(1, 1_000, "notification", {}, ("shop-s1",)),
    StoredEvent(2, 1_000, "notification", {}, ("shop-s1", "user-st1")),
    StoredEvent(3, 1_000, "notification", {}, ("shop-s2",)),
    StoredEvent(4, 1_000, "notification", {}, ("user-st1",)),
    StoredEvent(5, 1_000, "resync", {}, ("*",)),
]
ROOMS = rooms_by_id(LOG)
SOAK = [sys.executable, "-m", "chaos", "--minutes", "0.75", "--seed", "7", "--fault-every", "2.5"]


def staff(delivered: list[int], duplicates: tuple = ()) -> History:
    history = History("py0", "py-websocket direct", "st1", ["user-st1", "shop-s1"])
    history.delivered = [(event_id(n), 2_000.0, False) for n in delivered]
    history.duplicates = [(event_id(n), phase) for n, phase in duplicates]
    return history


def test_a_client_that_saw_every_event_of_its_rooms_once_in_order_passes():
    verdict = judge(staff([1, 2, 4]), ROOMS)
    assert not verdict.violated and verdict.expected == 3


@pytest.mark.parametrize(
    ("history", "violation"),
    [
        (staff([1, 4]), "missing"),
        (staff([1, 2, 3, 4]), "extra"),  # an event of a room it is not in
        (staff([1, 2, 4, 4]), "duplicates"),
        (staff([1, 4, 2]), "reorders"),
        (staff([1, 2, 4], duplicates=[(1, "catchup")]), "duplicates"),  # one room: unexplained
        (staff([1, 2, 4], duplicates=[(2, "delivered")]), "duplicates"),  # after its delivery
    ],
    ids=["missing", "outside-its-rooms", "delivered-twice", "reordered", "replayed-twice", "stale"],
)
def test_the_check_catches_each_violation(history, violation):
    verdict = judge(history, ROOMS)
    assert verdict.violated and getattr(verdict, violation)


def test_a_gap_or_a_resync_is_a_violation_when_the_log_lost_nothing():
    history = staff([1, 2, 4])
    history.refetches.append({"resync": {"reason": "history_lost"}})
    assert judge(history, ROOMS).violated


def test_an_event_of_two_rooms_replayed_by_both_rejoins_is_the_protocols_own():
    verdict = judge(staff([1, 2, 4], duplicates=[(2, "catchup")]), ROOMS)
    assert not verdict.violated and verdict.explained_duplicates == 1


class Produced:
    """What the producers say they did (the shape `producers_problems` reads)."""

    def __init__(self, sent: int, accepted: dict[int, str], statuses: dict, payments: dict):
        self.sent, self.accepted, self.statuses, self.payments = sent, accepted, statuses, payments


def booking(sequence: int, booking_id: str, status: str) -> StoredEvent:
    payload = {"reservationId": booking_id, "status": status}
    return StoredEvent(
        sequence, 1_000, "reservation_update", payload, (f"reservation-{booking_id}",)
    )


def broadcast(sequence: int, n: int) -> StoredEvent:
    return StoredEvent(sequence, 1_000, "notification", {"n": n}, ("shop-s1",))


PRODUCED = Produced(2, {1: event_id(1), 2: event_id(2)}, {"b1": ["pending", "confirmed"]}, {})


def test_what_the_producers_did_is_what_the_log_holds():
    log = [
        broadcast(1, 1),
        broadcast(2, 2),
        booking(3, "b1", "pending"),
        booking(4, "b1", "confirmed"),
    ]
    assert producers_problems(log, PRODUCED, PRODUCED) == []


B1, B2 = broadcast(1, 1), broadcast(2, 2)
PENDING, CONFIRMED = booking(3, "b1", "pending"), booking(4, "b1", "confirmed")


@pytest.mark.parametrize(
    "log",
    [
        [B1, PENDING, CONFIRMED],
        [B1, B2, broadcast(5, 2), PENDING, CONFIRMED],
        [B1, B2, PENDING],
        [B1, B2, PENDING, CONFIRMED, booking(5, "b1", "confirmed")],
        [B1, B2, broadcast(6, 3), PENDING, CONFIRMED],
    ],
    ids=["accepted-not-logged", "logged-twice", "change-lost", "change-twice", "never-sent"],
)
def test_a_change_or_broadcast_lost_or_logged_twice_is_caught(log):
    assert producers_problems(log, PRODUCED, PRODUCED)


@pytest.mark.timeout(600)
@pytest.mark.skipif(bool(missing_tools()), reason=f"the soak needs {', '.join(missing_tools())}")
def test_a_short_soak_with_every_kind_of_fault_loses_nothing(tmp_path):
    report_path = tmp_path / "report.json"
    run = subprocess.run(
        [*SOAK, "--json", str(report_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["events published"] > 100
    assert report["deliveries seen"] == report["deliveries expected"] > 0
    for violation in ("duplicates", "missing", "reorders", "outside its rooms", "gaps and resyncs"):
        assert report[violation] == 0, violation
    assert report["resyncs logged"] == 0
    assert report["producers vs the log"] == []
    assert report["caught up after the faults, s"] is not None
    assert sum(report["faults injected"].values()) >= 8
    assert report["reconnections"] > 0
