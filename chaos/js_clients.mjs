// The soak's JS clients: GatewayClient (clients/js) instances, as apps run them. Reads one JSON
// line with their configs on stdin, reports on stdout (a JSON line each): deliveries, refetches,
// states; on {"stop": true}, each client's stats, then exits.
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
  const client = new GatewayClient(url, {
    path,
    transports,
    token: () => token,
    rooms,
    socketOptions: { reconnectionDelay: 200, reconnectionDelayMax: 2000, timeout: 10000 },
    onEvent(eventName, payload, info) {
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
  clients.set(name, client);
  client.connect();
}
