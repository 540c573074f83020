// Token refresh: auth_expiring -> refreshToken -> authenticate, on the same socket past the
// first token's exp; and, when the refresh fails, token_expired -> a new handshake.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import jwt from "jsonwebtoken";
import { GatewayClient } from "../index.js";
import { Gateway, recordedClient, token, waitFor } from "../test-support/gateway.mjs";

const LIFETIME_S = 4; // the first token's; auth_expiring comes AUTH_EXPIRING_LEAD before exp
const expiryMs = (signed) => jwt.decode(signed).exp * 1000;

describe("token refresh", { concurrency: true }, () => {
  let gateway;
  before(async () => {
    gateway = await new Gateway({ AUTH_EXPIRING_LEAD: "3" }).start();
  });
  after(() => gateway.cleanup());

  test("refreshToken keeps the socket connected past the first token's exp", async () => {
    const user = "refresh-ok";
    const room = "availability-refresh";
    const first = token({ sub: user, expiresIn: LIFETIME_S });
    const refreshes = [];
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: first,
      rooms: [room],
      refreshToken: async (info) => {
        refreshes.push(info);
        return token({ sub: user, expiresIn: 600 });
      },
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const socketId = client.socket.id;
      await waitFor(() => record.auths.length === 2, 10000, "the refreshed auth_success");
      assert.equal(refreshes.length, 1);
      assert.ok(refreshes[0].secondsLeft <= 3 && refreshes[0].expiresAt, JSON.stringify(refreshes[0]));
      assert.ok(Date.parse(record.auths[1].expiresAt) > expiryMs(first) + 500_000);
      // past the first token's exp (waiting on the clock is the point of this test)
      await waitFor(() => Date.now() > expiryMs(first) + 1000, 10000, "the first token's exp");
      const live = await gateway.broadcast({ data: { after: "exp" }, rooms: [room] });
      await waitFor(() => client.cursor === live.eventId, 10000, "an event after exp");
      assert.equal(client.state, "connected");
      assert.equal(client.socket.id, socketId, "the socket was replaced");
      assert.equal(client.stats.connects, 1);
      assert.deepEqual(record.errors, []);
      assert.ok(!record.states.some((s) => s.state === "reconnecting"));
    } finally {
      client.close();
    }
  });

  test("a failed refresh is reported; at exp the client reconnects with a fresh token()", async () => {
    const user = "refresh-failed";
    const room = "availability-refresh-failed";
    const issued = [];
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      // the first handshake gets a short-lived token, every later one a long-lived one
      token: () => {
        const signed = token({ sub: user, expiresIn: issued.length === 0 ? LIFETIME_S : 600 });
        issued.push(signed);
        return signed;
      },
      refreshToken: async () => {
        throw new Error("the identity provider is down");
      },
      rooms: [room],
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      const socketId = client.socket.id;
      const before = await gateway.broadcast({ data: { n: 0 }, rooms: [room] });
      await waitFor(() => client.cursor === before.eventId, 10000, "an event before exp");
      await waitFor(() => record.errors.some((e) => e.code === "token_expired"), 10000, "token_expired");
      assert.equal(record.errors[0].code, "refresh_failed");
      assert.equal(record.errors[0].cause.message, "the identity provider is down");
      await waitFor(() => record.catchUps.length === 2, 10000, "the reconnection's catch-up");
      assert.equal(client.state, "connected");
      assert.notEqual(client.socket.id, socketId);
      assert.equal(issued.length, 2);
      assert.deepEqual(client.rooms, [room]);
      const after = await gateway.broadcast({ data: { n: 1 }, rooms: [room] });
      await waitFor(() => client.cursor === after.eventId, 10000, "an event after the reconnection");
      assert.deepEqual(record.ids(), [before.eventId, after.eventId]);
    } finally {
      client.close();
    }
  });
  // A refresh the gateway refuses while the socket stays (answered in the authenticate ack,
  // after an auth_error with the same code) does not explain a later, unrelated server-side
  // disconnect: that one has no known cause, so the client goes offline without a code.
  const refusals = {
    identity_changed: () => token({ sub: "someone-else", expiresIn: 600 }),
    invalid_token: () => "not.a.token",
    token_expired: (user) => token({ sub: user, expiresIn: -3600 }),
  };
  for (const [code, refreshed] of Object.entries(refusals)) {
    test(`a refresh refused with ${code} does not decide a later server disconnect`, async () => {
      const user = `refused-${code}`;
      const { client, record } = await recordedClient(GatewayClient, gateway.url, {
        token: token({ sub: user, expiresIn: LIFETIME_S }),
        refreshToken: async () => refreshed(user),
      });
      try {
        client.connect();
        await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
        await waitFor(() => record.errors.some((e) => e.code === code), 10000, `the refusal (${code})`);
        await waitFor(() => client._refreshing === null, 10000, "the authenticate ack");
        assert.equal(client.state, "connected", "the socket stays after a refused refresh");
        // the gateway's disconnect without auth_error (e.g. a step of the socket's life
        // failed), as socket.io-client sees it: a DISCONNECT packet on "/"
        client.socket.onpacket({ type: 1, nsp: "/" });
        assert.equal(client.state, "offline");
        assert.deepEqual(client.stateDetail, { reason: "server_disconnect", code: null });
        assert.deepEqual(record.errors.map((e) => e.code), [code]);
      } finally {
        client.close();
      }
    });
  }

  test("after a refused refresh, token_expired at exp still reconnects with a fresh token", async () => {
    const user = "refused-then-expired";
    const room = "availability-refused-then-expired";
    const { client, record } = await recordedClient(GatewayClient, gateway.url, {
      token: token({ sub: user, expiresIn: LIFETIME_S }),
      rooms: [room],
      // auth_expiring: a token for someone else (refused); after token_expired: a good one
      refreshToken: async (info) =>
        info.reason ? token({ sub: user, expiresIn: 600 }) : token({ sub: "someone-else" }),
    });
    try {
      client.connect();
      await waitFor(() => client.lastCatchUp, 10000, "the first catch-up");
      await waitFor(() => record.errors.some((e) => e.code === "identity_changed"), 10000, "the refusal");
      await waitFor(() => record.catchUps.length === 2, 10000, "the reconnection after token_expired");
      assert.equal(client.state, "connected");
      assert.deepEqual(record.errors.map((e) => e.code), ["identity_changed", "token_expired"]);
      assert.equal(record.auths.at(-1).userId, user);
    } finally {
      client.close();
    }
  });
});
