// A gateway restart in the middle of a stream: the app sees every event once, in eventId
// order, over WebSocket and long-polling, after a crash (SIGKILL) and a graceful SIGTERM.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { GatewayClient } from "../index.js";
import {
  Gateway,
  assertIncreasing,
  broadcastRetrying,
  recordedClient,
  token,
  waitFor,
} from "../test-support/gateway.mjs";

const BEFORE_STOP = 10; // accepted events before the gateway is stopped (the stream goes on)
const WHILE_AWAY = 10; // accepted by the restarted gateway before the client may reconnect
const LIVE = 5; // posted after the client is back

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
        try {
          client.connect();
          await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
          // the stream: one event after another, not waiting for their delivery, retried
          // while the gateway is down (the same Idempotency-Key: a lost answer emits nothing twice)
          const producer = (async () => {
            while (streaming) await post();
          })();
          await waitFor(() => accepted.length >= BEFORE_STOP, 10000, "the first part of the stream");
          hold = gate();
          await gateway.restart(signal);
          restarted = true;
          const target = accepted.length + WHILE_AWAY;
          await waitFor(() => accepted.length >= target, 10000, "events while the client is away");
          streaming = false;
          await producer;
          assert.notEqual(client.state, "connected");
          hold.open(); // now it may reconnect: its catch-up replays what it missed
          await waitFor(() => client.lastCatchUp?.reconnection, 20000, "the reconnection's catch-up");
          for (let n = 0; n < LIVE; n++) await post();
          const last = accepted.at(-1).eventId;
          await waitFor(() => client.cursor === last, 10000, "the last event");

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
