// Types of @booking-realtime/client (index.js). Usage and semantics: README.md, docs/client.md.
import type { Socket, ManagerOptions, SocketOptions } from "socket.io-client";

/** Server events that carry no eventId and are never replayed. */
export declare const CONTROL_EVENTS: readonly [
  "auth_success",
  "auth_error",
  "auth_expiring",
  "rooms_revoked",
  "error",
  "resync",
];

/** The gateway's error codes, and this library's own (`timeout`, `closed`,
 * `token_unavailable`, `refresh_failed`, `rooms_revoked`). */
export type ErrorCode =
  | "unauthenticated"
  | "invalid_payload"
  | "unknown_room"
  | "forbidden"
  | "not_found"
  | "payload_too_large"
  | "rate_limited"
  | "unavailable"
  | "internal"
  | "missing_token"
  | "invalid_token"
  | "token_expired"
  | "auth_timeout"
  | "identity_changed"
  | "revoked"
  | "timeout"
  | "closed"
  | "token_unavailable"
  | "refresh_failed"
  | "rooms_revoked"
  | (string & {});

/** An error of the gateway (its `{code, message, details?}`; `event` for an `error` event) or
 * of this library. Join and leave promises reject with it; onError receives it. */
export declare class GatewayError extends Error {
  constructor(
    code: ErrorCode,
    message?: string,
    extra?: { details?: unknown; event?: string; roomId?: string; cause?: unknown },
  );
  readonly name: "GatewayError";
  code: ErrorCode;
  details?: unknown;
  /** For an `error` event: the client event it answers. */
  event?: string;
  /** For join/leave failures: the room. */
  roomId?: string;
  cause?: unknown;
  static from(
    payload: { code?: string; message?: string; details?: unknown; event?: string } | undefined,
    extra?: { roomId?: string; cause?: unknown },
  ): GatewayError;
}

/** `idle` (never connected), `connecting` (first attempt), `connected`, `reconnecting`
 * (socket.io-client or this client is trying again), `offline` (not connected, not trying:
 * retries exhausted, or no way to get a valid token; `connect()` tries again), `closed`
 * (`close()` was called, or the gateway revoked this user). */
export type GatewayState = "idle" | "connecting" | "connected" | "reconnecting" | "offline" | "closed";

export interface StateDetail {
  /** With `connected`: "websocket" or "polling" (updated on upgrade). */
  transport?: "websocket" | "polling" | string | null;
  /** With `connected`: the Socket.IO socket id. */
  socketId?: string;
  /** With `connected`: true while the replays of this connection are still arriving (events
   * are held meanwhile); a second `connected` follows with false once they are in. */
  catchingUp?: boolean;
  /** With the `connected` that ends a catch-up: how many events the gateway replayed. */
  replayed?: number;
  /** Why it is reconnecting / offline / closed: a socket.io-client disconnect reason, or
   * `token_expired`, `auth_timeout`, `revoked`, `refused`, `reconnect_failed`,
   * `refresh_failed`, `server_disconnect`, `client`, ... */
  reason?: string;
  /** The gateway's error code behind `reason`, when there is one. */
  code?: string | null;
  /** With `reconnecting`: the attempt number. */
  attempt?: number;
  message?: string;
}

/** A data event's payload: every data event has these two, plus its own fields. */
export interface DataEvent {
  eventId: string;
  timestamp: string;
  [field: string]: unknown;
}

export interface EventInfo {
  /** true when the event came while a (re)connection was catching up, i.e. in a replay (an
   * event emitted live during the catch-up is held and flagged too). */
  replay: boolean;
  eventId: string;
  /** The client's cursor after this event. */
  cursor: string | null;
}

export interface RefetchInfo {
  /** "gap" (a join answer or the handshake said gap: true: some history is gone), or the
   * `resync` event's reason ("change_history_lost", "change_stream_invalidated",
   * "collection_dropped", "collection_renamed"). */
  reason: "gap" | "change_history_lost" | "change_stream_invalidated" | "collection_dropped" | "collection_renamed" | (string & {});
  /** The rooms to refetch: room names for a gap, the resync's patterns (`user-*`, ...). */
  rooms: string[];
}

export interface AuthSuccess {
  userId: string;
  role: "customer" | "staff" | "admin";
  rooms: string[];
  expiresAt: string;
  /** The newest event id delivered when it was sent (null: none yet); the client's cursor
   * while it has seen no event. */
  lastEventId?: string | null;
  /** After a handshake with lastEventId: events replayed to the user's room. */
  replayed?: number;
  gap?: boolean;
}

export interface AuthExpiring {
  expiresAt: string;
  secondsLeft: number;
}

export interface JoinAnswer {
  ok: true;
  roomId: string;
  /** Events replayed before this answer. */
  replayed: number;
  /** The room's newest event id (a cursor even when nothing was seen), or null. */
  lastEventId: string | null;
  /** Present when the join gave a lastEventId: true when some history is gone. */
  gap?: boolean;
}

export interface LeaveAnswer {
  ok: true;
  roomId: string;
}

/** What one (re)connection's catch-up did. */
export interface CatchUpSummary {
  /** The cursor it replayed from (null: nothing to replay from). */
  from: string | null;
  /** Events the gateway replayed: the handshake's (user room) plus every rejoin's. */
  replayed: number;
  handshakeReplayed: number;
  /** Replayed count per rejoined room. */
  rooms: Record<string, number>;
  /** Rooms whose answer said gap: true (also reported through onRefetch). */
  gaps: string[];
  /** Events delivered to the app at the end of the catch-up (after dedupe). */
  delivered: number;
  /** false for the first connection. */
  reconnection: boolean;
  /** false: cut short (offline, or revoked): what it held stays held, undelivered, and the
   * cursor where it was, until the next connection's catch-up delivers it in order. */
  complete: boolean;
  durationMs: number;
}

export interface ClientStats {
  /** Data events that arrived (duplicates included). */
  received: number;
  /** Data events given to the app. */
  delivered: number;
  /** Data events dropped as already seen. */
  duplicates: number;
  connects: number;
  reconnects: number;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface GatewayClientOptions {
  /** A JWT, or a function giving one (or a Promise of one), called for every (re)connection
   * handshake. */
  token?: TokenSource;
  /** Called on `auth_expiring` (and, when `token` is a string, after `token_expired` to
   * reconnect): its token is sent with `authenticate` (and used by later handshakes when
   * `token` is a string). Without it, a function `token` is used. Failures go to onError. */
  refreshToken?: (info: AuthExpiring | { reason: string }) => string | Promise<string>;
  /** e.g. ["websocket"] or ["polling"]; default socket.io-client's ["polling", "websocket"]. */
  transports?: string[];
  /** The Socket.IO path, default "/socket.io/". */
  path?: string;
  /** Rooms to join on connect (and to rejoin on every reconnection). */
  rooms?: string[];
  /** A starting cursor (an eventId saved earlier): the first connection replays from it. */
  lastEventId?: string | null;
  /** Data events, each once, in eventId order. */
  onEvent?: (name: string, payload: DataEvent, info: EventInfo) => void;
  /** Some of what this client should have is gone: refetch these rooms' data. */
  onRefetch?: (info: RefetchInfo) => void;
  onState?: (state: GatewayState, detail: StateDetail) => void;
  /** auth_error and error events, refused joins, failed refreshes and handshakes. */
  onError?: (error: GatewayError | Error) => void;
  /** Every `auth_success` (the first connection, each reconnection, each refresh). */
  onAuth?: (payload: AuthSuccess) => void;
  /** After each (re)connection's replays are in. */
  onCatchUp?: (summary: CatchUpSummary) => void;
  /** The gateway took these rooms away (also reported through onError). */
  onRoomsRevoked?: (rooms: string[]) => void;
  /** How many recent eventIds are remembered for dedupe (default 10000). */
  dedupeSize?: number;
  /** Milliseconds to wait for an ack (join_room, leave_room, authenticate); default 10000. */
  ackTimeout?: number;
  /** Passed to `io()` (e.g. reconnectionDelay, reconnectionDelayMax, extraHeaders);
   * `autoConnect` and `auth` are the client's own. */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

export type EventHandler = (payload: any, info?: EventInfo) => void;

export declare class GatewayClient {
  constructor(url: string, options?: GatewayClientOptions);
  readonly url: string;
  readonly options: GatewayClientOptions;
  /** The newest eventId seen: one cursor for all rooms. */
  cursor: string | null;
  /** The rooms this client keeps and rejoins on every reconnection. */
  readonly rooms: string[];
  readonly state: GatewayState;
  readonly stateDetail: StateDetail;
  readonly connected: boolean;
  readonly transport: "websocket" | "polling" | string | null;
  /** The underlying socket.io-client socket. */
  readonly socket: Socket;
  /** The last auth_success payload. */
  readonly user: AuthSuccess | null;
  /** Events replayed by the last completed (re)connection catch-up. */
  readonly replayed: number;
  readonly lastCatchUp: CatchUpSummary | null;
  readonly stats: ClientStats;
  connect(): this;
  close(): void;
  setToken(token: TokenSource): void;
  /** Resolves with the ack; rejects with a GatewayError (and forgets the room) on
   * `{ok: false}` (after up to 8 attempts with backoff for `rate_limited`, `unavailable`,
   * `internal`); `timeout`/`closed` errors keep it. A room whose join is already on its
   * way (a catch-up's rejoin, an earlier call) is not joined again: the call gets that ack. */
  join(roomId: string): Promise<JoinAnswer>;
  leave(roomId: string): Promise<LeaveAnswer>;
  on(eventName: string, handler: EventHandler): () => void;
  off(eventName: string, handler?: EventHandler): void;
}

export default GatewayClient;
