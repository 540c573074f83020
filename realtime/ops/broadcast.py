"""`POST /broadcast` as a capability: services push their own events through the single emit
path, once per Idempotency-Key."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from realtime import events
from realtime.config import Settings
from realtime.delivery.emitter import Emitter
from realtime.errors import GatewayError
from realtime.rooms import parse_room, user_room
from realtime.wire import event_id
from storage.base import NewEvent, Store

_SCHEMA = events.BroadcastSchema()


@dataclass(frozen=True)
class BroadcastAnswer:
    body: dict[str, Any]  # `{eventId, rooms}`
    replayed: bool  # the answer of an earlier attempt with the same key: nothing emitted now


class Broadcaster:
    def __init__(self, settings: Settings, store: Store, emitter: Emitter):
        self._store = store
        self._emitter = emitter
        self._ttl_s = settings.idempotency_ttl_s
        self.allowed_events = (
            frozenset(events.BROADCAST_EVENTS | set(settings.broadcast_events))
            - events.CHANGE_EVENTS
            - events.CONTROL_EVENTS
        )

    async def broadcast(self, body: Any, idempotency_key: str | None) -> dict[str, Any]:
        """Validate, log and emit; returns `{eventId, rooms}` (`answer` says more)."""
        return (await self.answer(body, idempotency_key)).body

    async def answer(self, body: Any, idempotency_key: str | None) -> BroadcastAnswer:
        """Validate, log and emit. A key seen before (within `IDEMPOTENCY_TTL`) gets the first
        answer again, `replayed`, without emitting; with another body it is
        `idempotency_conflict`. A key reused after its time is a new request."""
        request = events.load(_SCHEMA, body, unknown_fields="refuse")
        rooms = self._rooms(request)
        fingerprint = hashlib.sha256(
            json.dumps(request, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest()
        claim = None
        if idempotency_key is None:
            source = f"broadcast:{uuid.uuid4().hex}"
        else:
            # claimed before the event is logged, so that a retry after a crash in between
            # finds the same source (and the logged event), never a second event
            claim = await self._store.claim_request(idempotency_key, fingerprint, self._ttl_s)
            if claim.fingerprint != fingerprint:
                raise GatewayError("idempotency_conflict")
            if claim.response is not None:
                return BroadcastAnswer(claim.response, replayed=True)
            source = f"broadcast:{idempotency_key}:{claim.nonce}"
        [stored] = await self._emitter.publish(
            [NewEvent(request["event"], request["data"], rooms, source)]
        )
        replayed = stored is None
        if stored is None:  # logged by an earlier attempt with this key that did not answer
            stored = await self._store.find_event(source)
            if stored is None:  # IDEMPOTENCY_TTL <= EVENT_RETENTION: only if pruned by hand
                raise GatewayError("internal", "the first attempt's event is no longer logged")
        response = {"eventId": event_id(stored.sequence), "rooms": list(stored.rooms)}
        if claim is not None:
            await self._store.complete_request(idempotency_key, claim.nonce, response)
        return BroadcastAnswer(response, replayed)

    def _rooms(self, request: dict[str, Any]) -> tuple[str, ...]:
        errors: dict[str, list[str]] = {}
        if request["event"] not in self.allowed_events:
            errors["event"] = [
                f"not an event services may send; one of: {', '.join(sorted(self.allowed_events))}"
            ]
        rooms: list[str] = []
        for index, room_id in enumerate(request["rooms"]):
            try:
                rooms.append(parse_room(room_id).name)
            except GatewayError as error:
                errors.setdefault("rooms", []).append(f"{index}: {error.message}")
        rooms.extend(user_room(user) for user in request["users"])
        if not rooms and "rooms" not in errors:
            errors["_schema"] = ["give at least one target in rooms or users"]
        if errors:
            raise GatewayError("invalid_payload", "the broadcast is not valid", details=errors)
        return tuple(dict.fromkeys(rooms))
