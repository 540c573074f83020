// The live test page: a person (or a link) connects with a token, joins rooms and watches the
// events arrive. It uses the gateway's own JS client library, as an application would.
import { GatewayClient } from "/websocket-test/gateway-client.js";

const config = JSON.parse(document.getElementById("page-config").textContent);
const $ = (id) => document.getElementById(id);
const LOG_MAX = 2000; // rows kept on the page; older ones are dropped
const SUMMARY_MAX = 200; // characters of a row's one-line summary
const DEMO_SHOP_IDS = ["1", "2", "3"]; // what `--demo` writes: offered while no shop is known
const ADMIN_ROOMS = ["admin-general", "admin-reservations", "admin-payments"];
const RESERVATIONS_OFFERED = 5; // newest reservation ids seen, offered as rooms

let client = null;
let eventCount = 0;
let lastReplayed = 0; // events the gateway replayed in the last (re)connection's catch-up
let identity = null; // who the socket is: {userId, role, expiresAt, shopIds, token, socketId}
let authRooms = new Set(); // rooms the gateway said the socket is in (auth_success.rooms)
let lastStateLogged = null; // the library reports "connected" again after its catch-up
const pendingJoins = new Set();
const seenShops = new Set(); // shop ids read in events' payloads, for suggestions
const seenReservations = []; // reservation ids read in events' payloads, newest first
const sentBroadcasts = new Map(); // eventId -> rooms, of the broadcasts sent from this page
// Refusals the library reported from the gateway's `error` event, whose join or leave has not
// yet claimed them: the ack comes just after, and names the room on the same row.
const unclaimedRefusals = [];
let refusalCount = 0; // numbers them, so that a join claims only a refusal that came after it
const reported = new WeakSet(); // errors onError logged, which a rejected promise also carries
let paused = false;
const held = []; // rows that came while paused, in order

// -- the token and the identity ------------------------------------------------------------

/** The token's claims as the page reads them (unverified: the gateway has verified them). */
function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(part.padEnd(Math.ceil(part.length / 4) * 4, "="));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

/** A claim at a dotted path (JWT_CLAIM_* names, e.g. `app_metadata.role`), as the gateway reads it. */
function claimAt(claims, path) {
  let value = claims;
  for (const part of path.split(".")) {
    if (!value || typeof value !== "object" || !(part in value)) return undefined;
    value = value[part];
  }
  return value;
}

function shopIdsOf(token) {
  const shops = claimAt(tokenClaims(token), config.claims?.shopIds ?? "shop_ids");
  if (typeof shops === "string" || typeof shops === "number") return [String(shops)];
  return Array.isArray(shops) ? shops.map(String) : [];
}

function untilText(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (Number.isNaN(seconds)) return "";
  if (seconds <= 0) return "expired";
  if (seconds < 120) return `in ${seconds} s`;
  if (seconds < 7200) return `in ${Math.round(seconds / 60)} min`;
  return `in ${Math.round(seconds / 3600)} h`;
}

function showIdentity() {
  const known = identity !== null;
  $("identity").closest("section").classList.toggle("known", known);
  $("identity").hidden = !known;
  $("identity-none").hidden = known;
  $("identity-note").hidden = !known || $("token").value.trim() === identity.token;
  if (!known) return;
  $("id-user").textContent = identity.userId;
  $("id-role").textContent = identity.role;
  $("id-shops").textContent = identity.shopIds.length ? identity.shopIds.join(", ") : "none";
  const expires = identity.expiresAt ? new Date(identity.expiresAt) : null;
  $("id-expires").textContent = expires && !Number.isNaN(expires.getTime())
    ? `${expires.toLocaleString(undefined, { hour12: false })} (${untilText(identity.expiresAt)})`
    : "–";
  $("id-socket").textContent = identity.socketId ?? "–";
}

// -- rooms -----------------------------------------------------------------------------------

/** The rooms the socket is in: those the gateway put it in, then those this page keeps. */
function roomsIn() {
  return [...new Set([...authRooms, ...(client ? client.rooms : [])])];
}

function roomButton(text, room, className, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.dataset.room = room;
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", onClick);
  return button;
}

function showRooms() {
  const kept = new Set(client ? client.rooms : []);
  const list = $("rooms");
  list.replaceChildren();
  for (const room of roomsIn()) {
    const item = document.createElement("li");
    item.dataset.room = room;
    item.append(roomButton(room, room, "room-name", `show only the events of ${room}`, () => filterByRoom(room)));
    const origin = document.createElement("span");
    origin.className = "origin";
    if (pendingJoins.has(room)) origin.textContent = "joining…";
    else if (kept.has(room)) origin.textContent = identity ? "joined" : "joined once connected";
    else {
      origin.textContent = "by the gateway";
      origin.title = "the gateway put the socket in this room when it authenticated";
    }
    item.append(origin, roomButton("leave", room, "small leave", `leave ${room}`, () => leaveRoom(room)));
    list.append(item);
  }
  if (!list.children.length) {
    const none = document.createElement("li");
    none.className = "subtle";
    none.textContent = "none";
    list.append(none);
  }
  showSuggestions();
}

/** Rooms this token may join (SPEC's room table), from its role and shops and what events named. */
function suggestedRooms() {
  if (!identity) return [];
  const { userId, role, shopIds } = identity;
  const shops = [...new Set([...shopIds, ...seenShops])];
  const anyShops = shops.length ? shops : DEMO_SHOP_IDS;
  const rooms = [`user-${userId}`];
  if (role === "admin") rooms.push(...ADMIN_ROOMS, ...anyShops.map((shop) => `shop-${shop}`));
  if (role === "staff") rooms.push(...shopIds.map((shop) => `shop-${shop}`));
  rooms.push(...anyShops.map((shop) => `availability-${shop}`));
  rooms.push(...seenReservations.map((id) => `reservation-${id}`));
  const inNow = new Set(roomsIn());
  return [...new Set(rooms)].filter((room) => !inNow.has(room));
}

function showSuggestions() {
  const list = $("room-suggestions");
  list.replaceChildren();
  for (const room of suggestedRooms()) {
    const item = document.createElement("li");
    item.append(roomButton(`+ ${room}`, room, "suggestion", `join ${room}`, () => joinRoom(room)));
    list.append(item);
  }
  if (!list.children.length) {
    const none = document.createElement("li");
    none.className = "subtle";
    none.textContent = identity ? "nothing more" : "connect first";
    list.append(none);
  }
}

/** What an event's payload says of shops and reservations: offered as rooms. */
function learnFrom(payload) {
  if (!payload || typeof payload !== "object") return;
  if (typeof payload.shopId === "string" && payload.shopId) seenShops.add(payload.shopId);
  const reservation = payload.reservationId;
  if (typeof reservation === "string" && reservation && !seenReservations.includes(reservation)) {
    seenReservations.unshift(reservation);
    seenReservations.length = Math.min(seenReservations.length, RESERVATIONS_OFFERED);
  }
}

/** The socket's rooms an event came through, where its name and payload say (protocol.md's
 * data events), or a broadcast this page sent. */
function roomsOfEvent(name, payload) {
  const sent = sentBroadcasts.get(payload?.eventId);
  const p = payload ?? {};
  const candidates = sent ?? {
    reservation_update: [`reservation-${p.reservationId}`, `user-${p.userId}`, `user-${p.therapistId}`,
      `shop-${p.shopId}`, "admin-reservations"],
    payment_update: [`reservation-${p.reservationId}`, `user-${p.userId}`, `shop-${p.shopId}`, "admin-payments"],
    availability_update: [`availability-${p.shopId}`],
  }[name] ?? [];
  const inNow = new Set(roomsIn());
  const through = candidates.filter((room) => inNow.has(room));
  return through.length || !sent ? through : sent;
}

// -- the log ---------------------------------------------------------------------------------

function clock() {
  const now = new Date();
  return now.toLocaleTimeString(undefined, { hour12: false }) + "." + String(now.getMilliseconds()).padStart(3, "0");
}

function clip(text) {
  return text.length > SUMMARY_MAX ? text.slice(0, SUMMARY_MAX - 1) + "…" : text;
}

/** One line saying what an event is. */
function summarize(name, payload) {
  if (payload === undefined) return "";
  if (payload === null || typeof payload !== "object") return clip(String(payload));
  const p = payload;
  switch (name) {
    case "reservation_update":
      return `reservation ${p.reservationId}: ${p.previousStatus ?? "?"} → ${p.status} (${p.updateType}), shop ${p.shopId}, ${p.userId}`;
    case "payment_update":
      return `payment ${p.paymentId}: ${p.status} ${p.amount} ${p.currency}, reservation ${p.reservationId}`;
    case "availability_update":
      return `shop ${p.shopId}${p.therapistId ? ` ${p.therapistId}` : ""}: ${p.startsAt} (${p.durationMinutes} min) ${p.available ? "free" : "taken"}`;
    case "auth_success":
      return `${p.userId} (${p.role}), rooms ${(p.rooms ?? []).join(", ") || "none"}, expires ${p.expiresAt}`;
  }
  if (typeof p.code === "string" && typeof p.message === "string") {
    return `${p.event ? `${p.event}: ` : ""}${p.message}`;
  }
  const { eventId, timestamp, ...rest } = p;
  return clip(JSON.stringify(rest));
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

/** A row: one line (time, name, eventId, rooms, summary) that opens to the whole payload. */
function log(kind, name, payload, extra = {}) {
  const item = document.createElement("li");
  item.className = kind;
  item.dataset.event = name;
  if (extra.eventId) item.dataset.eventId = extra.eventId;
  if (extra.state) item.dataset.state = extra.state;
  const line = document.createElement("summary");
  line.append(span("time", clock()), span("name", name));
  if (extra.eventId) line.append(span("id", extra.eventId));
  line.append(span("rooms", ""));
  if (extra.replayed) line.append(span("replayed", "replayed"));
  line.append(span("text", extra.summary ?? summarize(name, payload)));
  const details = document.createElement("details");
  details.append(line);
  const json = payload === undefined ? "" : typeof payload === "string" ? payload : JSON.stringify(payload, null, 2);
  if (json) {
    const body = document.createElement("pre");
    body.textContent = json;
    details.append(body);
  } else {
    item.classList.add("bare");
  }
  item.append(details);
  item.dataset.text = `${name} ${extra.eventId ?? ""} ${line.textContent} ${json}`.toLowerCase();
  setRooms(item, extra.rooms ?? []);
  if (paused) {
    held.push(item);
    showHeld();
  } else {
    show(item);
  }
  return item;
}

function setRooms(item, rooms) {
  item.dataset.rooms = rooms.join(" ");
  item.querySelector("summary .rooms").textContent = rooms.join(" ");
  applyFilter(item, currentFilter());
}

function show(item) {
  const list = $("log");
  list.prepend(item);
  while (list.children.length > LOG_MAX) list.lastElementChild.remove();
  showShown();
}

function showHeld() {
  $("held").hidden = !paused;
  $("held").textContent = `${held.length} held`;
  $("pause").textContent = paused ? `resume (${held.length})` : "pause";
}

function setPaused(value) {
  paused = value;
  $("pause").setAttribute("aria-pressed", String(paused));
  if (!paused) for (const item of held.splice(0)) show(item);
  showHeld();
}

/** The filter's terms: `room:NAME` keeps events of that room, other words match the text. */
function currentFilter() {
  const terms = $("log-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  return {
    rooms: terms.filter((t) => t.startsWith("room:")).map((t) => t.slice(5)),
    words: terms.filter((t) => !t.startsWith("room:")),
  };
}

function applyFilter(item, filter) {
  const rooms = (item.dataset.rooms ?? "").toLowerCase().split(" ");
  item.hidden = !(
    filter.rooms.every((room) => rooms.includes(room)) &&
    filter.words.every((word) => item.dataset.text.includes(word))
  );
}

function refilter() {
  const filter = currentFilter();
  for (const item of $("log").children) applyFilter(item, filter);
  showShown();
}

function showShown() {
  const all = $("log").children.length;
  const shown = $("log").querySelectorAll(":scope > li:not([hidden])").length;
  $("log-shown").textContent = shown === all ? `${all} rows` : `${shown} of ${all} rows`;
}

function filterByRoom(room) {
  $("log-filter").value = `room:${room}`;
  refilter();
}

// -- the connection --------------------------------------------------------------------------

function chosenTransport() {
  return document.querySelector('input[name="transport"]:checked').value;
}

function showState(state, detail = {}) {
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
  badge.className = `state ${state}`;
  $("transport-now").textContent = state === "connected" ? (detail.transport ?? "–") : "–";
  const live = state !== "offline" && state !== "closed";
  $("connect").disabled = live;
  $("disconnect").disabled = !live;
}

/** A state change, logged once: the library reports "connected" again when its catch-up ends. */
function logState(state, detail) {
  const key = `${state} ${detail.transport ?? ""}`;
  if (key === lastStateLogged) return;
  lastStateLogged = key;
  const why = detail.reason === "client" ? "by you" : (detail.transport ?? detail.code ?? detail.reason);
  log("note", `state: ${state}`, detail, { state, summary: why ? String(why) : "" });
}

function showCursor() {
  $("cursor").textContent = client?.cursor ?? "none";
  $("event-count").textContent = String(eventCount);
  $("replayed").textContent = String(lastReplayed);
}

function shareLink() {
  const params = new URLSearchParams();
  const token = $("token").value.trim();
  if (token) params.set("token", token);
  const rooms = client ? client.rooms : [];
  if (rooms.length) params.set("rooms", rooms.join(","));
  params.set("transport", chosenTransport());
  $("share-link").href = `${location.pathname}?${params}`;
}

function connect(rooms = []) {
  const token = $("token").value.trim();
  if (!token) {
    log("failure", "no token", "paste a token" + (config.devTokens ? " or press “dev token”" : ""));
    return;
  }
  const previous = client;
  client = null; // what the old client still reports is no longer this page's
  previous?.close();
  eventCount = 0;
  lastReplayed = 0;
  identity = null;
  authRooms = new Set();
  const current = new GatewayClient(location.origin, {
    token,
    path: config.socketioPath,
    transports: [chosenTransport()],
    onEvent(name, payload, info = {}) {
      eventCount += 1;
      learnFrom(payload);
      const eventId = payload?.eventId;
      log("data", name, payload, { eventId, replayed: info.replay, rooms: roomsOfEvent(name, payload) });
      showCursor();
      showSuggestions();
    },
    onState(state, detail = {}) {
      if (client !== current) return; // a replaced client's last words
      showState(state, detail);
      logState(state, detail);
      if (state === "connected" && identity) identity.socketId = detail.socketId ?? identity.socketId;
      if (state === "closed" || state === "offline") {
        identity = null;
        authRooms = new Set();
      }
      showIdentity();
      showCursor();
      showRooms();
    },
    onCatchUp(summary) {
      // each event once: the gateway may replay one through two rooms (the handshake's and
      // a rejoined one), and the library delivers it once
      lastReplayed = summary.delivered;
      const what = summary.reconnection ? "rejoined" : "joined";
      const again = summary.replayed - summary.delivered;
      const gaps = summary.gaps.length ? `, gaps in ${summary.gaps.join(", ")}` : "";
      log("control", `${what}: replayed ${summary.delivered}`, summary, {
        summary: `from ${summary.from ?? "the start"} in ${summary.durationMs} ms` +
          (again > 0 ? `, ${again} more sent again through another room` : "") + gaps,
      });
      showCursor();
    },
    onRoomsRevoked(rooms) {
      for (const room of rooms) authRooms.delete(room);
      showRooms();
    },
    onAuth(payload) {
      identity = {
        userId: String(payload?.userId ?? "?"),
        role: String(payload?.role ?? "?"),
        expiresAt: payload?.expiresAt ?? null,
        shopIds: shopIdsOf(token),
        token,
        socketId: current.socket.id,
      };
      authRooms = new Set(Array.isArray(payload?.rooms) ? payload.rooms : []);
      log("control", "auth_success", payload, { rooms: [...authRooms] });
      showIdentity();
      showRooms();
    },
    onRefetch(info) {
      log("control", `refetch (${info.reason})`, info, { rooms: info.rooms });
    },
    onError(error) {
      if (error && typeof error === "object") reported.add(error);
      const detail = { code: error.code, message: error.message };
      if (error.event) detail.event = error.event;
      if (error.details !== undefined) detail.details = error.details;
      const row = log("failure", error.code ?? "error", detail, { rooms: error.roomId ? [error.roomId] : [] });
      if (error.event === "join_room" || error.event === "leave_room") {
        refusalCount += 1;
        unclaimedRefusals.push({ row, event: error.event, code: error.code, number: refusalCount });
        if (unclaimedRefusals.length > 20) unclaimedRefusals.shift();
      }
      showRooms();
    },
  });
  current.on("auth_expiring", (payload) => log("control", "auth_expiring", payload));
  client = current;
  current.connect();
  for (const room of rooms) joinRoom(room); // answered once connected
  shareLink();
}

/** A refused join or leave, logged once: the library has reported the gateway's `error`
 * event (or this very error) already; the row learns the room from the answer. */
function refused(error, event, room, since) {
  if (reported.has(error)) return;
  const at = unclaimedRefusals.findIndex(
    (r) => r.event === event && r.code === error.code && r.number > since,
  );
  if (at >= 0) {
    const [refusal] = unclaimedRefusals.splice(at, 1);
    setRooms(refusal.row, [room]);
    return;
  }
  log("failure", error.code ?? "error", { code: error.code, message: error.message, event }, { rooms: [room] });
}

async function joinRoom(room) {
  if (!client || !room) return;
  const asked = client;
  const since = refusalCount;
  pendingJoins.add(room);
  const joining = client.join(room);
  showRooms();
  try {
    const answer = await joining;
    const gap = answer.gap ? ", gap: refetch" : "";
    log("control", `join ${room}`, answer, {
      rooms: [room],
      summary: `ok, replayed ${answer.replayed ?? 0}, room's last event ${answer.lastEventId ?? "none"}${gap}`,
    });
  } catch (error) {
    refused(error, "join_room", room, since);
  } finally {
    pendingJoins.delete(room);
  }
  if (client !== asked) return;
  showRooms();
  showCursor();
  shareLink();
}

async function leaveRoom(room) {
  if (!client) return;
  const since = refusalCount;
  try {
    log("control", `leave ${room}`, await client.leave(room), { rooms: [room], summary: "ok" });
    authRooms.delete(room);
  } catch (error) {
    refused(error, "leave_room", room, since);
  }
  showRooms();
  shareLink();
}

async function devToken() {
  const shops = $("dev-shops").value.split(",").map((s) => s.trim()).filter(Boolean);
  const response = await fetch("/websocket-test/dev-token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub: $("dev-sub").value.trim(), role: $("dev-role").value, shopIds: shops }),
  });
  const body = await response.json();
  if (!response.ok) {
    log("failure", "dev token", body.error ?? body);
    return;
  }
  $("token").value = body.token;
  showIdentity();
  shareLink();
}

// -- the broadcast box -----------------------------------------------------------------------

function showResult(ok, text) {
  const result = $("bc-result");
  result.className = ok ? "ok" : "bad";
  result.textContent = text;
}

async function sendBroadcast(event) {
  event.preventDefault();
  let data;
  try {
    data = JSON.parse($("bc-data").value || "{}");
  } catch (error) {
    showResult(false, `data is not JSON: ${error.message}`);
    return;
  }
  const rooms = $("bc-rooms").value.split(",").map((r) => r.trim()).filter(Boolean);
  let response;
  try {
    response = await fetch("/broadcast", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${$("bc-token").value.trim()}` },
      body: JSON.stringify({ event: $("bc-event").value.trim(), data, rooms }),
    });
  } catch (error) {
    showResult(false, `not sent: ${error.message}`);
    return;
  }
  const body = await response.json().catch(() => null);
  if (response.ok && body?.eventId) {
    sentBroadcasts.set(body.eventId, body.rooms ?? rooms);
    // the event may have come over the socket before this answer
    const row = document.querySelector(`#log li[data-event-id="${CSS.escape(body.eventId)}"]`)
      ?? held.find((item) => item.dataset.eventId === body.eventId);
    if (row) setRooms(row, roomsOfEvent(row.dataset.event, { eventId: body.eventId }));
    showResult(true, `${response.status}: eventId ${body.eventId} to ${(body.rooms ?? []).join(", ")}`);
    return;
  }
  const error = body?.error;
  const details = error?.details === undefined ? "" : ` ${JSON.stringify(error.details)}`;
  showResult(false, error ? `${response.status} ${error.code}: ${error.message}${details}` : `${response.status}`);
}

/** The demo's BROADCAST_TOKEN, which the gateway gives only to a browser on its machine. */
async function prefillBroadcastToken() {
  const response = await fetch("/websocket-test/dev-broadcast-token", { method: "POST" }).catch(() => null);
  if (!response?.ok) return;
  const body = await response.json().catch(() => null);
  if (typeof body?.token !== "string" || $("bc-token").value) return;
  $("bc-token").value = body.token;
  const note = $("bc-token-note");
  note.textContent = "the demo's token, filled in because this browser is on the gateway's machine";
  note.hidden = false;
}

// -- wiring ----------------------------------------------------------------------------------

$("connect").addEventListener("click", () => connect());
$("disconnect").addEventListener("click", () => client?.close());
$("join").addEventListener("click", () => {
  const room = $("room").value.trim();
  $("room").value = "";
  joinRoom(room);
});
$("room").addEventListener("keydown", (event) => {
  if (event.key === "Enter") $("join").click();
});
$("clear-log").addEventListener("click", () => {
  $("log").replaceChildren();
  showShown();
});
$("pause").addEventListener("click", () => setPaused(!paused));
$("log-filter").addEventListener("input", refilter);
$("dev-token").addEventListener("click", devToken);
$("token").addEventListener("input", () => {
  shareLink();
  showIdentity();
});
for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener("change", shareLink);
}
$("broadcast-form").addEventListener("submit", sendBroadcast);
$("dev-token-form").hidden = !config.devTokens;
if (config.devTokens) $("identity-none").textContent += ": press “dev token”, then “connect”";
for (const name of config.broadcastEvents ?? []) {
  const option = document.createElement("option");
  option.value = name;
  $("bc-events").append(option);
}
setInterval(showIdentity, 15_000); // the expiry's "in N min"

// ?token=…&rooms=a,b&transport=polling fill the form and connect at once
const query = new URLSearchParams(location.search);
const transport = query.get("transport");
if (transport === "polling" || transport === "websocket") {
  document.querySelector(`input[name="transport"][value="${transport}"]`).checked = true;
}
if (query.get("token")) {
  $("token").value = query.get("token");
  const rooms = (query.get("rooms") ?? "").split(",").map((r) => r.trim()).filter(Boolean);
  connect(rooms);
}
shareLink();
showIdentity();
showRooms();
showShown();
if (config.devBroadcastToken) await prefillBroadcastToken();
document.body.dataset.ready = "true";
