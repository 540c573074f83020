// The soak's JS clients: GatewayClient (clients/js) instances, as apps run them. Reads one JSON
// line with their configs on stdin, reports on stdout (a JSON line each): deliveries, every
// arrival the library drops as a duplicate (with whether it came within one catch-up),
// refetches, states; "ready" once a client's first joins are answered; on {"stop": true}, each
// client's stats, then exits.
import { createInterface } from "node:readline";
import { GatewayClient } from "../clients/js/index.js";

const report = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const clients = new Map();
const lines = createInterface({ input: process.stdin });

lines.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.clients) {
    for (const config of command.clients) start(config);
  } else if (command.stop) {
    const stats = {};
    for (const [name, client] of clients) {
      stats[name] = client.stats;
      client.close();
    }
    report({ type: "stopped", stats });
    setTimeout(() => process.exit(0), 100);
  }
});

function start({ name, url, path, transports, token, rooms }) {
  const delivered = new Set();
  let arrived = new Set(); // this connection's arrivals
  const client = new GatewayClient(url, {
    path,
    transports,
    token: () => token,
    socketOptions: { reconnectionDelay: 200, reconnectionDelayMax: 2000, timeout: 10000 },
    onEvent(eventName, payload, info) {
      delivered.add(payload.eventId);
      report({ type: "event", client: name, eventId: payload.eventId, at: Date.now(), replay: Boolean(info?.replay) });
    },
    onRefetch(detail) {
      report({ type: "refetch", client: name, detail });
    },
    onState(state, detail) {
      report({ type: "state", client: name, state, detail: detail ?? null });
    },
    onError(error) {
      report({ type: "error", client: name, code: error.code, message: error.message });
    },
  });
  // every arrival, before the library dedupes it: a duplicate is judged as the python
  // clients' are (again after delivery: never explained; twice in one catch-up: maybe)
  client.socket.on("connect", () => {
    arrived = new Set();
  });
  client.socket.prependAny((eventName, payload) => {
    const eventId = payload?.eventId;
    if (typeof eventId !== "string") return;
    if (delivered.has(eventId)) {
      report({ type: "duplicate", client: name, eventId, phase: "delivered" });
    } else if (arrived.has(eventId)) {
      report({ type: "duplicate", client: name, eventId, phase: "catchup" });
    }
    arrived.add(eventId);
  });
  clients.set(name, client);
  client.connect();
  // joined as an app joins, once connected; rejoined by the library on every reconnection
  const joinAll = async () => {
    for (const room of rooms) {
      for (;;) {
        try {
          await client.join(room);
          break;
        } catch (error) {
          report({ type: "error", client: name, code: error.code, message: `join ${room}: ${error.message}` });
          await new Promise((resolve) => setTimeout(resolve, 200)); // then again
        }
      }
    }
    report({ type: "ready", client: name });
  };
  client.socket.once("connect", () => void joinAll());
}
