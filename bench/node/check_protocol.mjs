// Preflight of bench/vs_node.py: does this server speak the benchmark's protocol? Uses the
// official socket.io-client, over WebSocket and over long-polling, and prints one JSON line:
// {ok: true} or {ok: false, failures: [...]}.
//
//   node bench/node/check_protocol.mjs --url http://127.0.0.1:8000 --secret S --broadcast-token T

import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { io } from "socket.io-client";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    secret: { type: "string" },
    "broadcast-token": { type: "string" },
    room: { type: "string", default: "availability-s1" },
  },
});
const ROOM = opt.room;
const failures = [];
const check = (condition, what) => {
  if (!condition) failures.push(what);
};
const withTimeout = (promise, ms, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
  ]);

function connect(token, transports) {
  const socket = io(opt.url, {
    auth: { token },
    transports,
    upgrade: false,
    reconnection: false,
    forceNew: true,
  });
  const authSuccess = new Promise((resolve) => socket.once("auth_success", resolve));
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return { socket, authSuccess, connected };
}

async function transport(kind) {
  const sub = `check-${kind}`;
  const token = jwt.sign({ sub, role: "customer" }, opt.secret, {
    algorithm: "HS256",
    expiresIn: 3600,
  });
  // a bad token is refused
  const bad = connect(`${token.slice(0, -4)}AAAA`, [kind]);
  try {
    await withTimeout(bad.connected, 5000, "refusal");
    failures.push(`${kind}: a bad token was accepted`);
  } catch (error) {
    check(!String(error.message).startsWith("timeout"), `${kind}: no connect_error`);
  }
  bad.socket.close();

  const { socket, authSuccess, connected } = connect(token, [kind]);
  await withTimeout(connected, 5000, `${kind} connect`);
  const hello = await withTimeout(authSuccess, 5000, `${kind} auth_success`);
  check(hello.userId === sub, `${kind}: auth_success.userId ${JSON.stringify(hello)}`);
  check(hello.role === "customer", `${kind}: auth_success.role`);
  check(Array.isArray(hello.rooms) && hello.rooms.includes(`user-${sub}`), `${kind}: rooms`);
  check(typeof hello.expiresAt === "string", `${kind}: auth_success.expiresAt`);

  const joined = await withTimeout(socket.emitWithAck("join_room", { roomId: ROOM }), 5000, "join");
  check(joined.ok === true && joined.roomId === ROOM, `${kind}: join ${JSON.stringify(joined)}`);
  check(joined.replayed === 0, `${kind}: join.replayed`);
  check(joined.lastEventId === null || typeof joined.lastEventId === "string", `${kind}: id`);

  const received = new Promise((resolve) => socket.once("notification", resolve));
  const response = await fetch(`${opt.url}/broadcast`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${opt["broadcast-token"]}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({ event: "notification", data: { title: "check" }, rooms: [ROOM] }),
  });
  const answer = await response.json();
  check(response.status === 202, `${kind}: broadcast status ${response.status}`);
  check(typeof answer.eventId === "string", `${kind}: broadcast eventId`);
  const event = await withTimeout(received, 5000, `${kind} notification`);
  check(event.title === "check", `${kind}: notification data`);
  check(event.eventId === answer.eventId, `${kind}: notification eventId`);
  check(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$/.test(event.timestamp), "timestamp");

  const left = await withTimeout(socket.emitWithAck("leave_room", { roomId: ROOM }), 5000, "leave");
  check(left.ok === true && left.roomId === ROOM, `${kind}: leave ${JSON.stringify(left)}`);

  const unauthorised = await fetch(`${opt.url}/broadcast`, {
    method: "POST",
    headers: { Authorization: "Bearer wrong-token-0123456789", "Content-Type": "application/json" },
    body: JSON.stringify({ event: "notification", data: {}, rooms: [ROOM] }),
  });
  check(unauthorised.status === 401, `${kind}: wrong bearer gave ${unauthorised.status}`);
  socket.close();
}

try {
  await transport("websocket");
  await transport("polling");
} catch (error) {
  failures.push(String(error?.message ?? error));
}
process.stdout.write(`${JSON.stringify({ ok: failures.length === 0, failures })}\n`);
process.exit(failures.length ? 1 : 0);
