"""The gateway's background tasks, in one keeper."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskKeeper:
    """Runs coroutines as tasks and keeps them referenced until they end (the event loop holds
    only weak references, so an unreferenced task can vanish mid-run); a crash is logged, or
    handed to `on_error`; `close()` cancels what is left."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(
        self,
        coroutine: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            if on_error is None:
                logger.error(
                    "background task crashed",
                    extra={"task": task.get_name()},
                    exc_info=task.exception(),
                )
            else:
                on_error(task.exception())

        task.add_done_callback(done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
