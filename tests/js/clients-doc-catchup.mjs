// Runs the catch-up module of docs/clients.md (extracted by tests/test_clients_doc.py, path in
// argv[2]) for the Python test: JSON commands on stdin, JSON reports on stdout, one a line.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const { connectGateway, inDeliveryOrder } = await import(pathToFileURL(process.argv[2]).href);
const report = (message) => process.stdout.write(JSON.stringify(message) + "\n");

let gateway = null;
let token = null; // what the next handshake sends: the test swaps it while disconnected

const commands = {
  order({ held, seen }) {
    const known = new Set(seen);
    const events = held.map((eventId) => ({ name: "notification", payload: { eventId } }));
    report({ type: "ordered", ids: inDeliveryOrder(events, known).map((e) => e.payload.eventId), seen: [...known] });
  },
  connect({ url, rooms, cursor, transports, token: first }) {
    token = first;
    gateway = connectGateway(url, {
      token: async () => token,
      rooms,
      cursor,
      socketOptions: { transports, forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500 },
      onEvent: (name, payload) => report({ type: "event", name, eventId: payload.eventId }),
      onRefetch: (refetch) => report({ type: "refetch", ...refetch }),
      onCaughtUp: ({ cursor: at, held }) => report({ type: "caught_up", cursor: at, held }),
      onError: (error) => report({ type: "error", code: error?.code ?? null, message: String(error?.message ?? error) }),
    });
    gateway.socket.on("connect", () => report({ type: "connected" }));
    gateway.socket.on("disconnect", (reason) => report({ type: "disconnected", reason }));
  },
  token({ token: next }) {
    token = next;
  },
  drop() {
    // a network loss, with no reconnection until `resume`: the test writes meanwhile
    gateway.socket.io.reconnection(false);
    gateway.socket.io.engine.close();
  },
  resume() {
    gateway.socket.io.reconnection(true);
    gateway.socket.connect();
  },
  cursor() {
    report({ type: "cursor", cursor: gateway.cursor });
  },
  exit() {
    gateway?.socket.disconnect();
    process.exit(0);
  },
};

createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  try {
    commands[command.op](command);
  } catch (err) {
    report({ type: "driver_error", message: String(err) });
  }
}).on("close", () => process.exit(0));
report({ type: "ready" });
