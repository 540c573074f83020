// The client against a real gateway: live events and the cursor, joins, dedupe, gaps.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { GatewayClient, GatewayError } from "../index.js";
import { Gateway, recordedClient, token, waitFor } from "../test-support/gateway.mjs";

describe("against one gateway", { concurrency: true }, () => {
  let gateway;
  before(async () => {
    gateway = await new Gateway({ REPLAY_MAX_EVENTS: "2" }).start();
  });
  after(() => gateway.cleanup());

  for (const transport of ["websocket", "polling"]) {
    test(`connects, joins, receives broadcasts, the cursor advances (${transport})`, async () => {
      const { client, record } = await recordedClient(GatewayClient, gateway.url, {
        token: () => `${tokenFor("a-" + transport)}`,
        transports: [transport],
      });
      try {
        client.connect();
        assert.equal(client.state, "connecting");
        await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
        assert.equal(client.state, "connected");
        assert.equal(client.stateDetail.transport, transport);
        assert.equal(record.auths[0].userId, "a-" + transport);
        const room = `availability-a-${transport}`;
        const answer = await client.join(room);
        assert.equal(answer.ok, true);
        assert.equal(answer.roomId, room);
        assert.deepEqual(client.rooms, [room]);
        const posted = [];
        for (let i = 0; i < 5; i++) posted.push((await gateway.broadcast({ data: { i }, rooms: [room] })).eventId);
        await waitFor(() => record.events.length === 5, 10000, "five events");
        assert.deepEqual(record.ids(), posted);
        assert.equal(client.cursor, posted.at(-1));
        assert.deepEqual(record.events.map((e) => e.payload.i), [0, 1, 2, 3, 4]);
        assert.ok(record.events.every((e) => e.name === "notification" && e.info.replay === false));
        // the user's own room needs no join
        const own = await gateway.broadcast({ data: { own: true }, users: ["a-" + transport] });
        await waitFor(() => client.cursor === own.eventId, 10000, "the user's event");
        assert.deepEqual(await client.leave(room), { ok: true, roomId: room });
        assert.deepEqual(client.rooms, []);
        assert.deepEqual(record.errors, []);
      } finally {
        client.close();
      }
      assert.equal(client.state, "closed");
    });
  }

  test("a refused join rejects with the gateway's error and forgets the room", async () => {
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => tokenFor("refused"),
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      await assert.rejects(client.join("shop-s9"), (error) => {
        assert.ok(error instanceof GatewayError);
        assert.equal(error.code, "forbidden");
        assert.equal(error.roomId, "shop-s9");
        return true;
      });
      await assert.rejects(client.join("no-such-room"), { code: "unknown_room" });
      assert.deepEqual(client.rooms, []);
      // each refusal reported once (the gateway's error event, naming the client event)
      assert.deepEqual(record.errors.map((e) => [e.code, e.event]), [
        ["forbidden", "join_room"],
        ["unknown_room", "join_room"],
      ]);
    } finally {
      client.close();
    }
  });

  test("an event replayed by two rooms on rejoin reaches the app once", async () => {
    const user = "dedupe";
    const room = "availability-dedupe";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => tokenFor(user),
      rooms: [room],
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const first = await gateway.broadcast({ data: { n: 0 }, rooms: [room] });
      await waitFor(() => client.cursor === first.eventId, 10000, "the first event");
      client.close();
      // missed while away: one to both rooms, one to each
      const both = await gateway.broadcast({ data: { n: 1 }, rooms: [room], users: [user] });
      const own = await gateway.broadcast({ data: { n: 2 }, users: [user] });
      const shared = await gateway.broadcast({ data: { n: 3 }, rooms: [room] });
      client.connect();
      await waitFor(() => record.catchUps.length === 2, 10000, "the rejoin's catch-up");
      const ids = record.ids();
      assert.deepEqual(ids, [first.eventId, both.eventId, own.eventId, shared.eventId]);
      assert.deepEqual(record.events.slice(1).map((e) => e.info.replay), [true, true, true]);
      // the handshake replayed the user's room (1, 2), the rejoin the shared room (1, 3)
      const summary = record.catchUps[1];
      assert.equal(summary.handshakeReplayed, 2);
      assert.deepEqual(summary.rooms, { [room]: 2 });
      assert.equal(summary.replayed, 4);
      assert.equal(client.replayed, 4);
      assert.equal(client.stats.duplicates, 1);
      assert.equal(client.cursor, shared.eventId);
      assert.deepEqual(record.refetches, []);
    } finally {
      client.close();
    }
  });

  test("a client that has seen no event still gets what its user's room missed", async () => {
    const user = "fresh";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => tokenFor(user),
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      assert.equal(record.events.length, 0);
      assert.equal(typeof client.cursor, "string", "auth_success gave a cursor");
      client.close();
      const missed = await gateway.broadcast({ data: { n: 1 }, users: [user] });
      client.connect();
      await waitFor(() => record.catchUps.length === 2, 10000, "the reconnection's catch-up");
      assert.deepEqual(record.ids(), [missed.eventId]);
      assert.equal(record.catchUps[1].handshakeReplayed, 1);
      assert.equal(client.cursor, missed.eventId);
    } finally {
      client.close();
    }
  });

  test("a gap on rejoin is one onRefetch, and the cursor moves past it", async () => {
    const room = "availability-gap";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => tokenFor("gap"),
      rooms: [room],
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const first = await gateway.broadcast({ data: { n: 0 }, rooms: [room] });
      await waitFor(() => client.cursor === first.eventId, 10000, "the first event");
      client.close();
      const missed = [];
      for (let n = 1; n <= 5; n++) missed.push((await gateway.broadcast({ data: { n }, rooms: [room] })).eventId);
      client.connect();
      await waitFor(() => record.catchUps.length === 2, 10000, "the rejoin's catch-up");
      // REPLAY_MAX_EVENTS=2: the two oldest are replayed, then the answer says gap
      assert.deepEqual(record.ids(), [first.eventId, ...missed.slice(0, 2)]);
      assert.deepEqual(record.refetches, [{ reason: "gap", rooms: [room] }]);
      assert.deepEqual(record.catchUps[1].gaps, [room]);
      assert.equal(client.cursor, missed.at(-1), "the cursor is the room's newest after a gap");
      const live = await gateway.broadcast({ data: { n: 6 }, rooms: [room] });
      await waitFor(() => client.cursor === live.eventId, 10000, "a live event");
      assert.equal(record.events.at(-1).info.replay, false);
      // nothing missed this time: no gap, nothing replayed
      client.close();
      client.connect();
      await waitFor(() => record.catchUps.length === 3, 10000, "the third catch-up");
      assert.equal(client.replayed, 0);
      assert.equal(record.refetches.length, 1);
      assert.equal(record.events.length, 4);
    } finally {
      client.close();
    }
  });

  test("duplicate ids from the socket are dropped, and the cursor never goes back", async () => {
    const { client, record } = await recordedClient(GatewayClient, gateway.url, { dedupeSize: 3 });
    const fake = (eventId) => client._onServerEvent("notification", { eventId, timestamp: "t" });
    for (const id of ["0000000000000005", "0000000000000005", "0000000000000003", "0000000000000006"])
      fake(id);
    assert.deepEqual(record.ids(), ["0000000000000005", "0000000000000003", "0000000000000006"]);
    assert.equal(client.cursor, "0000000000000006");
    assert.equal(client.stats.duplicates, 1);
    fake("0000000000000007"); // the set is bounded: the oldest id is forgotten
    fake("0000000000000005");
    assert.equal(record.events.length, 5);
    client.close();
  });

  test("a revoked user's client goes closed and says why", async (t) => {
    const user = "revoked";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: () => tokenFor(user),
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const response = await fetch(`${gateway.url}/disconnect`, {
        method: "POST",
        headers: { Authorization: `Bearer ${gateway.env.BROADCAST_TOKEN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ users: [user], reason: "test" }),
      });
      if (response.status === 404) {
        t.skip("this gateway has no POST /disconnect");
        return;
      }
      assert.ok(response.ok, `POST /disconnect answered ${response.status}`);
      await waitFor(() => client.state === "closed", 10000, "state closed");
      assert.equal(client.stateDetail.reason, "revoked");
      assert.deepEqual(record.errors.map((e) => e.code), ["revoked"]);
      // and with the user's tokens revoked, a new handshake is refused: closed again
      const revoke = await fetch(`${gateway.url}/revoke`, {
        method: "POST",
        headers: { Authorization: `Bearer ${gateway.env.BROADCAST_TOKEN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ sub: user, until: Math.floor(Date.now() / 1000) + 600 }),
      });
      assert.ok(revoke.ok, `POST /revoke answered ${revoke.status}`);
      const connects = client.stats.connects;
      client.connect();
      await waitFor(() => record.errors.length === 2, 10000, "the refused handshake");
      assert.equal(record.errors[1].code, "revoked");
      assert.equal(client.state, "closed");
      assert.equal(client.stats.connects, connects);
    } finally {
      client.close();
    }
  });
});

describe("against a gateway with a tight event rate", { concurrency: true }, () => {
  let gateway;
  before(async () => {
    // bursts of 4 events: a client in 12 rooms rejoins past the burst on every connection
    gateway = await new Gateway({ RATE_LIMIT_EVENTS: "2", RATE_LIMIT_DISCONNECT: "1000" }).start();
  });
  after(() => gateway.cleanup());

  for (const transport of ["websocket", "polling"]) {
    test(`joins refused rate_limited are sent again, and no room is lost (${transport})`, async () => {
      const rooms = Array.from({ length: 12 }, (_, n) => `availability-tight-${transport}-${n}`);
      const { client, record } = await recordedClient(GatewayClient, gateway.url, {
        token: () => tokenFor("tight-" + transport),
        transports: [transport],
        rooms,
      });
      try {
        client.connect();
        await waitFor(() => client.lastCatchUp, 30000, "the first catch-up");
        assert.deepEqual([...client.rooms].sort(), [...rooms].sort());
        assert.ok(record.errors.some((e) => e.code === "rate_limited"), "the burst was passed");
        const last = await gateway.broadcast({ data: { n: 1 }, rooms: [rooms.at(-1)] });
        await waitFor(() => client.cursor === last.eventId, 10000, "an event of the last room");
        const answers = await Promise.all(rooms.slice(0, 8).map((room) => client.join(room)));
        assert.ok(answers.every((answer) => answer.ok === true));
      } finally {
        client.close();
      }
    });
  }
});

function tokenFor(sub) {
  return token({ sub });
}
