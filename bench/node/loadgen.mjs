// The load generator of bench/vs_node.py: one Node process speaking Engine.IO v4 / Socket.IO v5
// by hand, over raw `ws` WebSockets (no compression) or raw HTTP long-polling (keep-alive
// agent, no upgrade), against a server that speaks the gateway's protocol (README "Protocol
// summary"). It runs one scenario and prints one JSON line with its figures on stdout
// (progress goes to stderr).
//
//   node bench/node/loadgen.mjs --url http://127.0.0.1:8000 --scenario fanout --clients 1000 \
//     --seconds 10 --secret <JWT_SECRET> --broadcast-token <BROADCAST_TOKEN> --server-pid <pid>
//
// Scenarios: fanout, latency, idle, connects, polling, polling_close, acks, acks_client
// (see bench/vs_node.py).
// Cheap on purpose: event frames are counted by their `42` prefix and never parsed, except
// where the payload is the figure (latency, polling). Its own CPU use over each measurement
// window is reported (`gen_cpu_pct`, 100 = one CPU), and the server's from /proc/PID/stat.

import fs from "node:fs";
import http from "node:http";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { io } from "socket.io-client";
import WebSocket from "ws";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    scenario: { type: "string" },
    clients: { type: "string", default: "1000" },
    seconds: { type: "string", default: "10" },
    warmup: { type: "string", default: "1" },
    secret: { type: "string" },
    "broadcast-token": { type: "string" },
    "server-pid": { type: "string" },
    "clk-tck": { type: "string", default: "100" },
    room: { type: "string", default: "availability-s1" },
    inflight: { type: "string", default: "8" }, // fanout: broadcasts not yet fully delivered
    rate: { type: "string", default: "10" }, // latency, polling: broadcasts per second
    concurrency: { type: "string", default: "50" }, // connects: cycles in flight
    "connect-concurrency": { type: "string", default: "100" }, // handshakes in flight, set-up
    settle: { type: "string", default: "2" }, // idle: seconds before reading RSS
    drain: { type: "string", default: "15" }, // seconds to wait for stragglers after a window
  },
});
for (const required of ["url", "scenario", "secret", "broadcast-token", "server-pid"]) {
  if (!opt[required]) fail(`--${required} is required`);
}
const BASE = new URL(opt.url);
const WS_URL = `ws://${BASE.host}/socket.io/?EIO=4&transport=websocket`;
const POLL_PATH = "/socket.io/?EIO=4&transport=polling";
const CLIENTS = Number(opt.clients);
const SECONDS = Number(opt.seconds);
const WARMUP = Number(opt.warmup);
const ROOM = opt.room;
const PID = Number(opt["server-pid"]);
const CLK_TCK = Number(opt["clk-tck"]);
const JOIN_FRAME = (id) => `42${id}["join_room",${JSON.stringify({ roomId: ROOM })}]`;

const errors = {};
function count(kind) {
  errors[kind] = (errors[kind] ?? 0) + 1;
}

function fail(message) {
  process.stdout.write(`${JSON.stringify({ error: String(message), errors })}\n`);
  process.exit(1);
}
process.on("uncaughtException", (error) => fail(error?.stack ?? error));
process.on("unhandledRejection", (error) => fail(error?.stack ?? error));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (message) => process.stderr.write(`[loadgen ${opt.scenario}] ${message}\n`);

// -- measurement ---------------------------------------------------------------------------------

function serverCpuSeconds() {
  const stat = fs.readFileSync(`/proc/${PID}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
}

function serverRssKb() {
  const status = fs.readFileSync(`/proc/${PID}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)[1]);
}

/** Busy CPU seconds of the whole machine (every CPU), from /proc/stat. */
function machineBusySeconds() {
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n", 1)[0]; // "cpu  user nice ..."
  const ticks = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = ticks;
  return (user + nice + system + irq + softirq + steal) / CLK_TCK;
}

/**
 * Wall time, this process's CPU, the server's CPU and everything else's (other processes on
 * the machine: they disturb the figures) between start and the returned stop().
 */
function meter() {
  const wall0 = performance.now();
  const own0 = process.cpuUsage();
  const server0 = serverCpuSeconds();
  const machine0 = machineBusySeconds();
  return () => {
    const seconds = (performance.now() - wall0) / 1000;
    const own = process.cpuUsage(own0);
    const ownSeconds = (own.user + own.system) / 1e6;
    const serverSeconds = serverCpuSeconds() - server0;
    const otherSeconds = machineBusySeconds() - machine0 - ownSeconds - serverSeconds;
    return {
      seconds,
      gen_cpu_pct: (ownSeconds / seconds) * 100,
      gen_sys_pct: (own.system / 1e6 / seconds) * 100, // of which in the kernel
      server_cpu_pct: (serverSeconds / seconds) * 100,
      other_cpu_pct: Math.max(0, (otherSeconds / seconds) * 100),
    };
  };
}

function percentiles(values) {
  const sorted = Float64Array.from(values).sort();
  const last = sorted.length - 1;
  const at = (p) => sorted[Math.min(last, Math.round((p / 100) * last))];
  if (!sorted.length) return {};
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    p50_ms: at(50),
    p95_ms: at(95),
    p99_ms: at(99),
    max_ms: sorted[sorted.length - 1],
    mean_ms: sum / sorted.length,
  };
}

const sentAtOf = (text) => JSON.parse(text)[1].sentAt;

// -- tokens --------------------------------------------------------------------------------------

const tokens = new Map();
function token(n) {
  let value = tokens.get(n);
  if (value === undefined) {
    value = jwt.sign({ sub: `bench-${n}`, role: "customer" }, opt.secret, {
      algorithm: "HS256",
      expiresIn: 3 * 3600,
    });
    tokens.set(n, value);
  }
  return value;
}

// -- broadcasts ----------------------------------------------------------------------------------

const broadcastAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const AUTHORIZATION = `Bearer ${opt["broadcast-token"]}`;

/** POST /broadcast to ROOM; resolves with the HTTP status (0: the request failed). */
function broadcast(data) {
  const body = JSON.stringify({ event: "notification", data, rooms: [ROOM] });
  return new Promise((resolve) => {
    const request = http.request(
      {
        host: BASE.hostname,
        port: BASE.port,
        path: "/broadcast",
        method: "POST",
        agent: broadcastAgent,
        headers: {
          Authorization: AUTHORIZATION,
          "Content-Type": "application/json",
          "Content-Length": Buffer.byteLength(body),
        },
      },
      (response) => {
        response.resume();
        response.on("end", () => {
          if (response.statusCode !== 202) count(`broadcast_http_${response.statusCode}`);
          resolve(response.statusCode);
        });
      },
    );
    request.on("error", (error) => {
      count(`broadcast_${error.code ?? "error"}`);
      resolve(0);
    });
    request.end(body);
  });
}

/** Broadcasts at a fixed rate (open loop) for `seconds`; returns how many were sent. */
async function broadcastAtRate(rate, seconds) {
  const started = performance.now();
  const total = Math.round(rate * seconds);
  let inFlight = 0;
  for (let n = 0; n < total; n += 1) {
    const delay = started + (n * 1000) / rate - performance.now();
    if (delay > 0) await sleep(delay);
    if (inFlight >= 64) {
      count("broadcast_skipped_64_in_flight");
      continue;
    }
    inFlight += 1;
    broadcast({ title: "bench", seq: n, sentAt: performance.now() }).then(() => {
      inFlight -= 1;
    });
  }
  const rest = started + seconds * 1000 - performance.now();
  if (rest > 0) await sleep(rest);
  return total;
}

// -- WebSocket clients ---------------------------------------------------------------------------

let disconnects = 0;

/**
 * Open a WebSocket, join namespace `/` with {token}, wait for `auth_success`, then (with
 * `join`) send `join_room` (ack id 1) and wait for its ack. Resolves with the client
 * {ws, send}; afterwards `onEvent(frame, client)` gets each `42` frame (a Buffer, unparsed) and
 * `onAck(frame, client)` each `43` frame.
 */
function wsClient(n, { join = true, onEvent = null, onAck = null, timeoutMs = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(WS_URL, {
      perMessageDeflate: false,
      skipUTF8Validation: true, // the frames are only counted (or JSON-parsed for latency)
      handshakeTimeout: timeoutMs,
    });
    let state = "open"; // open -> connect -> auth -> join -> ready
    let settled = false;
    const timer = setTimeout(() => refuse(new Error(`timeout waiting for ${state}`)), timeoutMs);
    const refuse = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(error);
    };
    const client = { ws, closed: false, send: (text) => ws.send(text) };
    ws.on("message", (buf) => {
      if (buf.length === 1 && buf[0] === 0x32) return ws.send("3"); // ping -> pong
      if (state === "ready") {
        if (buf[0] === 0x34) {
          if (buf[1] === 0x32) onEvent?.(buf, client);
          else if (buf[1] === 0x33) onAck?.(buf, client);
        }
        return;
      }
      const text = buf.toString("utf8");
      if (state === "open" && text[0] === "0") {
        state = "connect";
        ws.send(`40${JSON.stringify({ token: token(n) })}`);
      } else if (state === "connect" && text.startsWith("40")) {
        state = "auth";
      } else if (state === "connect" && text.startsWith("44")) {
        refuse(new Error(`connect_error ${text.slice(2, 200)}`));
      } else if (state === "auth" && text.startsWith('42["auth_success"')) {
        if (join) {
          state = "join";
          ws.send(JOIN_FRAME(1));
        } else {
          state = "ready";
        }
      } else if (state === "join" && text.startsWith("431[")) {
        if (!/"ok":\s*true/.test(text)) return refuse(new Error(`join refused ${text}`));
        state = "ready";
      } else if (text === "6" || text === "3") {
        // noop, pong
      } else {
        return refuse(new Error(`unexpected frame in state ${state}: ${text.slice(0, 200)}`));
      }
      if (state === "ready") {
        settled = true;
        clearTimeout(timer);
        resolve(client);
      }
    });
    ws.on("error", (error) => refuse(error));
    ws.on("close", () => {
      if (!settled) refuse(new Error(`closed while waiting for ${state}`));
      else if (!client.closed) disconnects += 1; // not closed by us
      client.closed = true;
    });
  });
}

/** Close as a socket.io-client does on disconnect(): a DISCONNECT packet, then the transport. */
function closeClient(client, timeoutMs = 10000) {
  if (client.closed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      client.ws.terminate();
      resolve();
    }, timeoutMs);
    client.ws.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    client.closed = true; // not an unexpected disconnect
    try {
      client.ws.send("41");
      client.ws.close(1000);
    } catch {
      client.ws.terminate();
    }
  });
}

/** `total` clients made by `make(n)`, `concurrency` handshakes at a time. */
async function connectMany(total, concurrency, make) {
  const clients = [];
  let next = 0;
  let failures = 0;
  const started = performance.now();
  async function worker() {
    while (next < total) {
      const n = next++;
      try {
        clients.push(await make(n));
      } catch (error) {
        failures += 1;
        count("connect_failed");
        if (failures <= 3) log(`client ${n} failed: ${error.message}`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
  const seconds = (performance.now() - started) / 1000;
  log(`${clients.length}/${total} clients ready in ${seconds.toFixed(1)} s`);
  if (failures > total * 0.01) fail(`${failures} of ${total} clients failed to connect`);
  return { clients, seconds };
}

async function closeAll(clients) {
  // the server is stopped right after; closing keeps its logs free of resets
  await Promise.all(clients.map((client) => closeClient(client, 3000)));
}

async function waitFor(predicate, seconds) {
  const deadline = performance.now() + seconds * 1000;
  while (!predicate() && performance.now() < deadline) await sleep(20);
  return predicate();
}

// -- long-polling clients ------------------------------------------------------------------------

const pollAgent =
  opt.scenario === "polling_close" ? false : new http.Agent({ keepAlive: true, maxSockets: Infinity });

// requests made by long-polling clients, by method (the polling scenarios report them per window)
const pollRequests = { GET: 0, POST: 0 };

function pollRequest(method, path, body) {
  pollRequests[method] += 1;
  return new Promise((resolve) => {
    const headers = {};
    if (body !== undefined) {
      headers["Content-Type"] = "text/plain;charset=UTF-8";
      headers["Content-Length"] = Buffer.byteLength(body);
    }
    const request = http.request(
      { host: BASE.hostname, port: BASE.port, path, method, agent: pollAgent, headers },
      (response) => {
        response.setEncoding("utf8");
        let text = "";
        response.on("data", (chunk) => {
          text += chunk;
        });
        response.on("end", () => resolve({ status: response.statusCode, text }));
        response.on("error", (error) => resolve({ status: 0, text: String(error) }));
      },
    );
    request.on("error", (error) => resolve({ status: 0, text: String(error) }));
    request.end(body);
  });
}

/**
 * An Engine.IO long-polling client: one GET (poll) and at most one POST in flight, packets
 * separated by \x1e, pings answered. Resolves once authenticated and joined to ROOM.
 */
function pollClient(n, { onEvent, timeoutMs = 60000 }) {
  return new Promise((resolve, reject) => {
    let state = "connect";
    let path = "";
    let settled = false;
    let posting = Promise.resolve();
    const client = { closed: false };
    const timer = setTimeout(() => refuse(new Error(`timeout waiting for ${state}`)), timeoutMs);
    function refuse(error) {
      client.closed = true;
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(error);
    }
    function post(text, evenIfClosed = false) {
      posting = posting.then(async () => {
        if (client.closed && !evenIfClosed) return;
        const answer = await pollRequest("POST", path, text);
        if (answer.status !== 200) {
          count(`poll_post_http_${answer.status}`);
          refuse(new Error(`POST ${answer.status} ${answer.text.slice(0, 200)}`));
        }
      });
    }
    function packet(text) {
      if (text === "2") return post("3");
      if (text === "6" || text === "3") return;
      if (text === "1") {
        if (settled && !client.closed) disconnects += 1;
        return refuse(new Error("closed by the server"));
      }
      if (text[0] !== "4") return;
      if (state === "ready") {
        if (text[1] === "2") onEvent(text);
        return;
      }
      if (state === "connect" && text.startsWith("40")) {
        state = "auth";
      } else if (state === "connect" && text.startsWith("44")) {
        refuse(new Error(`connect_error ${text.slice(3, 200)}`));
      } else if (state === "auth" && text.startsWith('42["auth_success"')) {
        state = "join";
        post(JOIN_FRAME(1));
      } else if (state === "join" && text.startsWith("431[")) {
        if (!/"ok":\s*true/.test(text)) return refuse(new Error(`join refused ${text}`));
        state = "ready";
        settled = true;
        clearTimeout(timer);
        resolve(client);
      } else {
        refuse(new Error(`unexpected packet in state ${state}: ${text.slice(0, 200)}`));
      }
    }
    (async () => {
      const opening = await pollRequest("GET", POLL_PATH);
      if (opening.status !== 200 || opening.text[0] !== "0") {
        return refuse(new Error(`open ${opening.status} ${opening.text.slice(0, 200)}`));
      }
      path = `${POLL_PATH}&sid=${encodeURIComponent(JSON.parse(opening.text.slice(1)).sid)}`;
      post(`40${JSON.stringify({ token: token(n) })}`);
      while (!client.closed) {
        const answer = await pollRequest("GET", path);
        if (client.closed) break;
        if (answer.status !== 200) {
          count(`poll_get_http_${answer.status}`);
          if (settled) disconnects += 1;
          client.closed = true;
          refuse(new Error(`GET ${answer.status} ${answer.text.slice(0, 200)}`));
          break;
        }
        for (const text of answer.text.split("\x1e")) packet(text);
      }
    })().catch(refuse);
    client.close = async () => {
      if (client.closed) return;
      client.closed = true;
      post("1", true); // Engine.IO close: the server ends the pending poll
      await posting;
    };
  });
}

// -- scenarios -----------------------------------------------------------------------------------

async function fanout() {
  const inflight = Number(opt.inflight);
  let delivered = 0;
  let posted = 0;
  let httpInFlight = 0;
  let waitingForDeliveries = false;
  let stop = false;
  let members = CLIENTS;
  const onEvent = () => {
    delivered += 1;
    if (waitingForDeliveries && posted - delivered / members < inflight) pump();
  };
  const { clients } = await connectMany(CLIENTS, Number(opt["connect-concurrency"]), (n) =>
    wsClient(n, { onEvent }),
  );
  members = clients.length;
  // a few broadcasts in flight, counted from the clients' side (posted and not yet delivered
  // to everyone), so that no backlog builds up in the server
  function pump() {
    waitingForDeliveries = false;
    while (!stop && httpInFlight < inflight) {
      if (posted - delivered / members >= inflight) {
        waitingForDeliveries = true;
        return;
      }
      posted += 1;
      httpInFlight += 1;
      broadcast({ title: "bench", seq: posted }).then(() => {
        httpInFlight -= 1;
        pump();
      });
    }
  }
  pump();
  await sleep(WARMUP * 1000);
  const stopMeter = meter();
  const delivered0 = delivered;
  const posted0 = posted;
  await sleep(SECONDS * 1000);
  const figures = stopMeter();
  const inWindow = delivered - delivered0;
  const postedInWindow = posted - posted0;
  stop = true;
  const everything = () => httpInFlight === 0 && delivered >= posted * clients.length;
  await waitFor(everything, Number(opt.drain));
  await closeAll(clients);
  return {
    ...figures,
    clients: clients.length,
    inflight,
    deliveries_per_s: inWindow / figures.seconds,
    broadcasts_per_s: postedInWindow / figures.seconds,
    missing: posted * clients.length - delivered,
  };
}

async function latencyOver(clients, received, rate) {
  await sleep(WARMUP * 1000);
  const stopMeter = meter();
  const { GET: getsBefore, POST: postsBefore } = pollRequests;
  const sent = await broadcastAtRate(rate, SECONDS);
  const figures = stopMeter();
  figures.pollGets = pollRequests.GET - getsBefore;
  figures.pollPosts = pollRequests.POST - postsBefore;
  const expected = sent * clients.length;
  await waitFor(() => received.length >= expected, Number(opt.drain));
  return {
    ...figures,
    clients: clients.length,
    rate,
    broadcasts: sent,
    deliveries: received.length,
    missing: expected - received.length,
    ...percentiles(received),
  };
}

async function latency() {
  const received = [];
  const onEvent = (buf) => {
    const now = performance.now();
    received.push(now - sentAtOf(buf.toString("utf8", 2)));
  };
  const { clients } = await connectMany(CLIENTS, Number(opt["connect-concurrency"]), (n) =>
    wsClient(n, { onEvent }),
  );
  const result = await latencyOver(clients, received, Number(opt.rate));
  await closeAll(clients);
  return result;
}

async function polling() {
  const received = [];
  const onEvent = (text) => {
    const now = performance.now();
    received.push(now - sentAtOf(text.slice(2)));
  };
  const { clients } = await connectMany(CLIENTS, Math.min(20, CLIENTS), (n) =>
    pollClient(n, { onEvent }),
  );
  const result = await latencyOver(clients, received, Number(opt.rate));
  result.transport = "polling";
  await Promise.all(clients.map((client) => client.close()));
  return result;
}

async function idle() {
  await sleep(1000);
  const before = serverRssKb();
  const { clients, seconds } = await connectMany(
    CLIENTS,
    Number(opt["connect-concurrency"]),
    (n) => wsClient(n),
  );
  await sleep(Number(opt.settle) * 1000);
  const stopMeter = meter(); // the server's CPU while idle with everyone connected
  await sleep(1000);
  const figures = stopMeter();
  const after = serverRssKb();
  await closeAll(clients);
  return {
    ...figures,
    clients: clients.length,
    connect_seconds: seconds,
    rss_before_kb: before,
    rss_after_kb: after,
    rss_per_conn_kb: (after - before) / clients.length,
  };
}

async function connects() {
  const concurrency = Number(opt.concurrency);
  let completed = 0;
  let measuring = false;
  let stop = false;
  let failures = 0;
  let next = 0;
  const pool = Math.max(1000, concurrency * 4); // distinct users, tokens signed once
  async function worker() {
    while (!stop) {
      const n = next++ % pool;
      try {
        const client = await wsClient(n);
        if (measuring) completed += 1;
        await closeClient(client);
      } catch (error) {
        failures += 1;
        count("cycle_failed");
        if (failures <= 3) log(`cycle failed: ${error.message}`);
        await sleep(10);
      }
    }
  }
  for (let n = 0; n < pool; n += 1) token(n);
  const workers = Array.from({ length: concurrency }, worker);
  await sleep(WARMUP * 1000);
  const stopMeter = meter();
  measuring = true;
  await sleep(SECONDS * 1000);
  measuring = false;
  const figures = stopMeter();
  const done = completed;
  stop = true;
  await Promise.all(workers);
  return {
    ...figures,
    concurrency,
    cycles: done,
    cycles_per_s: done / figures.seconds,
    failures,
  };
}

/** Counts acks to `join_room` ({ok}) while `measuring`; `stop` ends the chains of joins. */
function ackCounter() {
  const counter = { acked: 0, refused: 0, measuring: false, stop: false };
  counter.answered = (ok) => {
    if (!ok) counter.refused += 1;
    if (counter.measuring) counter.acked += 1;
    return !counter.stop; // whether to send the next
  };
  return counter;
}

/** Warm up, count acks for SECONDS, stop the joins and close: the acks scenarios' figures. */
async function measureAcks(counter, clients, close) {
  await sleep(WARMUP * 1000);
  const stopMeter = meter();
  const refused0 = counter.refused;
  counter.measuring = true;
  await sleep(SECONDS * 1000);
  counter.measuring = false;
  const figures = stopMeter();
  counter.stop = true;
  await sleep(200);
  await close(clients);
  return {
    ...figures,
    clients: clients.length,
    acks: counter.acked,
    acks_per_s: counter.acked / figures.seconds,
    refused: counter.refused - refused0,
  };
}

async function acks() {
  const counter = ackCounter();
  const onAck = (buf, client) => {
    if (!counter.answered(/"ok":\s*true/.test(buf.toString("utf8")))) return;
    client.ackId += 1;
    client.send(JOIN_FRAME(client.ackId)); // exactly one join_room in flight per client
  };
  const { clients } = await connectMany(CLIENTS, Number(opt["connect-concurrency"]), (n) =>
    wsClient(n, { onAck }),
  );
  for (const client of clients) {
    client.ackId = 2; // 1 was the set-up join
    client.send(JOIN_FRAME(client.ackId));
  }
  return measureAcks(counter, clients, closeAll);
}

// acks_client: the same with the official socket.io-client (WebSocket only), as an app
// would: `emit("join_room", ..., ack)`, the next one from the ack's callback
async function acksClient() {
  const counter = ackCounter();
  const open = (n) =>
    new Promise((resolve, reject) => {
      const socket = io(opt.url, {
        auth: { token: token(n) },
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
      });
      socket.once("auth_success", () => resolve(socket));
      socket.once("connect_error", reject);
    });
  const { clients } = await connectMany(CLIENTS, Number(opt["connect-concurrency"]), open);
  const join = (socket) =>
    socket.emit("join_room", { roomId: ROOM }, (answer) => {
      if (counter.answered(answer?.ok === true)) join(socket); // one in flight per client
    });
  clients.forEach(join);
  return measureAcks(counter, clients, async (sockets) => {
    for (const socket of sockets) socket.disconnect();
  });
}

// polling_close: each request on a connection of its own, closed after it, as socket.io-client
// does in Node (engine.io-client's XMLHttpRequest there takes `agent: false`): a room's polls
// all reconnect at once after each broadcast
const SCENARIOS = {
  fanout,
  latency,
  idle,
  connects,
  polling,
  polling_close: polling,
  acks,
  acks_client: acksClient,
};

const run = SCENARIOS[opt.scenario];
if (!run) fail(`unknown scenario ${opt.scenario}`);
const result = await run();
process.stdout.write(
  `${JSON.stringify({ scenario: opt.scenario, ...result, disconnects, errors })}\n`,
);
process.exit(0);
