// The load generator of bench/capacity.py: one Node process holding many idle raw-WebSocket
// Socket.IO clients (Engine.IO v4 / Socket.IO v5 by hand, as in loadgen.mjs), each
// authenticated in the handshake (`auth: {token}`, a customer with a user of its own), joined
// to a second room (`join_room`, acked) and answering the server's pings. The clients bind
// their local address round-robin to --addresses (Linux routes all of 127/8 to lo), so that no
// source address runs out of ephemeral ports.
//
//   node bench/node/idle.mjs --url http://127.0.0.1:8000 --secret S --clients 9500 \
//     --first 0 --addresses 127.0.0.2,127.0.0.3 [--room availability-s1] [--concurrency 100]
//
// Driven by bench/capacity.py through stdin and stdout, one JSON line each way:
//   out {"event":"ready", connected, failed, seconds, first_failures}   once all have connected
//   in  "stats"     out {"event":"stats", open, disconnects, pings, events}
//   in  "mark"      out {"event":"marked"}: arrivals are recorded from now on
//   in  "arrivals K" out {"event":"arrivals", times}: when (epoch ms) each event since the mark
//                   arrived, once every open client has K of them (or after 60 s)
//   in  "close"     out {"event":"closed"}, then it exits
// Event frames are counted by their `42` prefix and never parsed.

import readline from "node:readline";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import WebSocket from "ws";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    secret: { type: "string" },
    clients: { type: "string", default: "1000" },
    first: { type: "string", default: "0" }, // user numbers start here: one user per client
    addresses: { type: "string", default: "127.0.0.1" },
    room: { type: "string", default: "availability-s1" },
    concurrency: { type: "string", default: "100" }, // handshakes in flight
    timeout: { type: "string", default: "120" }, // seconds for one client to be ready
  },
});
const BASE = new URL(opt.url);
const WS_URL = `ws://${BASE.host}/socket.io/?EIO=4&transport=websocket`;
const ADDRESSES = opt.addresses.split(",");
const JOIN_FRAME = `421["join_room",${JSON.stringify({ roomId: opt.room })}]`;
const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms resolution

const say = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
process.on("uncaughtException", (error) => say({ event: "error", error: String(error?.stack) }));

const clients = [];
let disconnects = 0;
let pings = 0;
let events = 0;
let arrivals = null; // epoch ms of each event since "mark"

function connect(n) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(WS_URL, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: Number(opt.timeout) * 1000,
      localAddress: ADDRESSES[n % ADDRESSES.length],
    });
    const client = { ws, closed: false };
    let state = "open"; // open -> connect -> auth -> join -> ready
    const timer = setTimeout(() => refuse(new Error(`timeout in ${state}`)), Number(opt.timeout) * 1000);
    function refuse(error) {
      if (state === "ready" || state === "refused") return;
      state = "refused";
      clearTimeout(timer);
      ws.terminate();
      reject(error);
    }
    ws.on("message", (buf) => {
      if (buf.length === 1 && buf[0] === 0x32) {
        pings += 1;
        return ws.send("3");
      }
      if (state === "ready") {
        if (buf[0] === 0x34 && buf[1] === 0x32) {
          events += 1;
          if (arrivals) arrivals.push(now());
        }
        return;
      }
      const text = buf.toString("utf8");
      if (state === "open" && text[0] === "0") {
        state = "connect";
        const token = jwt.sign({ sub: `capacity-${n}`, role: "customer" }, opt.secret, {
          algorithm: "HS256",
          expiresIn: 6 * 3600,
        });
        ws.send(`40${JSON.stringify({ token })}`);
      } else if (state === "connect" && text.startsWith("40")) {
        state = "auth";
      } else if (state === "auth" && text.startsWith('42["auth_success"')) {
        state = "join";
        ws.send(JOIN_FRAME);
      } else if (state === "join" && text.startsWith("431[")) {
        if (!/"ok":\s*true/.test(text)) return refuse(new Error(`join refused ${text}`));
        state = "ready";
        clearTimeout(timer);
        resolve(client);
      } else if (text !== "6" && text !== "3") {
        refuse(new Error(`unexpected frame in ${state}: ${text.slice(0, 200)}`));
      }
    });
    ws.on("error", (error) => refuse(error));
    ws.on("close", () => {
      if (state !== "ready") refuse(new Error(`closed in ${state}`));
      else if (!client.closed) disconnects += 1; // closed by the server
      client.closed = true;
    });
  });
}

async function connectAll() {
  const total = Number(opt.clients);
  const first = Number(opt.first);
  const failures = [];
  let next = 0;
  const started = performance.now();
  async function worker() {
    while (next < total) {
      const n = first + next++;
      try {
        clients.push(await connect(n));
      } catch (error) {
        failures.push(error.message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(Number(opt.concurrency), total) }, worker));
  say({
    event: "ready",
    connected: clients.length,
    failed: failures.length,
    seconds: (performance.now() - started) / 1000,
    first_failures: failures.slice(0, 3),
  });
}

const open = () => clients.filter((client) => !client.closed).length;

async function waitForArrivals(each) {
  const deadline = performance.now() + 60000;
  while (arrivals.length < each * open() && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return arrivals;
}

function closeAll() {
  return Promise.all(
    clients.map(
      (client) =>
        new Promise((resolve) => {
          if (client.closed) return resolve();
          client.closed = true;
          const timer = setTimeout(() => {
            client.ws.terminate();
            resolve();
          }, 5000);
          client.ws.once("close", () => {
            clearTimeout(timer);
            resolve();
          });
          client.ws.send("41");
          client.ws.close(1000);
        }),
    ),
  );
}

await connectAll();
for await (const line of readline.createInterface({ input: process.stdin })) {
  const command = line.trim();
  if (command === "stats") {
    say({ event: "stats", open: open(), disconnects, pings, events });
  } else if (command === "mark") {
    arrivals = [];
    say({ event: "marked" });
  } else if (command.startsWith("arrivals")) {
    say({ event: "arrivals", times: await waitForArrivals(Number(command.split(" ")[1] ?? 1)) });
    arrivals = null;
  } else if (command === "close") {
    await closeAll();
    say({ event: "closed" });
    process.exit(0);
  }
}
