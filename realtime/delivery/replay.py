"""What a replay answers (`Replay`) and how its events are sent: the parts of
`Emitter.enter_with_replay` that need none of the emitter's state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from realtime.engine import Engine
from realtime.wire import event_id, wire_payload
from storage.base import StoredEvent


@dataclasses.dataclass(frozen=True)
class Replay:
    replayed: int  # events sent before the socket entered the room
    last_event_id: str | None  # the room's newest event id when it entered
    # events after the client's id are gone (retention), were never in this log (an id ahead
    # of it: the store was replaced), or are too many to replay: the client must refetch
    gap: bool
    # the socket has been sent every event of the room after this sequence (replayed, then
    # live; None: unknown): a later join of the room with a cursor replays no further
    sent_from: int | None = None


def send_replayed(
    engine: Engine,
    sid: str,
    batch: list[StoredEvent],
    cursor: int,
    replayed: int,
    visible: Callable[[StoredEvent], bool] | None,
) -> tuple[int, int]:
    """Send the socket a slice of its replay (the events `visible` allows); returns the
    cursor after the slice and how many were sent so far."""
    for event in batch:
        if visible is None or visible(event):
            engine.send(sid, event.name, wire_payload(event))
            replayed += 1
    if batch:
        cursor = batch[-1].sequence
    return cursor, replayed


def event_id_or_none(sequence: int | None) -> str | None:
    return event_id(sequence) if sequence is not None else None
