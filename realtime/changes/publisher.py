"""Changes become events: each change of the feed is mapped to its events, which go out
through the single emit path, sourced by the change's resume token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from realtime.changes.mapping import DocumentMapping
from realtime.delivery.emitter import Emitter
from realtime.wire import without_non_finite
from storage.base import Change, Checkpoint, NewEvent

logger = logging.getLogger(__name__)


class ChangePublisher:
    """Turns each change into its events and publishes them, sourced by the change's token."""

    def __init__(self, mapping: DocumentMapping, emitter: Emitter):
        self._mapping = mapping
        self._emitter = emitter

    async def __call__(self, changes: list[Change], checkpoint: Checkpoint) -> bool:
        """Publish the changes' events together (one log transaction); True when the
        checkpoint was saved with them. A change the mapping fails on is logged and skipped."""
        new_events: list[NewEvent] = []
        for change in changes:
            try:
                outgoing = self._mapping.events_for_change(change)
            except Exception:
                logger.exception(
                    "change skipped",
                    extra={"collection": change.collection, "document_id": str(change.document_id)},
                )
                continue
            token = _token_text(change.token)
            for position, event in enumerate(outgoing):
                payload, replaced = without_non_finite(event.payload)
                if replaced:  # a MongoDB double can be NaN or infinite; JSON cannot
                    logger.warning(
                        "non-finite numbers sent as null",
                        extra={
                            "collection": change.collection,
                            "document_id": str(change.document_id),
                            "fields": replaced,
                        },
                    )
                source = f"change:{token}:{position}"
                new_events.append(NewEvent(event.name, payload, event.rooms, source))
        if not new_events:
            return False
        await self._emitter.publish(new_events, checkpoint)
        return True

    async def history_lost(self, reason: str, collections: Sequence[str]) -> None:
        """Changes of these collections were lost: their rooms' clients refetch."""
        await self._emitter.resync_everyone(reason, self._mapping.change_rooms(collections))


def _token_text(token: Any) -> str:
    data = token.get("_data") if isinstance(token, dict) else None
    return data if isinstance(data, str) else repr(token)
