// The Node baseline for bench/vs_node.py: a stock socket.io 4 server speaking the gateway's
// protocol minimally (see README "Protocol summary"), nothing else.
//
//   JWT_SECRET=... BROADCAST_TOKEN=... node bench/node/server.mjs --host 127.0.0.1 --port 8000
//
// - handshake auth {token}: HS256 JWT (sub, role, exp) verified with jsonwebtoken; the socket
//   enters `user-{sub}` and, once connected, gets `auth_success {userId, role, rooms, expiresAt}`;
//   a bad token is refused (connect_error with data {code, message});
// - `join_room {roomId}` -> ack {ok: true, roomId, replayed: 0, lastEventId} for its own user
//   room and any `availability-*` room; `leave_room {roomId}` -> ack {ok: true, roomId};
// - POST /broadcast (Bearer BROADCAST_TOKEN) {event, data, rooms} -> 202 {eventId, rooms}, and
//   the event goes to those rooms with data + eventId (increasing string) + timestamp (ISO UTC).
// Prints a line containing "listening" on stdout once it accepts connections.

import http from "node:http";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8000" },
  },
});
const SECRET = process.env.JWT_SECRET;
const BROADCAST_TOKEN = process.env.BROADCAST_TOKEN;
if (!SECRET || !BROADCAST_TOKEN) {
  console.error("JWT_SECRET and BROADCAST_TOKEN are required");
  process.exit(2);
}
const MAX_BODY = 1_000_000;

let sequence = 0;
let lastEventId = null;

function problem(response, status, code, message) {
  response.writeHead(status, { "Content-Type": "application/json" });
  response.end(JSON.stringify({ error: { code, message } }));
}

function broadcast(request, response) {
  if (request.headers.authorization !== `Bearer ${BROADCAST_TOKEN}`) {
    request.resume();
    return problem(response, 401, "unauthenticated", "a valid bearer token is required");
  }
  const chunks = [];
  let size = 0;
  request.on("data", (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  });
  request.on("end", () => {
    if (size > MAX_BODY) return problem(response, 413, "payload_too_large", "body too large");
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return problem(response, 400, "invalid_payload", "the body is not JSON");
    }
    const { event, data, rooms } = body ?? {};
    if (typeof event !== "string" || typeof data !== "object" || data === null
        || !Array.isArray(rooms) || rooms.some((room) => typeof room !== "string")) {
      return problem(response, 400, "invalid_payload", "expected {event, data, rooms}");
    }
    sequence += 1;
    const eventId = String(sequence).padStart(16, "0");
    lastEventId = eventId;
    io.to(rooms).emit(event, { ...data, eventId, timestamp: new Date().toISOString() });
    response.writeHead(202, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ eventId, rooms }));
  });
}

const httpServer = http.createServer((request, response) => {
  const path = request.url.split("?", 1)[0];
  if (request.method === "POST" && path === "/broadcast") return broadcast(request, response);
  if (request.method === "GET" && path === "/health") {
    response.writeHead(200, { "Content-Type": "application/json" });
    return response.end('{"status":"ok"}');
  }
  // socket.io answers its own path before this listener; everything else:
  request.resume();
  problem(response, 404, "not_found", "no such route");
});

const io = new Server(httpServer, { path: "/socket.io/", serveClient: false });

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (typeof token !== "string" || !token) {
    const error = new Error("a token is required");
    error.data = { code: "missing_token", message: error.message };
    return next(error);
  }
  try {
    const claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
    if (typeof claims.sub !== "string" || !claims.sub) throw new Error("no sub");
    socket.data.user = {
      userId: claims.sub,
      role: claims.role ?? "customer",
      expiresAt: new Date(claims.exp * 1000).toISOString(),
    };
    next();
  } catch (failure) {
    const expired = failure?.name === "TokenExpiredError";
    const error = new Error(expired ? "the token has expired" : "the token is not valid");
    error.data = { code: expired ? "token_expired" : "invalid_token", message: error.message };
    next(error);
  }
});

function allowed(user, roomId) {
  return roomId === `user-${user.userId}` || /^availability-[^\s]+$/.test(roomId);
}

io.on("connection", (socket) => {
  const user = socket.data.user;
  const own = `user-${user.userId}`;
  socket.join(own);
  // "connection" fires after the CONNECT packet went out
  socket.emit("auth_success", { ...user, rooms: [own] });

  socket.on("join_room", (data, ack) => {
    if (typeof ack !== "function") return;
    const roomId = data?.roomId;
    if (typeof roomId !== "string" || !allowed(user, roomId)) {
      return ack({ ok: false, error: { code: "forbidden", message: "not allowed in this room" } });
    }
    socket.join(roomId);
    ack({ ok: true, roomId, replayed: 0, lastEventId });
  });

  socket.on("leave_room", (data, ack) => {
    const roomId = data?.roomId;
    if (typeof roomId === "string") socket.leave(roomId);
    if (typeof ack === "function") ack({ ok: true, roomId });
  });
});

httpServer.listen(Number(args.port), args.host, () => {
  const { address, port } = httpServer.address();
  console.log(`node socket.io ${process.version} listening on http://${address}:${port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
