"""The gateway's engine: python-engineio and python-socketio, adjusted, in one package.

Shaped like the libraries it adjusts; each module opens with what it replaces and which
library internals it touches (`tests/test_engine_internals.py` fails if one moves):

- `packets.py`: packets and frames, encoded once;
- `outbox.py`: one socket's outgoing packets, bounded (flow control);
- `socket.py`: the Engine.IO socket;
- `websocket.py`: a connection once a WebSocket, aiohttp's HTTP request let go;
- `endpoint.py`, `polling.py`, `answers.py`: the HTTP/WebSocket route, long-polling, and the
  answers and environ they give;
- `lane.py`, `runner.py`: long-polling requests served without aiohttp's per-request
  machinery, and the runner that puts that lane in front of the app;
- `lifecycle.py`: connections opening, pinged, timed out and closed;
- `dispatch.py`: what clients send, dispatched (reserved names, binary events);
- `membership.py`: who is in which room (python-socketio's manager, indexed);
- `admin.py`: the Admin UI's reports;
- `facade.py`: `Engine`, what the rest of the gateway uses, by Socket.IO sid;
- `server.py`: `create_engine`, everything installed.

Only this package (and the handlers' namespace class) imports `engineio` or `socketio`.
"""

from realtime.engine.admin import AdminView
from realtime.engine.answers import RATE_LIMITED
from realtime.engine.dispatch import (
    ADMIN_NAMESPACE,
    NAMESPACE,
    RESERVED_EVENTS,
    GatewayServer,
    Later,
    RefusedEventName,
)
from realtime.engine.facade import Engine
from realtime.engine.packets import GatewayPacket
from realtime.engine.runner import LaneRunner
from realtime.engine.server import create_engine
from realtime.limits import Bounds

__all__ = [
    "ADMIN_NAMESPACE",
    "NAMESPACE",
    "RATE_LIMITED",
    "RESERVED_EVENTS",
    "AdminView",
    "Bounds",
    "Engine",
    "GatewayPacket",
    "GatewayServer",
    "LaneRunner",
    "Later",
    "RefusedEventName",
    "create_engine",
]
