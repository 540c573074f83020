// The live test page: a person (or a link) connects with a token, joins rooms and watches the
// events arrive. It uses the gateway's own JS client library, as an application would.
import { GatewayClient } from "/websocket-test/gateway-client.js";

const config = JSON.parse(document.getElementById("page-config").textContent);
const $ = (id) => document.getElementById(id);
const LOG_MAX = 500; // entries kept on the page; older ones are dropped

let client = null;
let eventCount = 0;
let lastReplayed = 0; // events the gateway replayed in the last (re)connection's catch-up

function chosenTransport() {
  return document.querySelector('input[name="transport"]:checked').value;
}

function log(kind, name, payload, extra = {}) {
  const item = document.createElement("li");
  item.className = kind;
  item.dataset.event = name;
  if (extra.eventId) item.dataset.eventId = extra.eventId;
  const meta = document.createElement("div");
  meta.className = "meta";
  const parts = [
    ["time", new Date().toLocaleTimeString(undefined, { hour12: false }) +
      "." + String(Date.now() % 1000).padStart(3, "0")],
    ["name", name],
  ];
  if (extra.eventId) parts.push(["id", extra.eventId]);
  if (extra.replayed) parts.push(["replayed", "replayed"]);
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    meta.append(span);
  }
  item.append(meta);
  if (payload !== undefined) {
    const body = document.createElement("pre");
    body.textContent = typeof payload === "string" ? payload : JSON.stringify(payload, null, 2);
    item.append(body);
  }
  const list = $("log");
  list.prepend(item);
  while (list.children.length > LOG_MAX) list.lastElementChild.remove();
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

function showCursor() {
  $("cursor").textContent = client?.cursor ?? "none";
  $("event-count").textContent = String(eventCount);
  $("replayed").textContent = String(lastReplayed);
}

function showRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of client ? client.rooms : []) {
    const item = document.createElement("li");
    item.dataset.room = room;
    item.append(room);
    const leave = document.createElement("button");
    leave.type = "button";
    leave.className = "small";
    leave.textContent = "leave";
    leave.addEventListener("click", () => leaveRoom(room));
    item.append(leave);
    list.append(item);
  }
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
  client?.close();
  eventCount = 0;
  lastReplayed = 0;
  client = new GatewayClient(location.origin, {
    token,
    path: config.socketioPath,
    transports: [chosenTransport()],
    rooms,
    onEvent(name, payload, info = {}) {
      eventCount += 1;
      log("data", name, payload, { eventId: payload?.eventId, replayed: info.replay });
      showCursor();
    },
    onState(state, detail = {}) {
      showState(state, detail);
      const why = detail.transport ?? detail.reason;
      log("note", `state: ${state}${why ? ` (${why})` : ""}`);
      showCursor();
      showRooms();
    },
    onCatchUp(summary) {
      lastReplayed = summary.replayed;
      const what = summary.reconnection ? "rejoined" : "joined";
      log("control", `${what}: replayed ${summary.replayed}`, summary);
      showCursor();
    },
    onRoomsRevoked() {
      showRooms();
    },
    onAuth(payload) {
      log("control", "auth_success", payload);
      showRooms();
    },
    onRefetch(info) {
      log("control", `refetch (${info.reason})`, info);
    },
    onError(error) {
      const detail = { code: error.code, message: error.message };
      if (error.event) detail.event = error.event;
      log("failure", error.code ?? "error", detail);
      showRooms();
    },
  });
  client.connect();
  shareLink();
}

async function joinRoom(room) {
  if (!client || !room) return;
  try {
    log("control", `join ${room}`, await client.join(room));
  } catch (error) {
    log("failure", `join ${room}`, { code: error.code, message: error.message });
  }
  showRooms();
  showCursor();
  shareLink();
}

async function leaveRoom(room) {
  if (!client) return;
  try {
    log("control", `leave ${room}`, await client.leave(room));
  } catch (error) {
    log("failure", `leave ${room}`, { code: error.code, message: error.message });
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
  shareLink();
}

$("connect").addEventListener("click", () => connect());
$("disconnect").addEventListener("click", () => {
  client?.close();
  showState("offline");
  log("note", "disconnected by you");
});
$("join").addEventListener("click", () => {
  const room = $("room").value.trim();
  $("room").value = "";
  joinRoom(room);
});
$("room").addEventListener("keydown", (event) => {
  if (event.key === "Enter") $("join").click();
});
$("clear-log").addEventListener("click", () => $("log").replaceChildren());
$("dev-token").addEventListener("click", devToken);
$("token").addEventListener("input", shareLink);
for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener("change", shareLink);
}
$("dev-token-form").hidden = !config.devTokens;

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
document.body.dataset.ready = "true";
