// join() and close() while a (re)connection's catch-up is under way (its rejoins held back by
// a test hook, so that the catch-up stays open for as long as the test needs).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { GatewayClient } from "../index.js";
import { Gateway, gateJoins, recordedClient, token, waitFor } from "../test-support/gateway.mjs";

const catchingUp = (client) => client.state === "connected" && client.stateDetail.catchingUp === true;

describe("during a catch-up", { concurrency: true }, () => {
  let gateway;
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  before(async () => {
    process.on("unhandledRejection", onUnhandled);
    gateway = await new Gateway().start();
  });
  after(async () => {
    process.off("unhandledRejection", onUnhandled);
    await gateway.cleanup();
    assert.deepEqual(unhandled, [], "unhandled rejections");
  });

  test("join() of a room the catch-up rejoins, or of a new one, joins it once", async () => {
    const user = "join-during";
    const kept = "availability-join-kept";
    const added = "availability-join-added";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => token({ sub: user }),
      rooms: [kept],
    });
    const joins = gateJoins(client);
    try {
      joins.hold();
      client.connect();
      await waitFor(() => catchingUp(client) && record.auths.length === 1, 10000, "a catch-up");
      const answers = [client.join(kept), client.join(added), client.join(added)];
      joins.open();
      const [keptAnswer, addedAnswer, againAnswer] = await Promise.all(answers);
      assert.equal(keptAnswer.roomId, kept);
      assert.equal(addedAnswer.roomId, added);
      assert.equal(againAnswer, addedAnswer, "both calls are answered by the one join");
      assert.equal(joins.count(kept), 1, JSON.stringify(joins.emitted));
      assert.equal(joins.count(added), 1, JSON.stringify(joins.emitted));
      await waitFor(() => client.lastCatchUp, 10000, "the catch-up's end");
      assert.deepEqual(Object.keys(client.lastCatchUp.rooms).sort(), [added, kept]);
      assert.deepEqual(client.rooms, [kept, added]);
      assert.equal(record.catchUps.length, 1);
      assert.equal(client.stateDetail.catchingUp, false);
      // both rooms are live
      const live = await gateway.broadcast({ data: { n: 1 }, rooms: [added] });
      await waitFor(() => client.cursor === live.eventId, 10000, "a live event of the added room");
      assert.deepEqual(record.ids(), [live.eventId]);
      assert.deepEqual(record.errors, []);
    } finally {
      client.close();
    }
  });

  test("close() during a catch-up: joins reject, nothing is delivered out of order", async () => {
    const user = "close-during";
    const room = "availability-close";
    const later = "availability-close-later";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => token({ sub: user }),
      rooms: [room],
    });
    const joins = gateJoins(client);
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const first = await gateway.broadcast({ data: { n: 0 }, rooms: [room] });
      await waitFor(() => client.cursor === first.eventId, 10000, "the first event");
      client.close();
      // missed while away: the room's (older), then the user's own room's (newer)
      const roomMissed = await gateway.broadcast({ data: { n: 1 }, rooms: [room] });
      const ownMissed = await gateway.broadcast({ data: { n: 2 }, users: [user] });
      joins.hold();
      client.connect();
      // the handshake replayed the user's room (auth_success follows it); the room's replay waits
      await waitFor(() => catchingUp(client) && record.auths.length === 2, 10000, "the catch-up");
      const pending = client.join(later);
      client.close();
      await assert.rejects(pending, { code: "closed" });
      assert.equal(client.state, "closed");
      joins.open(); // nothing is sent: the socket is closed
      assert.equal(joins.emitted.length, 1, JSON.stringify(joins.emitted));
      // the user's room's replay was held, not delivered ahead of the room's older event
      assert.deepEqual(record.ids(), [first.eventId]);
      assert.equal(client.cursor, first.eventId);

      client.connect(); // catches up from the same cursor, now with the room's replay
      await waitFor(() => record.catchUps.length === 2, 10000, "the next catch-up");
      assert.equal(record.catchUps[1].complete, true);
      assert.deepEqual(record.ids(), [first.eventId, roomMissed.eventId, ownMissed.eventId]);
      assert.deepEqual(record.events.slice(1).map((e) => e.info.replay), [true, true]);
      // a room whose join() was cut short by close() is still kept, and joined now
      assert.deepEqual(client.rooms, [room, later]);
      assert.equal(joins.count(later), 1);
      assert.equal(client.state, "connected");
      assert.deepEqual(record.errors, []);
    } finally {
      client.close();
    }
  });
});
