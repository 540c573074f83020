"""The change consumer: reads a store's change stream, resumes where it stopped, retries.

Each store supplies only the stream (`Store.watch`); resuming, saving tokens, backoff and the
handling of lost history are the gateway's policy, here, shared by both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from realtime.backoff import Backoff
from storage.base import (
    Change,
    ChangeHistoryLost,
    ChangeStream,
    Checkpoint,
    Fence,
    LeaseLost,
    Store,
    StoreError,
)

logger = logging.getLogger(__name__)

BATCH_MAX = 100  # changes already read that are handed over together
# While idle, a stream's token still moves (with the cluster's clock); saving it keeps a quiet
# feed's place from aging out of the history, and doing so at most this often keeps an idle
# gateway from writing to its store every poll.
IDLE_SAVE_INTERVAL_S = 10.0
# a watched collection dropped or renamed (away or onto): its history ends there
COLLECTION_GONE = {"drop": "collection_dropped", "rename": "collection_renamed"}
# a change the store can never read (storage/mongo/stream.py, UNREADABLE: text that is not UTF-8,
# an event over 16 MB the server would not split): skipped, its collection's rooms resync (all
# the feed's when the store cannot say which), with the reason clients already know
UNREADABLE = "unreadable"


class ChangeFeed:
    """Feeds every change of `collections` to `handle`, exactly once across restarts.

    The token is saved after each handled change and whenever the stream advances while idle.
    `handle(changes, checkpoint)` gets the changes the stream already holds (up to
    `BATCH_MAX`, one where the driver does not say) and returns True when it saved the
    checkpoint itself (with the changes' events, in one transaction); otherwise the feed saves
    it. `handle` may raise
    `StoreError` (its own store is down): the change is then retried from the saved token after
    a backoff; any other exception is logged and the change skipped.

    `on_history_lost(reason, collections)` is told when changes of those collections can no
    longer be delivered: the token aged out or is unusable, the stream was invalidated, a
    collection was dropped or renamed, or a change cannot be read. It is told before the token
    moves past what was lost, so that a failure to tell (a `StoreError`, `LeaseLost`) leaves
    the loss to be found, and told, again.
    """

    def __init__(
        self,
        store: Store,
        collections: Sequence[str],
        handle: Callable[[list[Change], Checkpoint], Awaitable[bool]],
        on_history_lost: Callable[[str, Sequence[str]], Awaitable[None]],
        name: str = "changes",
        backoff: Backoff | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        idle_save_interval_s: float = IDLE_SAVE_INTERVAL_S,
    ):
        if not collections:
            raise ValueError("a change feed needs at least one collection")
        self._store = store
        self._collections = tuple(collections)
        self._handle = handle
        self._on_history_lost = on_history_lost
        self.name = name
        self._backoff = backoff or Backoff()
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._stream: ChangeStream | None = None
        self._saved_token = None
        self._lost: ChangeHistoryLost | None = None  # found while reading, not told yet
        self.fence: Fence | None = None  # the watcher lease this feed runs under, if any
        self.lease_lost = False
        self._idle_save_interval_s = idle_save_interval_s
        self._idle_saved_at = float("-inf")
        self.running = False
        self.lag_s: dict[str, float] = {}
        self.last_change_at: dict[str, dt.datetime] = {}
        self.changes_handled = 0
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._interruptible = False  # waiting for a change or a retry: safe to cancel

    async def open(self) -> None:
        """Open the stream and persist a starting point, so that changes written from now on
        are seen even by a first run (which has no saved token yet)."""
        self._saved_token = await self._store.load_resume_token(self.name)
        try:
            self._stream = await self._store.watch(self._collections, self._saved_token)
        except ChangeHistoryLost as exc:
            await self._history_lost(exc)
            self._stream = await self._store.watch(self._collections, None)
        await self._save(self._stream.resume_token)

    def start(self, fence: Fence | None = None) -> None:
        """Consume in a task of the feed's own, until `stop()` or until the lease behind
        `fence` is lost (every write of the feed carries the fence); a crash is logged."""
        self.fence = fence
        self.lease_lost = False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"feed:{self.name}")
        self._task.add_done_callback(_log_crash)

    async def run(self) -> None:
        """Consume until cancelled or stopped."""
        self._task = asyncio.current_task()
        self.running = True
        try:
            while not self._stopping:
                try:
                    if self._lost is not None:  # from now on, once clients are told
                        await self._close_stream()
                        await self._history_lost(self._lost)
                    if self._stream is None:
                        await self.open()
                    await self._consume(self._stream)
                except asyncio.CancelledError:
                    raise
                except LeaseLost as exc:
                    logger.warning(
                        "watcher lease lost: stopping", extra={"feed": self.name, "error": str(exc)}
                    )
                    self.lease_lost = True
                    break
                except ChangeHistoryLost as exc:
                    await self._close_stream()
                    self._lost = exc  # told at the top of the loop, retried like the rest
                except StoreError as exc:
                    await self._close_stream()
                    delay_s = self._backoff.next_delay()
                    logger.warning(
                        "change stream interrupted",
                        extra={
                            "feed": self.name,
                            "error": str(exc),
                            "retry_in_s": round(delay_s, 3),
                        },
                    )
                    self._interruptible = True
                    try:
                        await asyncio.sleep(delay_s)
                    finally:
                        self._interruptible = False
        finally:
            self.running = False
            if self._stopping and not self.lease_lost and self._stream is not None:
                with contextlib.suppress(StoreError):
                    await self._save(self._stream.resume_token)
            await self._close_stream()

    async def stop(self) -> None:
        """Stop at a change boundary: a change being handled is finished (its events logged
        and emitted, its token saved); a wait for the next change is cut short."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        if self._interruptible:
            task.cancel()
        # waited for without passing a cancellation of the caller on to the feed's task: a
        # change in hand is finished even when the one stopping is itself being cancelled
        await asyncio.wait({task})

    async def _consume(self, stream: ChangeStream) -> None:
        while not self._stopping:
            self._interruptible = True
            try:
                event = await stream.try_next()
            finally:
                self._interruptible = False
            if event is None:
                await self._save_while_idle(stream.resume_token)
                continue
            events = [event]
            while len(events) < BATCH_MAX and stream.buffered():
                events.append(await stream.try_next())
            changes: list[Change] = []
            for change in map(Change.from_event, events):
                if change.operation in ("invalidate", "dropDatabase"):
                    if changes:
                        await self._handle_changes(changes, changes[-1].token)
                    await self._invalidated(change)
                    return
                if change.operation in COLLECTION_GONE or change.operation == UNREADABLE:
                    if changes:
                        await self._handle_changes(changes, changes[-1].token)
                        changes = []
                    if change.operation == UNREADABLE:
                        await self._unreadable(change)
                    else:
                        await self._collection_gone(change)
                    continue
                changes.append(change)
            if not changes:
                continue
            await self._handle_changes(changes, stream.resume_token or changes[-1].token)

    async def _handle_changes(self, changes: list[Change], token) -> None:
        for change in changes:
            self._measure(change)
        checkpoint = Checkpoint(self.name, token, self.fence)
        saved = False
        try:
            saved = await self._handle(changes, checkpoint)
        except (asyncio.CancelledError, StoreError):  # LeaseLost among them
            raise
        except Exception:
            logger.exception(
                "change skipped",
                extra={
                    "feed": self.name,
                    "changes": len(changes),
                    "document_id": str(changes[0].document_id),
                },
            )
        if saved:
            self._saved_token = checkpoint.token
        else:
            await self._save(checkpoint.token)
        self._backoff.reset()
        self.changes_handled += len(changes)

    async def _invalidated(self, change: Change) -> None:
        logger.error(
            "change stream invalidated", extra={"feed": self.name, "operation": change.operation}
        )
        await self._on_history_lost("change_stream_invalidated", self._collections)
        await self._close_stream()
        # resume after the invalidate event: the stream starts again from there
        await self._save(change.token)
        self._stream = await self._store.watch(self._collections, change.token)

    async def _history_lost(self, exc: ChangeHistoryLost) -> None:
        """Clients told first, then the dead token forgotten: a failure to tell leaves the
        token, so that the loss is found again (at the next open) and told then."""
        logger.error("change history lost", extra={"feed": self.name, "error": str(exc)})
        await self._on_history_lost("change_history_lost", self._collections)
        await self._save(None)
        self._lost = None

    async def _unreadable(self, change: Change) -> None:
        """A change the store cannot read: skipped, and what clients hold of its collection
        is history."""
        known = change.collection in self._collections
        which = [change.collection] if known else list(self._collections)
        logger.error(
            "unreadable change skipped",
            extra={"feed": self.name, "collections": which, "token": str(change.token)[:120]},
        )
        await self._on_history_lost("change_history_lost", which)
        await self._save(change.token)

    async def _collection_gone(self, change: Change) -> None:
        """A watched collection was dropped or renamed: the stream goes on (it watches the
        database), but what clients hold of that collection is history."""
        gone = [
            name for name in (change.collection, change.renamed_to) if name in self._collections
        ]
        logger.error(
            "watched collection gone",
            extra={"feed": self.name, "operation": change.operation, "collections": gone},
        )
        await self._on_history_lost(COLLECTION_GONE[change.operation], gone)
        await self._save(change.token)

    def _measure(self, change: Change) -> None:
        if change.collection is None or change.wall_time is None:
            return
        self.lag_s[change.collection] = max(0.0, (self._clock() - change.wall_time).total_seconds())
        self.last_change_at[change.collection] = change.wall_time

    async def _save_while_idle(self, token) -> None:
        now = time.monotonic()
        if now - self._idle_saved_at >= self._idle_save_interval_s:
            await self._save(token)
            self._idle_saved_at = now

    async def _save(self, token) -> None:
        if token != self._saved_token:
            await self._store.save_resume_token(self.name, token, self.fence)
            self._saved_token = token

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:
                logger.debug("change stream close failed", exc_info=True)


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("change feed crashed", exc_info=task.exception())
