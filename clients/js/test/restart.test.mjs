// A gateway restart in the middle of a stream: the app sees every event once, in eventId
// order, over WebSocket and long-polling, after a crash (SIGKILL) and a graceful SIGTERM.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { GatewayClient } from "../index.js";
import {
  Gateway,
  assertIncreasing,
  broadcastRetrying,
  gateJoins,
  recordedClient,
  token,
  waitFor,
} from "../test-support/gateway.mjs";

const BEFORE_STOP = 10; // accepted events before the gateway is stopped (the stream goes on)
const WHILE_AWAY = 10; // accepted by the restarted gateway before the client may reconnect
const LIVE = 5; // live events held by the reconnection's catch-up, and delivered after it

/** A promise the test opens: held handshakes wait on it. */
function gate() {
  let open;
  const opened = new Promise((resolveOpen) => (open = resolveOpen));
  return { opened, open };
}

describe("gateway restart mid-stream", { concurrency: true }, () => {
  for (const transport of ["websocket", "polling"]) {
    for (const signal of ["SIGKILL", "SIGTERM"]) {
      test(`${transport}, ${signal}: nothing missed, nothing twice, in order`, async () => {
        const gateway = await new Gateway().start();
        const user = "stream-user";
        const room = "availability-stream";
        let hold = null; // while set, a (re)connection's handshake waits for it
        const { client, record } = await recordedClient(GatewayClient, gateway.url, {
          token: async () => {
            if (hold) await hold.opened;
            return token({ sub: user });
          },
          transports: [transport],
          rooms: [room],
        });
        const accepted = []; // {eventId, i, restarted}
        let restarted = false;
        let streaming = true;
        let next = 0;
        const post = async () => {
          const i = next++;
          // to the joined room, to the user's own room, and to both (replayed by both rooms)
          const target = [{ rooms: [room] }, { users: [user] }, { rooms: [room], users: [user] }][i % 3];
          const answer = await broadcastRetrying(gateway, {
            data: { i },
            ...target,
            idempotencyKey: `stream-${i}`,
          });
          accepted.push({ eventId: answer.eventId, i, restarted });
        };
        // the reconnection's rejoin is sent only once live events are held by its catch-up,
        // so they interleave with the replays: the room's replay (older ids) comes after the
        // user room's live events (newer ids), and the client must hold and sort them
        const joins = gateJoins(client);
        let boundary = null; // the newest id accepted before the client may reconnect
        const arrivals = []; // the reconnection's events as they came off the socket
        client.socket.onAny((name, payload) => {
          if (boundary == null || typeof payload?.eventId !== "string") return;
          arrivals.push({ eventId: payload.eventId, held: client._buffer.has(payload.eventId) });
        });
        const heldLive = () => arrivals.filter((a) => a.held && a.eventId > boundary).length;
        try {
          client.connect();
          await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
          // the stream: one event after another, not waiting for their delivery, retried
          // while the gateway is down (the same Idempotency-Key: a lost answer emits nothing
          // twice), on through the reconnection and its catch-up
          const producer = (async () => {
            while (streaming) await post();
          })();
          await waitFor(() => accepted.length >= BEFORE_STOP, 10000, "the first part of the stream");
          hold = gate();
          await gateway.restart(signal);
          restarted = true;
          const target = accepted.length + WHILE_AWAY;
          await waitFor(() => accepted.length >= target, 10000, "events while the client is away");
          assert.notEqual(client.state, "connected");
          joins.hold();
          boundary = accepted.at(-1).eventId;
          hold.open(); // now it may reconnect: its catch-up replays what it missed
          await waitFor(() => heldLive() >= LIVE, 10000, "live events held by the catch-up");
          joins.open();
          await waitFor(() => client.lastCatchUp?.reconnection, 20000, "the reconnection's catch-up");
          const caughtUp = accepted.length;
          await waitFor(() => accepted.length >= caughtUp + LIVE, 10000, "live events after the catch-up");
          streaming = false;
          await producer;
          const last = accepted.at(-1).eventId;
          await waitFor(() => client.cursor === last, 10000, "the last event");

          // the catch-up got events out of order (a replay older than a held live event)
          assert.ok(
            arrivals.some((a, k) => a.held && arrivals.slice(0, k).some((b) => b.eventId > a.eventId)),
            JSON.stringify(arrivals),
          );
          // and live events after it
          assert.ok(
            record.events.filter((e) => !e.info.replay && e.payload.eventId > boundary).length >= LIVE,
          );
          const ids = record.ids();
          assertIncreasing(assert, ids);
          assert.deepEqual(ids, accepted.map((a) => a.eventId));
          assert.deepEqual(
            record.events.map((e) => e.payload.i),
            accepted.map((a) => a.i),
          );
          assert.deepEqual(
            record.events.map((e) => e.payload.i),
            Array.from({ length: next }, (_, i) => i),
          );
          assert.ok(accepted.filter((a) => a.restarted).length >= WHILE_AWAY + LIVE);
          const rejoin = record.catchUps.at(-1);
          assert.ok(rejoin.replayed >= WHILE_AWAY, JSON.stringify(rejoin));
          assert.ok(record.events.filter((e) => e.info.replay).length >= WHILE_AWAY);
          assert.equal(client.replayed, rejoin.replayed);
          assert.ok(record.states.some((s) => s.state === "reconnecting"));
          assert.equal(client.state, "connected");
          assert.equal(client.stateDetail.transport, transport);
          assert.deepEqual(record.refetches, []);
          assert.deepEqual(record.errors, []);
        } finally {
          streaming = false;
          hold?.open();
          client.close();
          await gateway.cleanup();
        }
      });
    }
  }
});
