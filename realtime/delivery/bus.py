"""The Redis bus between instances: each event an instance logs is announced on one channel,
and every other instance hands what it hears to its emitter (an instance delivered its own as
it logged them), which delivers in id order and fills holes from the log. Redis only makes
delivery fast; the log is the truth.

Operators' orders (`POST /disconnect`, `POST /revoke`) travel on the same channel as control
messages: the instance that took the order acts at once, the others as they hear it.

Each instance also hears its own heartbeat on the channel. Not hearing it means the
subscription is broken (Redis down, a reconnect under way, or a listener that died without an
error: python-socketio issue 1581), so `/ready` says so, the subscription is opened again, and
once it hears again the instance reads the log for what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio

from realtime.backoff import Backoff
from storage.base import StoredEvent

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "realtime:events:"  # + the event log's identity: one channel per deployment
HEARTBEAT_S = 1.0
DEAF_AFTER_S = 3 * HEARTBEAT_S  # no heartbeat heard for this long: the subscription is broken
REDIS_TIMEOUT_S = 2.0
OUTBOX_MAX = 1000  # announcements waiting for Redis; past it they are dropped (the log has them)


class EventBus:
    def __init__(
        self,
        url: str,
        instance_id: str,
        on_events: Callable[[list[StoredEvent]], None],
        on_heard_again: Callable[[], None],
        heartbeat_s: float = HEARTBEAT_S,
        on_control: Callable[[dict], None] | None = None,
    ):
        self._url = url
        self.channel: str | None = None  # set by `start(log_identity)`
        self.instance_id = instance_id
        self._on_events = on_events
        self._on_heard_again = on_heard_again
        self._on_control = on_control
        self._heartbeat_s = heartbeat_s
        self._publisher = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        self._deaf_after_s = DEAF_AFTER_S * heartbeat_s / HEARTBEAT_S
        self._heard_at = float("-inf")  # when this instance last heard its own heartbeat
        self._publish_failing = False
        # announcements leave from a queue of their own, so that a slow or stalled Redis never
        # holds up the request or change that logged the events
        self._outbox: asyncio.Queue[dict] = asyncio.Queue(OUTBOX_MAX)
        self._tasks: list[asyncio.Task] = []

    @property
    def deaf(self) -> bool:
        return time.monotonic() - self._heard_at > self._deaf_after_s

    def start(self, log_identity: str) -> None:
        """Speak and listen on the channel of this event log: Redis pub/sub ignores the
        database number, so two deployments sharing a Redis would otherwise hear each other."""
        self.channel = CHANNEL_PREFIX + log_identity
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen_forever(), name="bus:listen"),
            loop.create_task(self._beat_forever(), name="bus:heartbeat"),
            loop.create_task(self._send_forever(), name="bus:send"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._publisher.aclose()

    def announce(self, events: Sequence[StoredEvent]) -> None:
        """Tell every instance of these logged events, soon; never waits for Redis and never
        fails: what does not get through, the others read from the log."""
        message = {
            "from": self.instance_id,
            "events": [
                [e.sequence, e.timestamp_ms, e.name, e.payload, list(e.rooms)] for e in events
            ],
        }
        with contextlib.suppress(asyncio.QueueFull):  # full: Redis is behind, the log is not
            self._outbox.put_nowait(message)

    def announce_control(self, control: dict) -> None:
        """Tell the other instances of an operator's order (`{"control": kind, ...}`), as
        `announce` does: never waits, never fails. Lost in a Redis outage: a revocation is
        read again from the store by every instance, a disconnect is not repeated."""
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait({**control, "from": self.instance_id})

    async def _send_forever(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._publish(message)
            except Exception:  # a message that cannot be sent must not stop the others
                logger.exception("bus announcement not sent")
            if self._publish_failing:
                # Redis is away: what waits is stale by the time it is back, and the others
                # read it from the log anyway
                while not self._outbox.empty():
                    self._outbox.get_nowait()

    async def _publish(self, message: dict) -> None:
        try:
            await self._publisher.publish(self.channel, json.dumps(message, separators=(",", ":")))
        except (redis.RedisError, OSError) as exc:
            if not self._publish_failing:  # said once per outage, not once a second
                logger.warning("redis publish failed", extra={"error": str(exc)[:200]})
            self._publish_failing = True
        else:
            self._publish_failing = False

    async def _beat_forever(self) -> None:
        while True:
            await self._publish({"from": self.instance_id, "heartbeat": time.time()})
            await asyncio.sleep(self._heartbeat_s)

    async def _listen_forever(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._listen(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis down, reset, or a listener gone deaf
                logger.warning("redis subscription lost", extra={"error": str(exc)[:200]})
            await asyncio.sleep(backoff.next_delay())

    async def _listen(self, backoff: Backoff) -> None:
        client = redis.asyncio.Redis.from_url(
            self._url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=None
        )
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(self.channel)
                subscribed_at = time.monotonic()
                backoff.reset()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._heartbeat_s
                    )
                    if message is not None:
                        self._heard(message["data"])
                    silent_s = time.monotonic() - max(self._heard_at, subscribed_at)
                    if silent_s > 2 * self._deaf_after_s:
                        # subscribed, yet not even our own heartbeat comes: start over
                        raise ConnectionError("no heartbeat heard on the subscription")
        finally:
            await client.aclose()

    def _heard(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            logger.warning("unreadable message on the bus")
            return
        mine = message.get("from") == self.instance_id
        try:
            if "heartbeat" in message:
                if mine:
                    was_deaf = self.deaf
                    self._heard_at = time.monotonic()
                    if was_deaf:
                        logger.info("bus heard again: catching up from the log")
                        self._on_heard_again()
            elif mine:  # this instance delivered its own events and obeyed its own orders
                pass
            elif "control" in message:
                if self._on_control is not None:
                    self._on_control(message)
            else:
                self._on_events(
                    [
                        StoredEvent(sequence, timestamp_ms, name, payload, tuple(rooms))
                        for sequence, timestamp_ms, name, payload, rooms in message["events"]
                    ]
                )
        except (KeyError, TypeError, ValueError):
            logger.warning("malformed message on the bus")
