"""The Python baseline for bench/vs_node.py: stock python-socketio (`AsyncServer`, aiohttp,
default settings, default asyncio loop) speaking the gateway's protocol minimally.

    JWT_SECRET=... BROADCAST_TOKEN=... .venv/bin/python bench/bare_socketio.py --port 8000

- handshake auth `{token}`: HS256 JWT (`sub`, `role`, `exp`) verified with PyJWT; the socket
  enters `user-{sub}` and, once connected, gets `auth_success {userId, role, rooms, expiresAt}`;
  a bad token is refused (`connect_error` with data `{code, message}`);
- `join_room {roomId}` -> ack `{ok: true, roomId, replayed: 0, lastEventId}` for its own user
  room and any `availability-*` room; `leave_room {roomId}` -> ack `{ok: true, roomId}`;
- `POST /broadcast` (Bearer `BROADCAST_TOKEN`) `{event, data, rooms}` -> 202 `{eventId, rooms}`,
  and the event goes to those rooms with data + `eventId` (increasing string) + `timestamp`.

Nothing from this repository is imported: it measures the library, not the gateway. Prints a line
containing "listening" on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import jwt
import socketio
from aiohttp import web

SECRET = os.environ.get("JWT_SECRET", "")
BROADCAST_TOKEN = os.environ.get("BROADCAST_TOKEN", "")

sio = socketio.AsyncServer(async_mode="aiohttp")
state = {"sequence": 0, "last_event_id": None}


def refused(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    return socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})


def iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@sio.event
async def connect(sid, environ, auth):
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise refused("missing_token", "a token is required")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    except jwt.ExpiredSignatureError:
        raise refused("token_expired", "the token has expired") from None
    except jwt.PyJWTError:
        raise refused("invalid_token", "the token is not valid") from None
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id:
        raise refused("invalid_token", "the token is not valid")
    user = {
        "userId": user_id,
        "role": claims.get("role", "customer"),
        "expiresAt": iso(claims["exp"]) if isinstance(claims.get("exp"), int | float) else None,
    }
    await sio.save_session(sid, user)
    own = f"user-{user_id}"
    await sio.enter_room(sid, own)
    # the library sends the CONNECT packet after this handler returns: auth_success after it
    sio.start_background_task(sio.emit, "auth_success", {**user, "rooms": [own]}, to=sid)


def allowed(user: dict, room_id: str) -> bool:
    return room_id == f"user-{user['userId']}" or (
        room_id.startswith("availability-") and len(room_id) > len("availability-")
    )


@sio.event
async def join_room(sid, data):
    room_id = data.get("roomId") if isinstance(data, dict) else None
    user = await sio.get_session(sid)
    if not isinstance(room_id, str) or not allowed(user, room_id):
        return {"ok": False, "error": {"code": "forbidden", "message": "not allowed in this room"}}
    await sio.enter_room(sid, room_id)
    return {"ok": True, "roomId": room_id, "replayed": 0, "lastEventId": state["last_event_id"]}


@sio.event
async def leave_room(sid, data):
    room_id = data.get("roomId") if isinstance(data, dict) else None
    if isinstance(room_id, str):
        await sio.leave_room(sid, room_id)
    return {"ok": True, "roomId": room_id}


def problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def broadcast(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {BROADCAST_TOKEN}":
        return problem(401, "unauthenticated", "a valid bearer token is required")
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "invalid_payload", "the body is not JSON")
    event, data, rooms = (body.get(key) for key in ("event", "data", "rooms"))
    if (
        not isinstance(event, str)
        or not isinstance(data, dict)
        or not isinstance(rooms, list)
        or not all(isinstance(room, str) for room in rooms)
    ):
        return problem(400, "invalid_payload", "expected {event, data, rooms}")
    state["sequence"] += 1
    event_id = f"{state['sequence']:016d}"
    state["last_event_id"] = event_id
    now = datetime.datetime.now(datetime.UTC)
    timestamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await sio.emit(event, {**data, "eventId": event_id, "timestamp": timestamp}, to=rooms)
    return web.json_response({"eventId": event_id, "rooms": rooms}, status=202)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if len(SECRET) < 32 or len(BROADCAST_TOKEN) < 16:
        sys.exit("JWT_SECRET (32+ characters) and BROADCAST_TOKEN (16+) are required")
    app = web.Application()
    sio.attach(app)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_get("/health", health)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=lambda *_: print(
            f"bare python-socketio listening on http://{args.host}:{args.port}", flush=True
        ),
        access_log=None,
    )


if __name__ == "__main__":
    main()
