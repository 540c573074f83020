"""One connected socket as the gateway knows it: its connection, its identity and its
token's next deadline. One per socket: kept small."""

from __future__ import annotations

import asyncio
import dataclasses

from realtime.access.auth import Principal


@dataclasses.dataclass(slots=True)  # one per connection: kept small
class SocketSession:
    sid: str
    connection: str  # the engine's id of the connection that carries it
    principal: Principal | None = None
    deadline: asyncio.TimerHandle | None = None  # the token's next deadline
    replay_from: str | None = None  # a handshake's lastEventId, replayed when announced
    # that replay, under way: the socket's next events wait for it to end (a join would
    # replay a room twice, a refresh enter rooms before their replay)
    replaying: asyncio.Future | None = None

    def replayed(self) -> None:
        if self.replaying is not None and not self.replaying.done():
            self.replaying.set_result(None)
        self.replaying = None

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
