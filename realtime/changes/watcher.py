"""One change watcher across all instances: the instance holding the watcher lease runs the
change feed; the others stand by and take over when the lease expires.

The lease (holder, expiry, fencing number) lives in the store. It is renewed every third of its
time; the feed's every write carries the fence, so a holder that was paused or cut off past its
lease logs nothing once another instance took over, even before it notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from realtime.changes.feed import ChangeFeed
from storage.base import Fence, Lease, Store, StoreError

logger = logging.getLogger(__name__)

WATCHER_LEASE = "watcher"


class Watcher:
    def __init__(self, store: Store, feed: ChangeFeed, instance_id: str, lease_ttl_s: float):
        self._store = store
        self._feed = feed
        self.instance_id = instance_id
        self._ttl_s = lease_ttl_s
        self.lease: Lease | None = None  # as last read
        self.takeovers = 0  # times this instance took the lease from another or from none
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def held_here(self) -> bool:
        return self._feed.running and self.lease is not None and self._holds(self.lease)

    @property
    def held_elsewhere(self) -> bool:
        """Held by another instance that renewed it in time."""
        lease = self.lease
        return (
            lease is not None
            and lease.holder != self.instance_id
            and lease.expires_ms > self._store.now_ms()
        )

    def _dead_holder(self) -> str | None:
        """The holder last seen, if it is a process of this host that died (a restart after a
        crash takes over at once rather than after the lease time)."""
        lease = self.lease
        if lease is None or lease.holder == self.instance_id:
            return None
        return lease.holder if dead_on_this_host(lease.holder) else None

    def _holds(self, lease: Lease) -> bool:
        return lease.held_by(self.instance_id, self._store.now_ms())

    async def start(self) -> None:
        """Try for the lease once now (so that, held here, the stream is open before the
        server answers: a change written after that is never missed), then keep trying."""
        with contextlib.suppress(StoreError):  # who held it: a dead self need not be waited out
            self.lease = await self._store.read_lease(WATCHER_LEASE)
        await self._round()
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="watcher:lease")

    async def stop(self) -> None:
        """Stop watching at a change boundary and let the lease go, so that another instance
        takes over at once rather than after the lease time."""
        self._stopping = True  # no round starts the feed again from here on
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        await self._feed.stop()
        if self.lease is not None and self.lease.holder == self.instance_id:
            with contextlib.suppress(StoreError):
                await self._store.release_lease(WATCHER_LEASE, self.instance_id)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._round()
            except Exception:
                logger.exception("watcher lease round failed")

    async def _round(self) -> None:
        if self._stopping:
            return
        try:
            lease = await self._store.acquire_lease(
                WATCHER_LEASE, self.instance_id, self._ttl_s, replacing=self._dead_holder()
            )
        except StoreError as exc:
            logger.warning("watcher lease not renewed", extra={"error": str(exc)})
            if self.lease is not None and not self._holds(self.lease):
                await self._feed.stop()  # lapsed: whoever takes it next must be alone
            return
        previous, self.lease = self.lease, lease
        if lease.holder != self.instance_id:
            if self._feed.running:
                logger.warning("watcher lease taken by another instance", extra=_fields(lease))
                await self._feed.stop()
            return
        fence = Fence(WATCHER_LEASE, lease.fence)
        if self._feed.running and self._feed.fence == fence:
            return  # renewed
        await self._feed.stop()  # (a feed that ended: its lease was lost, or it crashed)
        if self._stopping:
            return
        if previous is None or previous.holder != self.instance_id or previous.fence != lease.fence:
            self.takeovers += 1
            logger.info("watcher lease taken: watching", extra=_fields(lease))
        self._feed.fence = fence
        try:
            await self._feed.open()  # from the saved token, before anything else
        except StoreError as exc:  # the feed retries opening with backoff
            logger.error("change stream not open yet", extra={"error": str(exc)})
        self._feed.start(fence)


def new_instance_id() -> str:
    """Names this process among the instances (in the lease, on the bus, in /status):
    `host:pid:random`, which `dead_on_this_host` reads back."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def dead_on_this_host(holder: str) -> bool:
    """Whether `holder` (an instance id, `host:pid:random`) was a process of this host that is
    gone: its pid is this process's own (a restart in a container), or no process has it. Its
    lease need not be waited out; fencing covers the rest."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def _fields(lease: Lease) -> dict[str, object]:
    return {"holder": lease.holder, "fence": lease.fence}
