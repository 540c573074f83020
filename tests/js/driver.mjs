// Drives one official socket.io-client for the Python tests: JSON commands on stdin, JSON
// reports on stdout (one per line), so every test scenario runs on the JS client too.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

let socket = null;
let lastEventId = null;  // with `reconnect`, sent again in the handshake, as a real app would
const report = (message) => process.stdout.write(JSON.stringify(message) + "\n");

const commands = {
  connect({ url, path, transports, auth, reconnect }) {
    const handshake = reconnect ? (cb) => cb(lastEventId ? { ...auth, lastEventId } : auth) : auth;
    socket = io(url, {
      path, transports, auth: handshake, forceNew: true, timeout: 10000,
      reconnection: Boolean(reconnect), reconnectionDelay: 100, reconnectionDelayMax: 500,
    });
    socket.on("connect", () => report({ type: "connected", id: socket.id, transport: socket.io.engine.transport.name }));
    socket.on("connect_error", (err) => report({ type: "connect_error", message: err.message, data: err.data ?? null }));
    socket.on("disconnect", (reason) => report({ type: "disconnect", reason }));
    socket.onAny((event, ...args) => {
      if (args[0]?.eventId) lastEventId = args[0].eventId;
      report({ type: "event", event, args });
    });
  },
  emit({ id, event, args, ack }) {
    if (ack) {
      socket.timeout(10000).emit(event, ...args, (err, ...response) => {
        report(err ? { type: "ack_timeout", id } : { type: "ack", id, args: response });
      });
    } else {
      socket.emit(event, ...args);
    }
  },
  disconnect() {
    socket?.disconnect();
  },
  exit() {
    socket?.disconnect();
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
