"""SQLite plumbing: one connection used from one thread, whole transactions in one hop off
the event loop, retries while another process holds the write lock, and background upkeep
(WAL checkpoints, pruning) on a thread and connection of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from storage.base import StoreError

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
# SQLite's own busy handler sleeps in steps of 1 to 100 ms while another process holds the
# write lock; retrying ourselves in much shorter steps keeps the change -> client latency low
BUSY_RETRY_FIRST_S = 0.0002
BUSY_RETRY_MAX_S = 0.005
CHECKPOINT_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 60.0

Result = TypeVar("Result")


def dumps(value: Any) -> str:
    """A value as the JSON text the store's columns hold (dates and ObjectIds as strings)."""
    return json.dumps(value, separators=(",", ":"), default=str)


class SqliteConnection:
    """One SQLite connection, used from one thread: calls never interleave, and each call
    runs a whole transaction in a single hop off the event loop."""

    def __init__(self, path: str):
        self.path = path
        self._db: sqlite3.Connection | None = None
        # why the last call failed, when SQLite itself refused (disk full, a read-only or
        # unreadable file); cleared by the next call that writes: `SqliteStore.ping` then
        # tries a write rather than a read, which the file may still allow
        self.failure: str | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._upkeep: _Upkeep | None = None
        self._watching: sqlite3.Connection | None = None  # `commits`'s own, on the loop

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Open the file (WAL mode) and run `setup` (create what is missing) on it."""
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")

        def connect() -> None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
            setup(db)

        try:
            await self.run(connect)
        except StoreError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """`function(*args)` on the connection's thread, again while the file is busy;
        SQLite's errors come back as `StoreError`."""
        if self._thread is None:
            raise StoreError("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._call, function, *args
            )
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                self.failure = str(exc)  # the file or its disk, not the statement
            raise StoreError(f"sqlite: {exc}") from exc

    def _call(self, function: Callable[..., Result], *args: Any) -> Result:
        """On the connection's thread: `function`, and whether it wrote (a write that got
        through clears `failure`)."""
        changes = _total_changes(self._db)
        result = retry_while_busy(function, *args)
        if _total_changes(self._db) != changes:
            self.failure = None
        return result

    def commits(self) -> int | None:
        """A number that changes whenever a transaction is committed to the file, by this
        process or another (SQLite's `data_version`, read through a connection that never
        writes); None when it cannot be read. Read on the event loop: it takes microseconds
        (a look at the WAL index in shared memory, no I/O)."""
        if self._db is None or self.path == ":memory:" or "mode=memory" in self.path:
            return None  # (another connection to an in-memory database sees another one)
        try:
            if self._watching is None:
                self._watching = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=0
                )
            return self._watching.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None  # (busy, say: the caller reads, as without it)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    async def start_upkeep(
        self,
        prune: Callable[[sqlite3.Connection], None],
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        """For a long-running process: write the WAL back to the database file from a thread
        of its own, instead of inside a commit every ~1,000 pages (the fsync it costs would
        stall the pipeline), and `prune` the logs now and then. Stopped by `close()`."""
        await self.run(lambda: self.db.execute("PRAGMA wal_autocheckpoint = 0"))
        self._upkeep = _Upkeep(self.path, prune, prune_interval_s)
        self._upkeep.start()

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.close()
            self._watching = None
        if self._upkeep is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._upkeep.stop)
            self._upkeep = None
        if self._thread is None:
            return
        if self._db is not None:
            await self.run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)
        self._thread = None


def _total_changes(db: sqlite3.Connection | None) -> int | None:
    """Rows written through `db` since it was opened (None: not open, or closed)."""
    try:
        return db.total_changes if db is not None else None
    except sqlite3.ProgrammingError:  # closed
        return None


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def retry_while_busy(function: Callable[..., Result], *args: Any) -> Result:
    """Run a transactional function, again while another process holds the lock."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = BUSY_RETRY_FIRST_S
    while True:
        try:
            return function(*args)
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(BUSY_RETRY_MAX_S, delay * 2)


class _Upkeep(threading.Thread):
    """WAL checkpoints every second, pruning now and then, on a connection of its own."""

    def __init__(
        self, path: str, prune: Callable[[sqlite3.Connection], None], prune_interval_s: float
    ):
        super().__init__(name="sqlite-upkeep", daemon=True)
        self._path = path
        self._prune = prune
        self._prune_interval_s = prune_interval_s
        self._stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0)
        next_prune = time.monotonic() + self._prune_interval_s
        try:
            while not self._stopping.wait(min(CHECKPOINT_INTERVAL_S, self._prune_interval_s)):
                self._attempt("wal checkpoint", db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self._prune_interval_s
                    self._attempt("prune", retry_while_busy, self._prune, db)
            self._attempt("wal checkpoint", db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    @staticmethod
    def _attempt(what: str, function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except sqlite3.Error:
            logger.warning("sqlite upkeep failed", extra={"task": what}, exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
