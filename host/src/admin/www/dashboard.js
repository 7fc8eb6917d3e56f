// Roost's live dashboard. With an admin key (from the page, when the
// request carried one; else sessionStorage; else asked for once), it:
//
//   GET /dashboard/state (Authorization: Bearer <key>) -> the first snapshot,
//        or 401: ask for the key again
//   join "roost:dashboard" {key} on the socket /_roost/admin
//        -> a "snapshot" push every second, redrawn as it comes
//
// The snapshot is the server's JSON view: nodes, apps (counters, rates,
// busiest topics, plugins), a minute of server-wide rates, recent reloads.
// All server text goes into the page with textContent, never as HTML.

import { Socket } from "/_roost/phoenix.mjs";

const KEY = "roost-dashboard:key";
const TOPIC = "roost:dashboard";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  signOut: $("sign-out"),
  nodeName: $("node-name"),
  nodeMeta: $("node-meta"),
  appsBody: $("apps-body"),
  appsCount: $("apps-count"),
  pluginsBody: $("plugins-body"),
  pluginsCount: $("plugins-count"),
  nodesList: $("nodes-list"),
  nodesCount: $("nodes-count"),
  topicsList: $("topics-list"),
  topicsEmpty: $("topics-empty"),
  reloadsList: $("reloads-list"),
  reloadsEmpty: $("reloads-empty"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyError: $("key-error"),
};

const given = document.querySelector('meta[name="roost-admin-key"]')?.content || "";
let key = given || sessionStorage.getItem(KEY) || "";
let socket = null;
let channel = null;
let latest = null;
let lastUpdate = 0;
/** Plugin versions last drawn, by app/path: a change flashes its row. */
const versions = new Map();

// Exposed for the browser tests and for a curious operator's console.
window.roostDashboard = {
  get snapshot() {
    return latest;
  },
  get socket() {
    return socket;
  },
};

// --- signing in ---------------------------------------------------------------

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const typed = ui.keyInput.value.trim();
  if (!typed) return;
  key = typed;
  ui.keyDialog.close();
  start();
});

ui.keyDialog.addEventListener("cancel", (event) => event.preventDefault());

ui.signOut.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  key = "";
  stop();
  askForKey("");
});

function askForKey(problem) {
  document.body.dataset.state = "signed-out";
  showStatus("signed-out", "signed out");
  ui.keyError.textContent = problem;
  ui.keyInput.value = "";
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

/** Checks the key with one snapshot over HTTP, then goes live over the socket. */
async function start() {
  let response;
  try {
    response = await fetch("/dashboard/state", { headers: { authorization: `Bearer ${key}` } });
  } catch (error) {
    showStatus("reconnecting", "server unreachable");
    setTimeout(start, 2000);
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey("That key is not one of the server's admin keys.");
    return;
  }
  if (!response.ok) {
    askForKey(`The server answered ${response.status}: ${(await response.text()).split("\n")[0]}`);
    return;
  }
  sessionStorage.setItem(KEY, key);
  document.body.dataset.state = "signed-in";
  render(await response.json());
  connect();
}

function connect() {
  stop();
  socket = new Socket("/_roost/admin", { heartbeatIntervalMs: 15000 });
  socket.onOpen(() => showStatus(channel?.state === "joined" ? "live" : "connecting"));
  socket.onError(() => showStatus("reconnecting"));
  socket.onClose(() => showStatus("reconnecting"));
  // A function, so a rejoin after a reconnect sends the key again.
  channel = socket.channel(TOPIC, () => ({ key }));
  channel.on("snapshot", render);
  channel
    .join()
    .receive("ok", () => showStatus("live"))
    .receive("error", ({ reason } = {}) => {
      if (reason === "unauthorized") {
        stop();
        sessionStorage.removeItem(KEY);
        askForKey("That key is not one of the server's admin keys.");
      }
    });
  socket.connect();
}

function stop() {
  channel?.leave();
  socket?.disconnect();
  channel = null;
  socket = null;
}

function showStatus(state, text) {
  ui.status.dataset.state = state;
  ui.statusText.textContent =
    text ?? (state === "live" ? "live · every second" : state === "reconnecting" ? "reconnecting…" : "connecting…");
}

// A snapshot that stops coming shows as stale.
setInterval(() => {
  if (ui.status.dataset.state === "live" && lastUpdate && Date.now() - lastUpdate > 3500) {
    showStatus("reconnecting", `stale · ${ago(lastUpdate)}`);
  }
}, 1000);

// --- formatting ------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function count(n) {
  return integer.format(n ?? 0);
}

function rate(n) {
  if (!n) return "0";
  if (n < 10) return decimal.format(n);
  if (n >= 10_000) return `${decimal.format(n / 1000)}k`;
  return integer.format(n);
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? decimal.format(n) : n} ${units[i]}`;
}

function duration(seconds) {
  seconds = Math.floor(seconds);
  if (seconds < 60) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${seconds % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function ago(ms) {
  const seconds = Math.max(0, (Date.now() - ms) / 1000);
  return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** An element with a class and text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function chip(text, kind = "") {
  return el("span", `chip ${kind}`.trim(), text);
}

/** Sets `[data-metric=name]` to text. */
function metric(name, text) {
  const node = document.querySelector(`[data-metric="${name}"]`);
  if (node) node.textContent = text;
}

function spark(tile, values) {
  const path = document.querySelector(`[data-tile="${tile}"] .spark path`);
  if (!path) return;
  if (values.length < 2) {
    path.setAttribute("d", "");
    return;
  }
  const max = Math.max(...values, 1);
  const step = 120 / (values.length - 1);
  const y = (v) => (27 - (v / max) * 25).toFixed(1);
  const line = values.map((v, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${y(v)}`).join("");
  path.setAttribute("d", `${line}L120,28L0,28Z`);
}

// --- drawing ---------------------------------------------------------------------

function render(snapshot) {
  latest = snapshot;
  lastUpdate = Date.now();
  if (ui.status.dataset.state !== "live" && channel?.state === "joined") showStatus("live");
  const { totals, history = [], apps = [], nodes = [], reloads = [] } = snapshot;
  const node = nodes.find((n) => n.self) || nodes[0];
  if (node) {
    ui.nodeName.textContent = node.name;
    ui.nodeMeta.textContent = `Roost ${node.version} · up ${duration(node.uptime_seconds)} · ${bytes(node.memory_bytes)}`;
  }
  drawTiles(totals, history);
  drawApps(apps);
  drawPlugins(apps);
  drawNodes(nodes);
  drawTopics(apps);
  drawReloads(reloads);
}

function drawTiles(totals, history) {
  const c = totals.counters;
  metric("sockets", count(totals.sockets));
  metric("sockets-detail", `WebSocket ${count(totals.websocket)} · long-poll ${count(totals.longpoll)}`);
  metric("channels", count(totals.channels));
  metric("channels-detail", `${count(c.joins_ok)} joined since start`);
  metric("joins-rate", rate(totals.rates.joins));
  metric("joins-detail", `${count(c.joins_error)} refused · ${count(c.joins_crashed)} crashed`);
  metric("messages-in-rate", rate(totals.rates.messages_in));
  metric("messages-detail", `out ${rate(totals.rates.messages_out)}/s · ${count(c.messages_in)} in total`);
  metric("deliveries-rate", rate(totals.rates.deliveries));
  metric("deliveries-detail", `${rate(totals.rates.broadcasts)} broadcasts/s · ${count(c.deliveries)} in total`);
  metric("slow-consumers", count(c.slow_consumers));
  metric("slow-detail", `${count(c.disconnects)} server closes · ${count(c.refusals)} refused`);
  document.querySelector('[data-tile="slow"]').dataset.alarm = String(c.slow_consumers > 0);
  spark("sockets", history.map((s) => s.sockets));
  spark("channels", history.map((s) => s.channels));
  spark("joins", history.map((s) => s.joins));
  spark("messages", history.map((s) => s.messages_in));
  spark("deliveries", history.map((s) => s.deliveries));
}

function drawApps(apps) {
  ui.appsCount.textContent = String(apps.length);
  const rows = apps.map((app) => {
    const row = el("tr");
    row.dataset.app = app.name;
    const name = el("td");
    name.append(el("span", "name", app.name), el("span", "sub-line mono", `${app.mount}/websocket`));
    const sockets = el("td", "num");
    sockets.dataset.field = "sockets";
    sockets.append(count(app.sockets), el("span", "sub-line", `ws ${app.transports.websocket} · lp ${app.transports.longpoll}`));
    const cell = (field, text, className = "num") => {
      const td = el("td", className, text);
      td.dataset.field = field;
      return td;
    };
    const totals = el("td", "num");
    totals.dataset.field = "messages";
    const inTotal = el("span", null, count(app.totals.messages_in));
    inTotal.dataset.field = "messages_in";
    const outTotal = el("span", "dim", count(app.totals.messages_out));
    outTotal.dataset.field = "messages_out";
    totals.append(inTotal, " · ", outTotal);
    const trouble = el("td");
    const chips = el("div", "chips");
    const t = app.totals;
    if (t.joins_crashed) chips.append(chip(`${count(t.joins_crashed)} joins crashed`, "bad"));
    if (t.slow_consumers) chips.append(chip(`${count(t.slow_consumers)} slow consumers`, "bad"));
    if (t.refusals) chips.append(chip(`${count(t.refusals)} refused`, "warn"));
    if (t.joins_error) chips.append(chip(`${count(t.joins_error)} joins refused`));
    if (!chips.childElementCount) chips.append(chip("none", "ok"));
    trouble.append(chips);
    const channels = cell("channels", count(app.channels));
    channels.append(el("span", "sub-line", `${count(app.topics)} topics`));
    row.append(
      name,
      sockets,
      channels,
      cell("joins_rate", rate(app.rates.joins)),
      cell("in_rate", rate(app.rates.messages_in)),
      cell("out_rate", rate(app.rates.messages_out)),
      cell("deliveries_rate", rate(app.rates.deliveries)),
      totals,
      trouble,
    );
    return row;
  });
  ui.appsBody.replaceChildren(...rows);
}

function drawPlugins(apps) {
  const rows = [];
  let total = 0;
  for (const app of apps) {
    for (const plugin of app.plugins) {
      total += 1;
      const id = `${app.name}\n${plugin.path}`;
      const seen = versions.get(id);
      versions.set(id, plugin.version);
      const row = el("tr");
      row.dataset.app = app.name;
      row.dataset.plugin = plugin.plugin;
      if (seen && seen !== plugin.version) row.className = "flash";
      const name = el("td");
      name.append(el("span", "name", plugin.plugin), el("span", "sub-line mono", shortPath(plugin.path)));
      name.lastChild.title = plugin.path;
      const where = el("td");
      const routes = el("div", "chips");
      for (const route of plugin.routes) routes.append(chip(route));
      where.append(el("span", "name", app.name), routes);
      const version = el("td");
      const hash = el("span", "version", plugin.version);
      hash.dataset.field = "version";
      version.append(hash, el("span", "sub-line", plugin.wit));
      const loaded = el("td", null, ago(plugin.loaded_at * 1000));
      loaded.title = new Date(plugin.loaded_at * 1000).toLocaleString();
      const warm = el("td", "num", count(plugin.warm_instances));
      const memory = plugin.warm_memory_bytes || [];
      if (memory.length) {
        // Linear memory per warm instance: the largest, and all on hover.
        const largest = Math.max(...memory);
        const same = memory.every((n) => n === largest);
        const each = el("span", "sub-line", `${same ? "" : "up to "}${bytes(largest)} each`);
        each.dataset.field = "warm-memory";
        each.title = `linear memory per warm instance: ${memory.map(bytes).join(", ")}`;
        warm.append(each);
      }
      const reloads = el("td", "num");
      reloads.dataset.field = "reloads";
      reloads.append(count(plugin.reloads));
      if (plugin.reload_failures) reloads.append(el("span", "sub-line", `${plugin.reload_failures} failed`));
      const failures = el("td");
      const chips = el("div", "chips");
      for (const [kind, n] of Object.entries(plugin.call_failures || {})) {
        if (n) chips.append(chip(`${kind} ${count(n)}`, "bad"));
      }
      if (!chips.childElementCount) chips.append(chip("none", "ok"));
      failures.append(chips);
      row.append(name, where, version, loaded, warm, reloads, failures);
      rows.push(row);
      if (plugin.last_error) {
        const line = el("tr", "error-line");
        const td = el("td");
        td.colSpan = 7;
        const when = plugin.last_error_at ? ` (${ago(plugin.last_error_at * 1000)})` : "";
        const error = el("span", "mono", plugin.last_error);
        error.title = plugin.last_error;
        td.append(el("span", null, `Last reload failed${when}; the version above kept serving:`), error);
        line.append(td);
        rows.push(line);
      }
    }
  }
  ui.pluginsCount.textContent = String(total);
  ui.pluginsBody.replaceChildren(...rows);
}

/** `/long/path/plugins/target/wasm32-wasip2/release/ping.wasm` → `…/release/ping.wasm`. */
function shortPath(path) {
  const parts = path.split("/");
  return parts.length > 3 ? `…/${parts.slice(-2).join("/")}` : path;
}

function drawNodes(nodes) {
  ui.nodesCount.textContent = String(nodes.length);
  ui.nodesList.replaceChildren(
    ...nodes.map((node) => {
      const item = el("li");
      item.append(el("span", "dot"), el("span", "name", node.name));
      item.append(
        el(
          "span",
          "facts",
          `${node.self ? "this node · " : ""}Roost ${node.version} · up ${duration(node.uptime_seconds)} · ` +
            `${bytes(node.memory_bytes)} · ${count(node.sockets)} sockets · ${count(node.channels)} channels`,
        ),
      );
      return item;
    }),
  );
}

function drawTopics(apps) {
  const topics = apps
    .flatMap((app) => app.busiest.map((t) => ({ ...t, app: app.name })))
    .sort((a, b) => b.subscribers - a.subscribers)
    .slice(0, 10);
  const most = topics[0]?.subscribers || 1;
  ui.topicsEmpty.hidden = topics.length > 0;
  ui.topicsList.replaceChildren(
    ...topics.map((t) => {
      const item = el("li");
      item.dataset.topic = t.topic;
      const name = el("span", "topic", t.topic);
      name.title = `${t.app}: ${t.topic}`;
      const subs = el("span", "subs", count(t.subscribers));
      subs.title = "subscribers";
      const track = el("div", "bar-track");
      const fill = el("div", "bar-fill");
      fill.style.width = `${Math.max(4, (t.subscribers / most) * 100)}%`;
      track.append(fill);
      item.append(name, subs, track);
      return item;
    }),
  );
}

function drawReloads(reloads) {
  ui.reloadsEmpty.hidden = reloads.length > 0;
  ui.reloadsList.replaceChildren(
    ...reloads.slice(0, 8).map((r) => {
      const item = el("li", r.ok ? "ok" : "failed");
      item.dataset.plugin = r.plugin;
      const when = el("time", null, clock.format(new Date(r.at)));
      when.dateTime = new Date(r.at).toISOString();
      item.append(el("span", "mark", r.ok ? "✓" : "✕"), el("span", "name", r.plugin), when);
      const detail = el("span", "what");
      if (r.ok) detail.append(el("span", "dim", `${r.app} · now `), el("span", "version", r.version));
      else detail.append(el("span", "dim", `${r.app} · kept `), el("span", "version", r.version));
      item.append(detail);
      if (!r.ok && r.error) {
        const why = el("span", "why", r.error);
        why.title = r.error;
        item.append(why);
      }
      return item;
    }),
  );
}

// --- go ----------------------------------------------------------------------------

if (key) start();
else askForKey("");
