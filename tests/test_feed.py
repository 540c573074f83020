"""The change consumer's loop and error paths, fed finite scripted streams (no sleeps)."""

from __future__ import annotations

import datetime as dt

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from realtime.backoff import Backoff
from realtime.changes.feed import UNREADABLE, ChangeFeed
from storage.base import ChangeHistoryLost, ChangeStream, LeaseLost, StoreError
from storage.mongo import translate_error

NOW = dt.datetime(2026, 11, 21, 10, 0, 0, tzinfo=dt.UTC)


class ScriptDone(Exception):
    """The script ran out: ends the feed's loop."""


def event(n: int, operation: str = "insert", seconds_ago: float = 0.0) -> dict:
    return {
        "_id": {"_data": f"{n:04d}"},
        "operationType": operation,
        "ns": {"db": "d", "coll": "bookings"},
        "documentKey": {"_id": f"b{n}"},
        "fullDocument": {"_id": f"b{n}"},
        "wallTime": NOW - dt.timedelta(seconds=seconds_ago),
    }


class ScriptedStream(ChangeStream):
    def __init__(self, script: list, start_token, batches: bool = False):
        self._script = script
        self._token = start_token
        self._batches = batches  # say what is buffered: the changes up to the next idle step

    def buffered(self) -> int:
        if not self._batches:
            return 0
        count = 0
        for step in self._script:
            if not isinstance(step, dict):
                break
            count += 1
        return count

    @property
    def resume_token(self):
        return self._token

    async def try_next(self):
        if not self._script:
            raise ScriptDone()
        step = self._script.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, tuple):  # ("idle", token): nothing new, the token moves on
            self._token = step[1]
            return None
        self._token = step["_id"]
        return step


class ScriptedStore:
    """Just what the feed uses of a store: one scripted stream per `watch`."""

    def __init__(self, *scripts: list, watch_errors: list | None = None, batches: bool = False):
        self._batches = batches
        self._scripts = list(scripts)
        self._watch_errors = watch_errors or []
        self.watched_from: list = []
        self.tokens: dict = {}
        self.saved: list = []

    async def watch(self, collections, resume_after):
        self.watched_from.append(resume_after)
        if self._watch_errors:
            raise self._watch_errors.pop(0)
        return ScriptedStream(
            self._scripts.pop(0) if self._scripts else [],
            resume_after or {"_data": "start"},
            self._batches,
        )

    async def load_resume_token(self, name):
        return self.tokens.get(name)

    async def save_resume_token(self, name, token, fence=None):
        self.tokens[name] = token
        self.saved.append(token)


def feed_for(
    store, handled: list, resyncs: list, fail_on=None, idle_save_interval_s: float = 0.0
) -> ChangeFeed:
    async def handle(changes, checkpoint):
        for change in changes:
            if fail_on and change.document_id in fail_on:
                raise fail_on.pop(change.document_id)
        handled.extend(change.document_id for change in changes)
        return False  # the feed saves the token

    async def resync(reason, collections):
        resyncs.append(reason)

    return ChangeFeed(
        store,
        ["bookings", "payments"],
        handle,
        resync,
        backoff=Backoff(0, 0),
        clock=lambda: NOW,
        idle_save_interval_s=idle_save_interval_s,
    )


async def test_changes_are_handled_in_order_and_every_token_is_saved():
    store = ScriptedStore([event(1), ("idle", {"_data": "0005"}), event(6, seconds_ago=2.5)])
    handled, resyncs = [], []
    feed = feed_for(store, handled, resyncs)
    with pytest.raises(ScriptDone):
        await feed.run()
    assert handled == ["b1", "b6"]
    assert store.saved == [
        {"_data": "start"},
        {"_data": "0001"},
        {"_data": "0005"},
        {"_data": "0006"},
    ]
    assert feed.lag_s == {"bookings": 2.5} and resyncs == []


async def test_a_restart_resumes_from_the_saved_token():
    store = ScriptedStore([event(1)], [event(2)])
    with pytest.raises(ScriptDone):
        await feed_for(store, [], []).run()
    handled = []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, []).run()
    assert store.watched_from == [None, {"_data": "0001"}]
    assert handled == ["b2"]


async def test_a_change_the_handler_cannot_map_is_skipped_and_its_token_saved(caplog):
    store = ScriptedStore([event(1), event(2)])
    handled = []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, [], fail_on={"b1": KeyError("shopId")}).run()
    assert handled == ["b2"]
    assert {"_data": "0001"} in store.saved
    assert "change skipped" in caplog.text


async def test_a_store_error_in_the_handler_retries_the_change_from_the_saved_token():
    store = ScriptedStore([event(1), event(2)], [event(2), event(3)])
    handled = []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, [], fail_on={"b2": StoreError("event log down")}).run()
    assert handled == ["b1", "b2", "b3"]
    assert store.watched_from == [None, {"_data": "0001"}]


async def test_a_transient_stream_error_reopens_from_the_saved_token(caplog):
    store = ScriptedStore(
        [event(1), translate_error(AutoReconnect("primary stepped down"))], [event(2)]
    )
    handled = []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, []).run()
    assert handled == ["b1", "b2"]
    assert store.watched_from == [None, {"_data": "0001"}]
    assert "change stream interrupted" in caplog.text


async def test_lost_history_resyncs_and_reopens_from_now():
    lost = translate_error(OperationFailure("resume point no longer in the oplog", code=286))
    store = ScriptedStore([event(1), lost], [event(9)])
    handled, resyncs = [], []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, resyncs).run()
    assert resyncs == ["change_history_lost"]
    assert store.watched_from == [None, None]  # from now, never the dead token again
    assert handled == ["b1", "b9"]


async def test_a_dead_token_at_start_resyncs_and_opens_from_now():
    store = ScriptedStore([event(4)], watch_errors=[ChangeHistoryLost("token too old")])
    store.tokens["changes"] = {"_data": "dead"}
    handled, resyncs = [], []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, resyncs).run()
    assert store.watched_from == [{"_data": "dead"}, None]
    assert resyncs == ["change_history_lost"] and handled == ["b4"]


async def test_an_invalidate_event_resyncs_and_starts_after_it():
    invalidate = {"_id": {"_data": "0002"}, "operationType": "invalidate"}
    store = ScriptedStore([event(1), invalidate], [event(3)])
    handled, resyncs = [], []
    with pytest.raises(ScriptDone):
        await feed_for(store, handled, resyncs).run()
    assert resyncs == ["change_stream_invalidated"]
    assert store.watched_from == [None, {"_data": "0002"}]
    assert handled == ["b1", "b3"]


async def test_buffered_changes_are_handed_over_together_and_checkpointed_once():
    store = ScriptedStore(
        [event(1), event(2), event(3), ("idle", {"_data": "0003"}), event(4)], batches=True
    )
    batches = []

    async def handle(changes, checkpoint):
        batches.append(([c.document_id for c in changes], checkpoint.token))
        return False

    async def resync(reason, collections):
        pass

    feed = ChangeFeed(store, ["bookings"], handle, resync, backoff=Backoff(0, 0))
    with pytest.raises(ScriptDone):
        await feed.run()
    assert batches == [(["b1", "b2", "b3"], {"_data": "0003"}), (["b4"], {"_data": "0004"})]
    assert feed.changes_handled == 4


def collection_event(n: int, operation: str, coll: str, to: str | None = None) -> dict:
    found = {"_id": {"_data": f"{n:04d}"}, "operationType": operation, "ns": {"coll": coll}}
    if to is not None:
        found["to"] = {"coll": to}
    return found


@pytest.mark.parametrize(
    "gone, reason, collections",
    [
        (collection_event(2, "drop", "bookings"), "collection_dropped", ["bookings"]),
        (collection_event(2, "rename", "payments", "old"), "collection_renamed", ["payments"]),
        (collection_event(2, "rename", "staging", "bookings"), "collection_renamed", ["bookings"]),
    ],
)
async def test_a_watched_collection_dropped_or_renamed_resyncs_its_rooms_and_goes_on(
    gone, reason, collections
):
    # a database-level stream is not invalidated by a drop or rename: it goes on after it
    store = ScriptedStore([event(1), gone, event(3)], batches=True)
    handled, told = [], []

    async def handle(changes, checkpoint):
        handled.extend(change.document_id for change in changes)
        return False

    async def resync(why, which):
        told.append((why, list(which), list(handled)))

    feed = ChangeFeed(store, ["bookings", "payments"], handle, resync, backoff=Backoff(0, 0))
    with pytest.raises(ScriptDone):
        await feed.run()
    assert told == [(reason, collections, ["b1"])]  # after what came before it
    assert handled == ["b1", "b3"]
    assert store.watched_from == [None]  # the same stream throughout
    assert {"_data": "0002"} in store.saved


async def test_an_idle_stream_saves_its_token_at_most_once_per_interval():
    idle = [("idle", {"_data": f"{n:04d}"}) for n in range(1, 6)]
    throttled = ScriptedStore(list(idle))
    with pytest.raises(ScriptDone):
        await feed_for(throttled, [], [], idle_save_interval_s=3600).run()
    # at open, then the first idle token; not the four after it within the hour
    assert throttled.saved == [{"_data": "start"}, {"_data": "0001"}]

    every_time = ScriptedStore(list(idle))
    with pytest.raises(ScriptDone):
        await feed_for(every_time, [], [], idle_save_interval_s=0).run()
    assert every_time.saved[-1] == {"_data": "0005"} and len(every_time.saved) == 6


async def test_a_handled_change_saves_its_token_whatever_the_idle_interval():
    store = ScriptedStore([("idle", {"_data": "0001"}), event(2), ("idle", {"_data": "0003"})])
    with pytest.raises(ScriptDone):
        await feed_for(store, [], [], idle_save_interval_s=3600).run()
    assert store.saved == [{"_data": "start"}, {"_data": "0001"}, {"_data": "0002"}]


def unreadable(n: int, coll: str | None = "bookings") -> dict:
    """What a store hands on for a change it cannot read (storage/mongo/stream.py)."""
    found = {"_id": {"_data": f"{n:04d}"}, "operationType": UNREADABLE}
    if coll is not None:
        found["ns"] = {"db": "d", "coll": coll}
    return found


@pytest.mark.parametrize(
    "skipped, rooms",
    [(unreadable(2), ["bookings"]), (unreadable(2, None), ["bookings", "payments"])],
)
async def test_an_unreadable_change_is_skipped_with_a_resync_of_its_collection(skipped, rooms):
    store = ScriptedStore([event(1), skipped, event(3)], batches=True)
    handled, told = [], []

    async def handle(changes, checkpoint):
        handled.extend(change.document_id for change in changes)
        return False

    async def resync(why, which):
        told.append((why, list(which), list(handled)))

    feed = ChangeFeed(store, ["bookings", "payments"], handle, resync, backoff=Backoff(0, 0))
    with pytest.raises(ScriptDone):
        await feed.run()
    assert told == [("change_history_lost", rooms, ["b1"])]  # after what came before it
    assert handled == ["b1", "b3"]
    assert store.watched_from == [None]  # not a retry: the stream goes on past it
    assert store.saved.index({"_data": "0002"}) < store.saved.index({"_data": "0003"})


async def test_a_resync_that_cannot_be_told_is_told_again_before_the_token_is_forgotten():
    lost = translate_error(OperationFailure("resume point no longer in the oplog", code=286))
    store = ScriptedStore([event(1), lost], [event(9)])
    handled, told, attempts = [], [], []

    async def handle(changes, checkpoint):
        handled.extend(change.document_id for change in changes)
        return False

    async def resync(why, which):
        attempts.append(store.tokens.get("changes"))
        if len(attempts) == 1:
            raise StoreError("event log down")  # the resync is itself an event to log
        told.append(why)

    feed = ChangeFeed(store, ["bookings"], handle, resync, backoff=Backoff(0, 0))
    with pytest.raises(ScriptDone):
        await feed.run()
    assert told == ["change_history_lost"]
    # told while the old token was still saved, both times; forgotten only after
    assert attempts == [{"_data": "0001"}, {"_data": "0001"}]
    assert store.saved.index(None) > store.saved.index({"_data": "0001"})
    assert store.watched_from == [None, None] and handled == ["b1", "b9"]


async def test_a_resync_is_told_before_a_lost_lease_stops_the_feed():
    class LosingStore(ScriptedStore):
        async def save_resume_token(self, name, token, fence=None):
            if token is None:
                raise LeaseLost("another instance took the watcher lease")
            await super().save_resume_token(name, token, fence)

    store = LosingStore([event(4)], watch_errors=[ChangeHistoryLost("token too old")])
    store.tokens["changes"] = {"_data": "dead"}
    resyncs = []
    feed = feed_for(store, [], resyncs)
    await feed.run()  # ends: the lease is lost
    assert feed.lease_lost
    assert resyncs == ["change_history_lost"]  # told before; the next holder finds it again
    assert store.tokens["changes"] == {"_data": "dead"}


async def test_a_dead_token_at_start_is_kept_until_the_resync_is_told():
    store = ScriptedStore(
        [event(4)], watch_errors=[ChangeHistoryLost("token too old"), ChangeHistoryLost("again")]
    )
    store.tokens["changes"] = {"_data": "dead"}
    told, attempts = [], []

    async def resync(why, which):
        attempts.append(store.tokens.get("changes"))
        if len(attempts) == 1:
            raise StoreError("event log down")
        told.append(why)

    async def handle(changes, checkpoint):
        return False

    feed = ChangeFeed(store, ["bookings"], handle, resync, backoff=Backoff(0, 0))
    with pytest.raises(ScriptDone):
        await feed.run()
    assert attempts == [{"_data": "dead"}, {"_data": "dead"}] and told == ["change_history_lost"]
    assert store.watched_from == [{"_data": "dead"}, {"_data": "dead"}, None]
