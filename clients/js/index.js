// @booking-realtime/client: a client of the booking real-time gateway (docs/client.md).
//
// It wraps socket.io-client and keeps, across every reconnection, what an app would otherwise
// rewrite: one cursor (the newest eventId seen: ids sort as strings in emission order across
// all rooms), the rooms to rejoin with `lastEventId`, deduplication by eventId, token refresh
// on `auth_expiring`, and `gap`/`resync` surfaced as one `onRefetch` callback.
//
// Imports only `io` from "socket.io-client" and nothing of Node: it runs unmodified in a
// browser whose import map points "socket.io-client" at socket.io-client's ESM build.
import { io } from "socket.io-client";

/** Server events that carry no eventId and are never replayed. */
export const CONTROL_EVENTS = Object.freeze([
  "auth_success",
  "auth_error",
  "auth_expiring",
  "rooms_revoked",
  "error",
  "resync",
]);

/** Names socket.io-client reserves on a socket: never server events. */
const RESERVED = new Set(["connect", "connect_error", "disconnect", "disconnecting"]);

/** Codes after which trying again later may succeed. */
const TRANSIENT_CODES = new Set(["unavailable", "internal", "rate_limited"]);
const JOIN_ATTEMPTS = 8; // a join refused with a transient code is sent this many times at most

/** An error of the gateway's catalogue (`code`, `message`, `details`), or of this library
 * (`timeout`, `closed`, `token_unavailable`, `refresh_failed`, `rooms_revoked`,
 * `connect_failed`). */
export class GatewayError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "GatewayError";
    this.code = code;
    if (extra.details !== undefined) this.details = extra.details;
    if (extra.event !== undefined) this.event = extra.event;
    if (extra.roomId !== undefined) this.roomId = extra.roomId;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }

  /** From a gateway payload `{code, message, details?, event?}`. */
  static from(payload, extra = {}) {
    const body = payload && typeof payload === "object" ? payload : {};
    return new GatewayError(String(body.code ?? "internal"), String(body.message ?? ""), {
      details: body.details,
      event: body.event,
      ...extra,
    });
  }
}

/** A string set that forgets its oldest members past `limit`. */
class BoundedSet {
  constructor(limit) {
    this.limit = Math.max(1, limit);
    this.items = new Set();
  }
  has(item) {
    return this.items.has(item);
  }
  add(item) {
    this.items.add(item);
    while (this.items.size > this.limit) this.items.delete(this.items.values().next().value);
  }
  clear() {
    this.items.clear();
  }
  get size() {
    return this.items.size;
  }
}

const byEventId = (a, b) => (a.payload.eventId < b.payload.eventId ? -1 : 1);

export class GatewayClient {
  /**
   * @param {string} url the gateway's origin, e.g. "https://rt.example.com"
   * @param {object} [options] see index.d.ts (GatewayClientOptions)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this._token = options.token;
    /** The newest eventId delivered (or learnt from a join answer): one cursor, all rooms. */
    this.cursor = options.lastEventId ?? null;
    /** The app's rooms, rejoined on every (re)connection. */
    this._rooms = new Set(options.rooms ?? []);
    this.state = "idle";
    this.stateDetail = {};
    /** The last `auth_success` payload. */
    this.user = null;
    /** Events replayed by the last completed (re)connection catch-up. */
    this.replayed = 0;
    /** What the last catch-up did (see CatchUpSummary). */
    this.lastCatchUp = null;
    this.stats = { received: 0, delivered: 0, duplicates: 0, connects: 0, reconnects: 0 };

    this._seen = new BoundedSet(options.dedupeSize ?? 10000);
    this._listeners = new Map();
    this._joinWaiters = new Map(); // roomId -> [{resolve, reject}]
    this._joinRetries = new Map(); // roomId -> {timer, attempts}: joins refused for a while
    this._emptyRooms = new Set(); // rooms whose join said "no events yet" while cursor was null
    this._resumeFrom = undefined; // the cursor a catch-up started from, until it completes
    this._catchUp = null; // {from, authPending, rooms: Set, replayed, gaps, handshakeReplayed}
    this._buffer = new Map(); // eventId -> {name, payload}, held while catching up
    this._pendingRefetch = []; // resync payloads that came while catching up
    // auth_error codes since the connection that no ack has claimed as its answer (a refused
    // `authenticate`, after which the socket stays): the newest one explains the gateway's
    // disconnect that follows it (token_expired, auth_timeout, revoked)
    this._authErrors = [];
    this._retryTimer = null;
    this._retries = 0;
    this._closing = false;
    this._refreshing = null;
    this._engines = new WeakSet();

    const socketOptions = options.socketOptions ?? {};
    this.socket = io(url, {
      forceNew: true,
      ...socketOptions,
      path: options.path ?? socketOptions.path ?? "/socket.io/",
      transports: options.transports ?? socketOptions.transports,
      autoConnect: false,
      auth: (cb) => this._handshake(cb),
    });
    this._wire();
  }

  // -- public API ----------------------------------------------------------------------------

  /** The rooms this client keeps (and rejoins on every reconnection). */
  get rooms() {
    return [...this._rooms];
  }

  /** Whether the socket is connected now. */
  get connected() {
    return this.socket.connected;
  }

  /** The transport in use: "websocket", "polling", or null while not connected. */
  get transport() {
    return this.socket.connected ? (this.socket.io.engine?.transport?.name ?? null) : null;
  }

  /** Opens the connection (again, after `close()` too). Returns this client. */
  connect() {
    this._closing = false;
    this._clearRetry();
    if (this.socket.connected || this.socket.active) return this;
    this._setState("connecting", {});
    this.socket.connect();
    return this;
  }

  /** Closes the connection for good (until `connect()`): state `closed`. */
  close() {
    this._closing = true;
    this._clearRetry();
    this._clearJoinRetries();
    this.socket.disconnect();
    this._finishCatchUp(true);
    this._rejectAllWaiters(new GatewayError("closed", "the client was closed"));
    this._setState("closed", { reason: "client" });
  }

  /** Replaces the token used by the next handshakes (a string, or a function). */
  setToken(token) {
    this._token = token;
  }

  /**
   * Keeps `roomId` and joins it now if connected (else at the next connection). Resolves with
   * the ack `{ok: true, roomId, replayed, lastEventId, gap?}`; rejects with a GatewayError
   * (the gateway's code: forbidden, unknown_room, ...; or `timeout`, `closed`) and, on an
   * `{ok: false}` answer, forgets the room.
   */
  join(roomId) {
    // while connected, a room with waiters (or one this catch-up rejoins) has its join_room on
    // the way: this call is answered with it, and the room is not joined twice
    const inFlight = this._joinWaiters.has(roomId) || Boolean(this._catchUp?.rooms.has(roomId));
    const kept = this._rooms.has(roomId);
    const promise = new Promise((resolve, reject) => {
      const waiters = this._joinWaiters.get(roomId) ?? [];
      waiters.push({ resolve, reject });
      this._joinWaiters.set(roomId, waiters);
    });
    this._rooms.add(roomId);
    if (!this.socket.connected || inFlight) return promise; // else at the next connection
    if (this._catchUp && !kept) {
      // a new room during a catch-up: from the catch-up's cursor, and the catch-up waits for it
      this._catchUp.rooms.add(roomId);
      this._emitJoin(roomId, this._joinFrom(roomId, this._catchUp.from));
    } else {
      // a room joined while connected (or joined again) enters live: no history is replayed
      this._emitJoin(roomId, undefined);
    }
    return promise;
  }

  /** Forgets `roomId` and leaves it if connected. Resolves with `{ok: true, roomId}`. */
  leave(roomId) {
    this._rooms.delete(roomId);
    this._emptyRooms.delete(roomId);
    this._clearJoinRetry(roomId);
    const waiters = this._joinWaiters.get(roomId);
    this._joinWaiters.delete(roomId);
    for (const waiter of waiters ?? [])
      waiter.reject(new GatewayError("closed", "left before the join was answered", { roomId }));
    if (this._catchUp?.rooms.delete(roomId)) this._maybeFinishCatchUp();
    if (!this.socket.connected) return Promise.resolve({ ok: true, roomId });
    return new Promise((resolve, reject) => {
      this.socket.timeout(this._ackTimeout()).emit("leave_room", { roomId }, (err, answer) => {
        if (err) reject(new GatewayError("timeout", "leave_room was not answered", { roomId }));
        else if (answer?.ok) resolve(answer);
        else reject(this._refused(answer?.error, { roomId }));
      });
    });
  }

  /** Subscribes to one server event: data events after dedupe `(payload, info)`, control
   * events (auth_success, auth_error, auth_expiring, rooms_revoked, error, resync) as they
   * come `(payload)`. Returns a function that unsubscribes. */
  on(eventName, handler) {
    const handlers = this._listeners.get(eventName) ?? new Set();
    handlers.add(handler);
    this._listeners.set(eventName, handlers);
    return () => this.off(eventName, handler);
  }

  off(eventName, handler) {
    const handlers = this._listeners.get(eventName);
    if (!handlers) return;
    if (handler) handlers.delete(handler);
    else handlers.clear();
  }

  // -- connection lifecycle ------------------------------------------------------------------

  _wire() {
    const socket = this.socket;
    const manager = socket.io;
    socket.on("connect", () => this._onConnect());
    socket.on("disconnect", (reason) => this._onDisconnect(reason));
    socket.on("connect_error", (err) => this._onConnectError(err));
    socket.onAny((name, payload) => this._onServerEvent(name, payload));
    manager.on("reconnect_attempt", (attempt) => {
      if (!this._closing) this._setState("reconnecting", { attempt });
    });
    manager.on("reconnect_failed", () => {
      if (!this._closing) this._goOffline({ reason: "reconnect_failed" });
    });
  }

  /** The handshake's `auth`, built for every (re)connection attempt. */
  _handshake(cb) {
    Promise.resolve()
      .then(() => (typeof this._token === "function" ? this._token() : this._token))
      .then(
        (token) => {
          if (this._closing) return; // closed while the token was on its way
          if (this._resumeFrom === undefined) this._resumeFrom = this.cursor;
          const auth = { token: token ?? "" };
          if (this._resumeFrom != null) auth.lastEventId = this._resumeFrom;
          cb(auth);
        },
        (error) => {
          this._report(new GatewayError("token_unavailable", "the token callback failed", { cause: error }));
          this.socket.disconnect(); // the CONNECT packet is never sent
          this._retryLater("token_unavailable");
        },
      );
  }

  _onConnect() {
    this._clearRetry();
    this._retries = 0;
    this._authErrors = [];
    this.stats.connects += 1;
    if (this.stats.connects > 1) this.stats.reconnects += 1;
    const engine = this.socket.io.engine;
    if (engine && !this._engines.has(engine)) {
      this._engines.add(engine);
      engine.on("upgrade", (transport) => {
        if (this.socket.connected) this._setState("connected", { ...this.stateDetail, transport: transport.name });
      });
    }
    const from = this._resumeFrom ?? this.cursor;
    this._catchUp = {
      from,
      authPending: true, // every handshake carries a token: auth_success follows
      rooms: new Set(this._rooms),
      roomsReplayed: {},
      handshakeReplayed: 0,
      gaps: [],
      gapCursor: null,
      startedAt: Date.now(),
    };
    this._setState("connected", { transport: this.transport, socketId: this.socket.id, catchingUp: true });
    // the handshake's auth_success may never come (an old gateway); do not hold events forever
    this._catchUp.timer = setTimeout(() => {
      if (this._catchUp) {
        this._catchUp.authPending = false;
        this._maybeFinishCatchUp();
      }
    }, this._ackTimeout());
    for (const roomId of this._rooms) this._emitJoin(roomId, this._joinFrom(roomId, from));
  }

  _onDisconnect(reason) {
    if (this._catchUp?.timer) clearTimeout(this._catchUp.timer);
    this._clearJoinRetries(); // the next connection joins every room again
    this._catchUp = null; // held events stay held: the next catch-up replays from the same cursor
    if (this._closing || reason === "io client disconnect") return;
    if (reason === "io server disconnect") {
      // the gateway cut this socket: socket.io-client does not reconnect by itself
      const code = this._authErrors.at(-1) ?? null;
      this._authErrors = [];
      if (code === "revoked") {
        this._finishCatchUp(true);
        this._setState("closed", { reason: "revoked" });
        return;
      }
      if (code === "token_expired" || code === "auth_timeout") {
        this._reconnectWithFreshToken(code);
        return;
      }
      this._goOffline({ reason: "server_disconnect", code });
      return;
    }
    // transport close, ping timeout, ...: socket.io-client reconnects by itself
    this._setState("reconnecting", { reason });
  }

  _onConnectError(err) {
    if (this._closing) return;
    const data = err?.data;
    if (data && typeof data === "object" && data.code) {
      // the gateway refused the handshake: socket.io-client will not try again by itself
      const error = GatewayError.from(data);
      this._report(error);
      if (error.code === "revoked") {
        this._finishCatchUp(true);
        this._setState("closed", { reason: "revoked" });
      } else if (error.code === "token_expired") {
        this._reconnectWithFreshToken(error.code);
      } else if (TRANSIENT_CODES.has(error.code)) {
        this._retryLater(error.code);
      } else {
        this._goOffline({ reason: "refused", code: error.code });
      }
      return;
    }
    // a transport failure: the manager retries (reconnect_attempt) unless told not to
    if (!this.socket.active) this._goOffline({ reason: "connect_failed", message: err?.message });
    else if (this.state !== "connecting") this._setState("reconnecting", { reason: err?.message });
  }

  /** After token_expired/auth_timeout: a new handshake with a fresh token, if one can be had. */
  _reconnectWithFreshToken(code) {
    if (typeof this._token === "function") {
      this._retryLater(code, 0);
    } else if (this.options.refreshToken) {
      this._setState("reconnecting", { reason: code });
      Promise.resolve()
        .then(() => this.options.refreshToken({ reason: code }))
        .then(
          (token) => {
            if (!token) throw new Error("refreshToken gave no token");
            this._token = token;
            this._retryLater(code, 0);
          },
          (error) => {
            this._report(new GatewayError("refresh_failed", "refreshToken failed", { cause: error }));
            this._goOffline({ reason: "refresh_failed", code });
          },
        );
    } else {
      this._goOffline({ reason: code, code });
    }
  }

  /** Opens the socket again after a backoff (for what socket.io-client does not retry). */
  _retryLater(reason, delayMs) {
    if (this._closing) return;
    const socketOptions = this.options.socketOptions ?? {};
    const limit = socketOptions.reconnectionAttempts ?? Infinity;
    if (this._retries >= limit) {
      this._goOffline({ reason: "reconnect_failed" });
      return;
    }
    const base = socketOptions.reconnectionDelay ?? 1000;
    const max = socketOptions.reconnectionDelayMax ?? 5000;
    const delay =
      delayMs ?? Math.min(max, base * 2 ** this._retries) * (0.5 + Math.random() / 2);
    this._retries += 1;
    this._clearRetry();
    this._setState("reconnecting", { reason, attempt: this._retries });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._closing && !this.socket.connected) this.socket.connect();
    }, delay);
  }

  /** The GatewayError of an `{ok: false}` ack. The gateway sends a refusal with an auth code
   * as an `auth_error` event just before the ack, and the socket stays: that auth_error is
   * this request's answer, not the reason of a later disconnect, so it is forgotten here. */
  _refused(payload, extra = {}) {
    const error = GatewayError.from(payload, extra);
    const at = this._authErrors.lastIndexOf(error.code);
    if (at >= 0) this._authErrors.splice(at, 1);
    return error;
  }

  _clearRetry() {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _goOffline(detail) {
    this._finishCatchUp(true);
    this._setState("offline", detail);
  }

  // -- server events -------------------------------------------------------------------------

  _onServerEvent(name, payload) {
    if (RESERVED.has(name)) return;
    if (CONTROL_EVENTS.includes(name)) {
      this._onControl(name, payload);
      this._dispatch(name, payload);
      return;
    }
    const eventId = payload && typeof payload === "object" ? payload.eventId : undefined;
    if (typeof eventId !== "string") {
      this._dispatch(name, payload); // not a gateway data event: passed on as it is
      return;
    }
    this.stats.received += 1;
    if (this._seen.has(eventId) || this._buffer.has(eventId)) {
      this.stats.duplicates += 1;
      return;
    }
    if (this._catchUp || this._resumeFrom !== undefined) {
      this._buffer.set(eventId, { name, payload });
    } else {
      this._deliver(name, payload, false);
    }
  }

  _onControl(name, payload) {
    switch (name) {
      case "auth_success":
        this._onAuthSuccess(payload);
        break;
      case "auth_error":
        this._authErrors.push(String(payload?.code ?? "internal"));
        if (this._authErrors.length > 8) this._authErrors.shift();
        this._report(GatewayError.from(payload));
        break;
      case "auth_expiring":
        this._refresh(payload);
        break;
      case "rooms_revoked": {
        const rooms = Array.isArray(payload?.rooms) ? payload.rooms : [];
        for (const roomId of rooms) {
          this._rooms.delete(roomId);
          this._emptyRooms.delete(roomId);
        }
        this._call("onRoomsRevoked", rooms);
        this._report(
          new GatewayError("rooms_revoked", `no longer allowed in ${rooms.join(", ")}`, { details: { rooms } }),
        );
        break;
      }
      case "error":
        this._report(GatewayError.from(payload));
        break;
      case "resync":
        if (this._catchUp) this._pendingRefetch.push(payload);
        else this._refetch(payload?.reason ?? "resync", payload?.rooms ?? []);
        break;
    }
  }

  _onAuthSuccess(payload) {
    this.user = payload;
    if (this.cursor == null && typeof payload?.lastEventId === "string") {
      // a cursor before any event: a reconnection replays what the user's room missed
      this.cursor = payload.lastEventId;
    }
    const catchUp = this._catchUp;
    if (catchUp && catchUp.authPending) {
      catchUp.authPending = false;
      catchUp.handshakeReplayed = Number(payload?.replayed ?? 0);
      if (payload?.gap && payload?.userId) catchUp.gaps.push(`user-${payload.userId}`);
    }
    this._call("onAuth", payload);
    if (catchUp) this._maybeFinishCatchUp();
  }

  /** auth_expiring: a fresh token from refreshToken (or the token function), sent with
   * `authenticate`; on failure onError, and the socket lives until exp. */
  _refresh(payload) {
    const refresher =
      this.options.refreshToken ?? (typeof this._token === "function" ? this._token : null);
    if (!refresher || this._refreshing) return;
    this._refreshing = Promise.resolve()
      .then(() => refresher(payload))
      .then((token) => {
        if (!token) throw new Error("no token");
        if (typeof this._token !== "function") this._token = token;
        return new Promise((resolve, reject) => {
          this.socket.timeout(this._ackTimeout()).emit("authenticate", { token }, (err, answer) => {
            if (err) reject(new GatewayError("timeout", "authenticate was not answered"));
            else if (answer?.ok) resolve(answer);
            else reject(this._refused(answer?.error));
          });
        });
      })
      .catch((error) => {
        if (!(error instanceof GatewayError)) {
          this._report(new GatewayError("refresh_failed", "refreshToken failed", { cause: error }));
        } else if (error.code === "timeout") {
          this._report(error);
        } // else the gateway's auth_error (or error) event has reported it
      })
      .finally(() => {
        this._refreshing = null;
      });
  }

  // -- joins ---------------------------------------------------------------------------------

  /** The lastEventId a (re)join of `roomId` sends after a disconnection from cursor `from`. */
  _joinFrom(roomId, from) {
    if (from != null) return from;
    return this._emptyRooms.has(roomId) ? "0" : undefined; // it had nothing: all of it is new
  }

  _emitJoin(roomId, lastEventId) {
    const body = lastEventId != null ? { roomId, lastEventId } : { roomId };
    const socket = this.socket;
    socket.timeout(this._ackTimeout()).emit("join_room", body, (err, answer) => {
      if (err) {
        if (!socket.connected) return; // disconnected: the next connection rejoins
        this._joinAnswered(roomId, null, new GatewayError("timeout", "join_room was not answered", { roomId }));
      } else if (answer?.ok) {
        this._clearJoinRetry(roomId);
        this._joinAnswered(roomId, answer, null);
      } else {
        const error = this._refused(answer?.error, { roomId });
        if (!this._joinAgainLater(roomId, lastEventId, error, socket)) this._joinAnswered(roomId, null, error);
      }
    });
  }

  /** A join refused for a while (rate_limited: a reconnection rejoining more rooms than the
   * gateway's event burst; unavailable; internal) is sent again after a backoff, its waiters
   * and the catch-up still waiting, up to JOIN_ATTEMPTS times. */
  _joinAgainLater(roomId, lastEventId, error, socket) {
    if (!TRANSIENT_CODES.has(error.code) || !this._rooms.has(roomId) || !socket.connected) return false;
    const retry = this._joinRetries.get(roomId) ?? { timer: null, attempts: 0 };
    if (retry.attempts + 1 >= JOIN_ATTEMPTS) {
      this._joinRetries.delete(roomId);
      return false;
    }
    retry.attempts += 1;
    const delay = Math.min(5000, 250 * 2 ** (retry.attempts - 1)) * (0.5 + Math.random() / 2);
    retry.timer = setTimeout(() => {
      retry.timer = null;
      if (this._rooms.has(roomId) && this.socket === socket && socket.connected) this._emitJoin(roomId, lastEventId);
    }, delay);
    this._joinRetries.set(roomId, retry);
    return true;
  }

  _clearJoinRetry(roomId) {
    const retry = this._joinRetries.get(roomId);
    if (retry?.timer) clearTimeout(retry.timer);
    this._joinRetries.delete(roomId);
  }

  _clearJoinRetries() {
    for (const roomId of [...this._joinRetries.keys()]) this._clearJoinRetry(roomId);
  }

  _joinAnswered(roomId, answer, error) {
    // a join of this catch-up (not a live one of a room it has already rejoined)
    const catchUp = this._catchUp?.rooms.has(roomId) ? this._catchUp : null;
    const waiters = this._joinWaiters.get(roomId) ?? [];
    this._joinWaiters.delete(roomId);
    if (error) {
      if (error.code !== "timeout") {
        this._rooms.delete(roomId);
        this._emptyRooms.delete(roomId);
      }
      // a refusal also comes as an `error` event, which onError reports: not twice
      if (error.code === "timeout") this._report(error);
      for (const waiter of waiters) waiter.reject(error);
    } else {
      if (!this._rooms.has(roomId)) {
        // left while the join was on its way
      } else if (answer.gap && answer.lastEventId != null && this.cursor != null && answer.lastEventId < this.cursor && !answer.replayed) {
        // the cursor is ahead of every id the store has given (another or a replaced store):
        // the answer's lastEventId is the new cursor, and old ids mean nothing any more
        this.cursor = answer.lastEventId;
        this._seen.clear();
      } else if (this.cursor == null) {
        if (answer.lastEventId != null) {
          this.cursor = answer.lastEventId; // a cursor even before any event
          this._emptyRooms.clear();
        } else {
          this._emptyRooms.add(roomId);
        }
      }
      if (catchUp) {
        catchUp.roomsReplayed[roomId] = Number(answer.replayed ?? 0);
        if (answer.gap) {
          catchUp.gaps.push(roomId);
          if (answer.lastEventId != null && !(catchUp.gapCursor >= answer.lastEventId))
            catchUp.gapCursor = answer.lastEventId;
        }
      } else if (answer.gap && this._rooms.has(roomId)) {
        this._refetch("gap", [roomId]);
      }
      for (const waiter of waiters) waiter.resolve(answer);
    }
    if (catchUp && catchUp.rooms.delete(roomId)) this._maybeFinishCatchUp();
  }

  _rejectAllWaiters(error) {
    const all = [...this._joinWaiters.values()].flat();
    this._joinWaiters.clear();
    for (const waiter of all) waiter.reject(error);
  }

  // -- catch-up, dedupe, delivery ------------------------------------------------------------

  _maybeFinishCatchUp() {
    const catchUp = this._catchUp;
    if (!catchUp || catchUp.authPending || catchUp.rooms.size > 0) return;
    this._finishCatchUp(false);
  }

  /** Delivers what was held, in eventId order. `aborted`: the catch-up did not complete (the
   * client goes offline or closes); what was held stays held, undelivered, and the cursor
   * where it was: delivering it now would move the cursor past the replays that had not come
   * in (another room's older ids), which would then come after it, or, with a cursor the app
   * keeps, never. The next connection replays from the same starting cursor again and
   * delivers them, in order, with the rest. */
  _finishCatchUp(aborted) {
    const catchUp = this._catchUp;
    if (catchUp?.timer) clearTimeout(catchUp.timer);
    this._catchUp = null;
    const held = aborted ? [] : [...this._buffer.values()].sort(byEventId);
    if (!aborted) this._buffer.clear();
    for (const { name, payload } of held) {
      if (!this._seen.has(payload.eventId)) this._deliver(name, payload, true);
    }
    if (!aborted) this._resumeFrom = undefined;
    if (!catchUp) return;
    if (!aborted && catchUp.gapCursor != null && catchUp.gapCursor > (this.cursor ?? "")) {
      // past a gap the app refetches: what the room had when it answered is covered, and every
      // other room's events up to there came in this catch-up (ids are emitted in order)
      this.cursor = catchUp.gapCursor;
    }
    const rooms = catchUp.roomsReplayed;
    const replayed =
      catchUp.handshakeReplayed + Object.values(rooms).reduce((sum, count) => sum + count, 0);
    const summary = {
      from: catchUp.from,
      replayed,
      handshakeReplayed: catchUp.handshakeReplayed,
      rooms,
      gaps: catchUp.gaps,
      delivered: held.length,
      reconnection: this.stats.connects > 1,
      complete: !aborted,
      durationMs: Date.now() - catchUp.startedAt,
    };
    this.replayed = replayed;
    this.lastCatchUp = summary;
    this._call("onCatchUp", summary);
    if (this.socket.connected && !aborted) {
      this._setState("connected", {
        transport: this.transport,
        socketId: this.socket.id,
        catchingUp: false,
        replayed,
      });
    }
    if (catchUp.gaps.length) this._refetch("gap", catchUp.gaps);
    const resyncs = this._pendingRefetch;
    this._pendingRefetch = [];
    for (const payload of resyncs) this._refetch(payload?.reason ?? "resync", payload?.rooms ?? []);
  }

  _deliver(name, payload, replay) {
    const eventId = payload.eventId;
    this._seen.add(eventId);
    if (this.cursor == null || eventId > this.cursor) {
      this.cursor = eventId;
      this._emptyRooms.clear();
    }
    this.stats.delivered += 1;
    const info = { replay, eventId, cursor: this.cursor };
    this._call("onEvent", name, payload, info);
    this._dispatch(name, payload, info);
  }

  _refetch(reason, rooms) {
    this._call("onRefetch", { reason, rooms: [...rooms] });
  }

  // -- helpers -------------------------------------------------------------------------------

  _ackTimeout() {
    return this.options.ackTimeout ?? 10000;
  }

  _setState(state, detail) {
    this.state = state;
    this.stateDetail = detail ?? {};
    this._call("onState", state, this.stateDetail);
  }

  _report(error) {
    this._call("onError", error);
  }

  /** An app callback: its exceptions never break the client (they go to onError, or the
   * console when onError itself threw). */
  _call(name, ...args) {
    const callback = this.options[name];
    if (typeof callback !== "function") return;
    try {
      callback(...args);
    } catch (error) {
      if (name !== "onError") this._report(error);
      else console.error(error);
    }
  }

  _dispatch(name, ...args) {
    const handlers = this._listeners.get(name);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(...args);
      } catch (error) {
        this._report(error);
      }
    }
  }
}

export default GatewayClient;
