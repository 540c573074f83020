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

const TOTAL = 30; // events in the stream
const KILL_AFTER = 10; // accepted events before the gateway is stopped

describe("gateway restart mid-stream", { concurrency: true }, () => {
  for (const transport of ["websocket", "polling"]) {
    for (const signal of ["SIGKILL", "SIGTERM"]) {
      test(`${transport}, ${signal}: nothing missed, nothing twice, in order`, async () => {
        const gateway = await new Gateway().start();
        const user = "stream-user";
        const room = "availability-stream";
        const { client, record } = await recordedClient(GatewayClient, gateway.url, {
          token: () => token({ sub: user }),
          transports: [transport],
          rooms: [room],
          // slower than the gateway's restart, so some events are posted while it reconnects
          socketOptions: { reconnectionDelay: 300, reconnectionDelayMax: 600 },
        });
        const accepted = []; // {eventId, i, clientState}
        let stopped = false;
        try {
          client.connect();
          await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
          // the stream: to the joined room, to the user's own room, and to both
          const producer = (async () => {
            for (let i = 0; i < TOTAL && !stopped; i++) {
              const target = [{ rooms: [room] }, { users: [user] }, { rooms: [room], users: [user] }][i % 3];
              const answer = await broadcastRetrying(gateway, {
                data: { i },
                ...target,
                idempotencyKey: `stream-${transport}-${signal}-${i}`,
              });
              accepted.push({ eventId: answer.eventId, i, clientState: client.state });
            }
          })();
          await waitFor(() => accepted.length >= KILL_AFTER, 10000, "the first part of the stream");
          await gateway.restart(signal); // the producer keeps posting: retried until it is back
          await producer;
          await waitFor(() => record.events.length >= TOTAL, 20000, `${TOTAL} events`);
          // a moment for a late duplicate to show: a live event after the stream must come next
          const last = await gateway.broadcast({ data: { i: TOTAL }, rooms: [room] });
          await waitFor(() => client.cursor === last.eventId, 10000, "the closing event");

          const ids = record.ids();
          assert.equal(ids.length, TOTAL + 1);
          assertIncreasing(assert, ids);
          assert.deepEqual(ids, [...accepted.map((a) => a.eventId), last.eventId]);
          assert.deepEqual(
            record.events.map((e) => e.payload.i),
            Array.from({ length: TOTAL + 1 }, (_, i) => i),
          );
          // it did reconnect, and some of the stream was posted while it was away
          assert.ok(client.stats.reconnects >= 1, "no reconnection");
          const whileAway = accepted.filter((a) => a.i >= KILL_AFTER && a.clientState !== "connected");
          assert.ok(whileAway.length > 0, "nothing was posted while the client was reconnecting");
          assert.ok(record.states.some((s) => s.state === "reconnecting"));
          const rejoin = record.catchUps.at(-1);
          assert.ok(rejoin.reconnection && rejoin.replayed > 0, JSON.stringify(rejoin));
          assert.ok(record.events.some((e) => e.info.replay));
          assert.equal(client.state, "connected");
          assert.equal(client.stateDetail.transport, transport);
          assert.deepEqual(record.refetches, []);
          assert.deepEqual(record.errors, []);
        } finally {
          stopped = true;
          client.close();
          await gateway.cleanup();
        }
      });
    }
  }
});
