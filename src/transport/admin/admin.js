// The admin dashboard: signs in with an `admin` API key kept in this tab's
// sessionStorage (never a cookie), then reads /api every few seconds and acts through
// it. No framework and no build step: the file is embedded in the binary as it is.
"use strict";

const KEY = "wss-admin-key";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

let timer = null;
let schemas = {}; // API event name → { schema, description }

/** A call to the API with the stored key; resolves to { status, body }. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = body;
  }
  const response = await fetch(path, init);
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (response.status === 401 && path !== "/api/whoami") signOut("The key is no longer accepted.");
  return { status: response.status, body: json };
}

function text(value) {
  return document.createTextNode(value === undefined || value === null ? "–" : String(value));
}

function cell(row, value, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.appendChild(value instanceof Node ? value : text(value));
  row.appendChild(td);
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function uptime(secs) {
  if (secs === null || secs === undefined) return "–";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60), s = secs % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function yesNo(value) {
  const span = document.createElement("span");
  span.className = value ? "yes" : "no";
  span.textContent = value ? "yes" : "no";
  return span;
}

// ---- sign in / out ---------------------------------------------------------------

async function signIn(secret) {
  sessionStorage.setItem(KEY, secret);
  const { status, body } = await api("GET", "/api/whoami");
  if (status !== 200 || !body || !body.ok) {
    sessionStorage.removeItem(KEY);
    return status === 401 ? "This key is not accepted." : `The server answered ${status}.`;
  }
  if (!body.data.scopes.includes("admin")) {
    sessionStorage.removeItem(KEY);
    return `Key “${body.data.key}” lacks the admin scope.`;
  }
  showDashboard(body.data.key);
  return null;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  timer = null;
  $("dashboard").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  const error = $("sign-in-error");
  error.hidden = !message;
  error.textContent = message || "";
}

function showDashboard(name) {
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = `key: ${name}`;
  loadEvents();
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

// ---- live views ------------------------------------------------------------------

async function refresh() {
  const [nodes, stats, rooms] = await Promise.all([
    api("GET", "/api/nodes"),
    api("GET", "/api/stats"),
    api("GET", "/api/rooms?limit=10"),
  ]);
  const rates = {};
  if (stats.status === 200) {
    const data = stats.body.data;
    for (const n of data.nodes) rates[n.node] = n.events_per_second;
    $("rate").textContent = data.total.events_per_second.toFixed(1);
    $("total").textContent = data.total.events_total.toLocaleString();
    const codes = Object.entries(data.total.errors).sort((a, b) => b[1] - a[1]);
    fill($("errors").tBodies[0], codes.map(([code, count]) => {
      const tr = document.createElement("tr");
      cell(tr, code, "mono");
      cell(tr, count.toLocaleString(), "num");
      return tr;
    }));
    $("no-errors").hidden = codes.length > 0;
  }
  if (nodes.status === 200) {
    const data = nodes.body.data;
    fill($("nodes").tBodies[0], data.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.id;
      cell(tr, n.id, n.this ? "mono this" : "mono");
      cell(tr, n.addr, "mono wide-only");
      cell(tr, n.connections, "num");
      cell(tr, n.pack ? n.pack.slice(0, 12) : "–", "mono");
      cell(tr, n.alive ? yesNo(n.ready) : "dead");
      cell(tr, uptime(n.uptime), "num");
      cell(tr, rates[n.id] === undefined ? "–" : rates[n.id].toFixed(1), "num");
      return tr;
    }));
    const packs = $("packs");
    packs.textContent = data.packs > 1 ? `${data.packs} packs: rollout in progress` : `${data.nodes.length} node(s), one pack`;
    packs.className = data.packs > 1 ? "badge warn" : "badge";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  if (rooms.status === 200) {
    const list = rooms.body.data.rooms;
    fill($("rooms").tBodies[0], list.map((r) => {
      const tr = document.createElement("tr");
      cell(tr, r.room, "mono");
      cell(tr, r.members, "num");
      cell(tr, r.history ? `${r.history.epoch.slice(0, 8)} @ ${r.history.offset}` : "no history", "mono");
      return tr;
    }));
    $("no-rooms").hidden = list.length > 0;
  }
}

// ---- sending an event ------------------------------------------------------------

/** A payload skeleton from a schema: required properties with placeholder values. */
function skeleton(schema) {
  if (!schema || typeof schema !== "object") return {};
  if (schema.type === "object" || schema.properties) {
    const out = {};
    for (const name of schema.required || []) out[name] = skeleton((schema.properties || {})[name]);
    return out;
  }
  if (schema.enum) return schema.enum[0];
  if (schema.type === "string") return "";
  if (schema.type === "integer" || schema.type === "number") return 0;
  if (schema.type === "boolean") return false;
  if (schema.type === "array") return [];
  return null;
}

async function loadEvents() {
  const { status, body } = await api("GET", "/api/openapi.json");
  if (status !== 200 || !body) return;
  schemas = {};
  for (const [path, item] of Object.entries(body.paths || {})) {
    const name = path.startsWith("/api/events/") ? path.slice("/api/events/".length) : null;
    if (!name || !item.post) continue;
    schemas[name] = {
      schema: item.post.requestBody.content["application/json"].schema,
      description: item.post.description || "",
    };
  }
  const select = $("event");
  const names = Object.keys(schemas).sort();
  select.replaceChildren(...names.map((n) => {
    const option = document.createElement("option");
    option.value = n;
    option.textContent = n;
    return option;
  }));
  if (!names.length) {
    const option = document.createElement("option");
    option.textContent = "the pack has no API events (senders: [api])";
    option.value = "";
    select.replaceChildren(option);
  }
  chooseEvent();
}

/** Text with `code spans` (as OpenAPI descriptions have them) as nodes, never HTML. */
function withCode(textWithTicks) {
  return textWithTicks.split("`").map((part, i) => {
    if (i % 2 === 0) return document.createTextNode(part);
    const code = document.createElement("code");
    code.textContent = part;
    return code;
  });
}

function chooseEvent() {
  const chosen = schemas[$("event").value];
  $("event-about").replaceChildren(...withCode(chosen ? chosen.description : ""));
  $("payload").value = chosen ? JSON.stringify(skeleton(chosen.schema), null, 2) : "";
  showPayloadErrors([]);
  $("send-result").hidden = true;
}

function showPayloadErrors(items) {
  const list = $("payload-errors");
  list.replaceChildren(...items.map(({ path, message }) => {
    const li = document.createElement("li");
    if (path !== undefined) {
      const code = document.createElement("code");
      code.textContent = path || "/";
      li.append(code, " ");
    }
    li.append(message);
    return li;
  }));
  list.hidden = items.length === 0;
  $("payload").classList.toggle("invalid", items.length > 0);
}

async function send(event) {
  event.preventDefault();
  const name = $("event").value;
  const result = $("send-result");
  result.hidden = true;
  if (!name) return;
  let payload;
  try {
    payload = JSON.parse($("payload").value);
  } catch (e) {
    showPayloadErrors([{ message: `Not JSON: ${e.message}` }]);
    return;
  }
  showPayloadErrors([]);
  const button = event.submitter || $("send-form").querySelector("button");
  button.disabled = true;
  try {
    const { status, body } = await api("POST", `/api/events/${encodeURIComponent(name)}`, JSON.stringify(payload));
    if (body && body.ok) {
      result.className = "result ok";
      result.textContent = `${status} ok — reply: ${JSON.stringify(body.data)}`;
    } else {
      const error = (body && body.error) || { code: "?", message: `HTTP ${status}` };
      if (error.code === "invalid_payload" || error.code === "bad_json") showPayloadErrors(error.details || [{ message: error.message }]);
      result.className = "result bad";
      result.textContent = `${status} ${error.code}: ${error.message}`;
    }
    result.hidden = false;
  } finally {
    button.disabled = false;
  }
}

// ---- disconnecting a user --------------------------------------------------------

async function kick(event) {
  event.preventDefault();
  const user = $("user").value.trim();
  const line = $("kick-result");
  if (!user) return;
  const { status, body } = await api("POST", `/api/users/${encodeURIComponent(user)}/disconnect`);
  line.hidden = false;
  if (body && body.ok) {
    line.className = "result-line";
    line.textContent = `${body.data.disconnected} connection(s) of “${user}” asked to close.`;
  } else {
    line.className = "result-line error";
    line.textContent = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${status}`;
  }
}

// ---- start -----------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = await signIn($("key").value.trim());
    $("key").value = "";
    $("sign-in-error").hidden = !error;
    $("sign-in-error").textContent = error || "";
  });
  $("sign-out").addEventListener("click", () => signOut(null));
  $("event").addEventListener("change", chooseEvent);
  $("send-form").addEventListener("submit", send);
  $("kick-form").addEventListener("submit", kick);
  const stored = sessionStorage.getItem(KEY);
  if (stored) {
    signIn(stored).then((error) => { if (error) signOut(error); });
  }
});
