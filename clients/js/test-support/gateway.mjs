// Test helpers: a real gateway process (python -m realtime), tokens, broadcasts, waitFor.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import jwt from "jsonwebtoken";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
// where the gateway runs from (its cwd and PYTHONPATH): the repo root unless GATEWAY_ROOT says
const GATEWAY_ROOT = process.env.GATEWAY_ROOT ?? ROOT;
export const JWT_SECRET = "js-client-tests-jwt-secret-0123456789abcdef";
export const BROADCAST_TOKEN = "js-client-tests-broadcast-token-0123456789";
const PYTHON = process.env.GATEWAY_PYTHON ?? "python3";
const START_TIMEOUT_MS = 30000;

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** A signed HS256 token; `expiresIn` in seconds. */
export function token({ sub = "u1", role = "customer", shopIds, expiresIn = 600 } = {}) {
  const claims = { sub, role };
  if (shopIds) claims.shop_ids = shopIds;
  return jwt.sign(claims, JWT_SECRET, { algorithm: "HS256", expiresIn });
}

/** Polls `predicate` every 10 ms until it holds (resolves its value) or `timeoutMs` passes. */
export function waitFor(predicate, timeoutMs = 10000, what = "condition") {
  const started = Date.now();
  return new Promise((resolveWait, reject) => {
    const check = () => {
      let value;
      try {
        value = predicate();
      } catch (error) {
        reject(error);
        return;
      }
      if (value) resolveWait(value);
      else if (Date.now() - started > timeoutMs) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 10);
    };
    check();
  });
}

// gateways still running when this process exits (a test that failed before its cleanup, an
// uncaught error) are killed with it, never left behind
const live = new Set();
const dirs = new Set();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** One gateway process; `restart()` keeps its port and store. */
export class Gateway {
  constructor(env = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "gateway-js-client-"));
    dirs.add(this.dir);
    this.env = {
      ...process.env,
      PYTHONPATH: GATEWAY_ROOT,
      STORE_PATH: join(this.dir, "realtime.db"),
      JWT_SECRET,
      BROADCAST_TOKEN,
      LOG_LEVEL: "warning",
      ...env,
    };
    this.process = null;
    this.stderr = "";
  }

  async start() {
    this.port ??= await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const child = spawn(PYTHON, ["-m", "realtime", "--port", String(this.port)], {
      cwd: GATEWAY_ROOT,
      env: this.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.process = child;
    live.add(child);
    child.once("exit", () => live.delete(child));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-20000);
    });
    child.stdout.setEncoding("utf8");
    let out = "";
    await new Promise((resolveStart, reject) => {
      const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${this.stderr}`)), START_TIMEOUT_MS);
      const onData = (chunk) => {
        out += chunk;
        if (out.includes("realtime gateway listening on ")) {
          clearTimeout(timer);
          child.stdout.off("data", onData);
          child.stdout.resume(); // keep draining
          resolveStart();
        }
      };
      child.stdout.on("data", onData);
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(new Error(`gateway could not start (${PYTHON}): ${error.message}`));
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`gateway exited (${code}) before listening:\n${this.stderr}`));
      });
    });
    return this;
  }

  /** Stops the process: SIGKILL (a crash) or SIGTERM (a graceful shutdown). */
  async stop(signal = "SIGKILL") {
    const child = this.process;
    this.process = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill(signal);
    await exited;
  }

  async restart(signal = "SIGKILL") {
    await this.stop(signal);
    return this.start();
  }

  async cleanup() {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** POST /broadcast; resolves with the 202 body `{eventId, rooms}`. */
  async broadcast({ event = "notification", data = {}, rooms, users, idempotencyKey }) {
    const body = { event, data };
    if (rooms) body.rooms = rooms;
    if (users) body.users = users;
    const headers = { Authorization: `Bearer ${BROADCAST_TOKEN}`, "Content-Type": "application/json" };
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    const response = await fetch(`${this.url}/broadcast`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (response.status !== 202) throw new Error(`broadcast ${response.status}: ${JSON.stringify(answer)}`);
    return answer;
  }
}

/** A GatewayClient whose callbacks record everything; fast reconnection for tests. */
export async function recordedClient(GatewayClient, url, options = {}) {
  const record = { events: [], states: [], errors: [], refetches: [], auths: [], catchUps: [] };
  const client = new GatewayClient(url, {
    token: () => token(),
    ...options,
    socketOptions: { reconnectionDelay: 100, reconnectionDelayMax: 400, ...options.socketOptions },
    onEvent: (name, payload, info) => record.events.push({ name, payload, info }),
    onState: (state, detail) => record.states.push({ state, detail }),
    onError: (error) => record.errors.push(error),
    onRefetch: (info) => record.refetches.push(info),
    onAuth: (payload) => record.auths.push(payload),
    onCatchUp: (summary) => record.catchUps.push(summary),
  });
  record.ids = () => record.events.map((event) => event.payload.eventId);
  return { client, record };
}

/** Asserts `ids` are strictly increasing (so: each once, in eventId order). */
export function assertIncreasing(assert, ids) {
  for (let i = 1; i < ids.length; i++) {
    assert.ok(ids[i - 1] < ids[i], `event ${ids[i]} came after ${ids[i - 1]} (index ${i})`);
  }
}

/** POST /broadcast until it is accepted (the gateway may be down or restarting), with an
 * Idempotency-Key so a retry of a request whose answer was lost emits nothing again. */
export async function broadcastRetrying(gateway, request, timeoutMs = 20000) {
  const started = Date.now();
  for (;;) {
    try {
      return await gateway.broadcast(request);
    } catch (error) {
      if (Date.now() - started > timeoutMs) throw error;
      await new Promise((resolveLater) => setTimeout(resolveLater, 20)); // then ask again
    }
  }
}

/** Holds a client's `join_room` emits while `hold()` is on (a test hook on the client's
 * `_emitJoin`): a catch-up then stays open, or its rejoins come after live events, for as long
 * as a test needs. `emitted` lists the joins sent, `held` those waiting. */
export function gateJoins(client) {
  const emitJoin = client._emitJoin.bind(client);
  const joins = { emitted: [], held: [], holding: false };
  const send = (roomId, lastEventId) => {
    if (!client.socket.connected) return; // the next connection rejoins
    joins.emitted.push({ roomId, lastEventId });
    emitJoin(roomId, lastEventId);
  };
  client._emitJoin = (roomId, lastEventId) => {
    if (joins.holding) joins.held.push([roomId, lastEventId]);
    else send(roomId, lastEventId);
  };
  joins.hold = () => {
    joins.holding = true;
  };
  joins.open = () => {
    joins.holding = false;
    for (const [roomId, lastEventId] of joins.held.splice(0)) send(roomId, lastEventId);
  };
  joins.count = (roomId) => joins.emitted.filter((join) => join.roomId === roomId).length;
  return joins;
}
