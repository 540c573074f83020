"""The baseline: a bare python-socketio server with no auth, no store and no pipeline. Clients
name their rooms in the handshake auth; `POST /blast` emits the given events to the given rooms
as fast as it can, `count` times, so the benchmark can compare our gateway's delivery rate with
the library's own."""

from __future__ import annotations

import asyncio
import sys

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)


@sio.event
async def connect(sid, environ, auth):
    for room in [f"user-{auth.get('sub')}", *auth.get("rooms", [])]:
        await sio.enter_room(sid, room)
    # after the CONNECT packet, as the gateway does: the raw clients wait for it
    sio.start_background_task(sio.emit, "auth_success", {"userId": auth.get("sub")}, to=sid)


async def blast(request: web.Request) -> web.Response:
    """{count, customers, shops, events: [{name, payload, rooms: [templates]}]}: change n is
    for customers[n % len] in shops[n % len]; room templates use {customer}, {shop}, {n}."""
    body = await request.json()
    customers, shops = body["customers"], body["shops"]

    async def run():
        for n in range(body["count"]):
            names = {
                "customer": customers[n % len(customers)],
                "shop": shops[n % len(shops)],
                "n": n,
            }
            for event in body["events"]:
                payload = dict(event["payload"], eventId=f"{n:016d}", reservationId=str(n))
                rooms = [template.format(**names) for template in event["rooms"]]
                await sio.emit(event["name"], payload, to=rooms)

    asyncio.get_running_loop().create_task(run())
    return web.json_response({"ok": True})


def main() -> None:
    # stock python-socketio: the benchmark's clients offer no compression, so none is used
    app = web.Application()
    sio.attach(app)
    app.router.add_post("/blast", blast)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=lambda *_: print("listening", flush=True),
    )


if __name__ == "__main__":
    main()
