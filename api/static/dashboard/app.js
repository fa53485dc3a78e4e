// The dashboard page: sign-in, filters, the live feed (over hub.js), the pictures (charts.js), the scan
// table and the health panel.
import { HubSocket } from "./hub.js";
import { HeatMap, MinuteChart, SymbolPanel, confidenceBar, directionBadge, directionOf } from "./charts.js";

const MAX_ROWS = 500; // live feed rows kept in the DOM; older ones are dropped
const RATE_WINDOW_S = 5; // events per second, averaged over this many seconds
const HEALTH_EVERY_MS = 5000;
const TOKEN_KEY = "tickstock.token";
const STATS_EVERY_MS = 15000; // the pictures are reconciled with the stats endpoint this often
const STATS_SOON_MS = 1200; // after an event the heat map cannot place: past the cache's staleness bound
const CHARTS_SUB = "charts"; // the pictures' own subscription: every event, whatever the feed's filters

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- token

/** A `#token=<jwt>` fragment (the run command's ready link) signs in and is then removed from the URL. */
function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

class AuthError extends Error {}

/** GET a JSON API path with the bearer token; problem documents become Errors with their detail. */
async function api(path, params) {
  const url = params && [...params].length ? `${path}?${params}` : path;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (response.status === 401) throw new AuthError(body?.detail || "the token was rejected");
  if (!response.ok) throw new Error(body?.detail || `${response.status} ${response.statusText}`);
  return body;
}

// ---------------------------------------------------------------- formatting

const utc = (iso) => (iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, "") : "");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? ""; // textContent only: event fields never become markup
  if (className) td.className = className;
  return td;
}

const catalog = new Map(); // pattern name -> its catalog direction
// Rows are drawn once the catalog is known, so that an event without `data.direction` gets its pattern's.
let catalogReady = Promise.resolve();
let catalogLoaded = false;

/** The symbol as a button that opens the symbol panel. */
function symbolCell(symbol) {
  const td = cell("", "sym");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link sym-link";
  button.textContent = symbol;
  button.setAttribute("aria-label", `${symbol}: show its recent patterns`);
  td.append(button);
  return td;
}

function eventRow(event, seq, extra = []) {
  const tr = document.createElement("tr");
  const direction = directionOf(event, catalog);
  tr.dataset.id = event.id;
  tr.dataset.seq = seq ?? "";
  tr.dataset.direction = direction;
  tr.className = `row-${direction}`;
  const dir = cell("");
  dir.append(directionBadge(direction));
  const confidence = cell("");
  confidence.append(confidenceBar(event.confidence));
  tr.append(cell(utc(event.detected_at)), symbolCell(event.symbol), cell(event.pattern), cell(event.timeframe),
            ...extra.map((text) => cell(text)), dir, confidence, cell(seq, "num"));
  return tr;
}

// ---------------------------------------------------------------- filters

function readFilters() {
  const confidence = $("f-confidence").value;
  return {
    symbols: $("f-symbols").value.toUpperCase().split(/[\s,]+/).filter(Boolean),
    universe: $("f-universe").value,
    pattern: $("f-pattern").value,
    timeframe: $("f-timeframe").value,
    confidenceMin: confidence === "" ? null : Number(confidence),
  };
}

/** The websocket `filter` object (docs/websocket.md); absent fields mean "any". */
function wsFilter(f) {
  const out = {};
  if (f.symbols.length) out.symbols = f.symbols;
  if (f.universe) out.universes = [f.universe];
  if (f.pattern) out.patterns = [f.pattern];
  if (f.timeframe) out.timeframes = [f.timeframe];
  if (f.confidenceMin != null) out.confidence_min = f.confidenceMin;
  return out;
}

/** The same filters as `/api/patterns/scan` query parameters. */
function scanParams(f) {
  const params = new URLSearchParams();
  for (const symbol of f.symbols) params.append("symbol", symbol);
  if (f.universe) params.set("universe", f.universe);
  if (f.pattern) params.set("pattern", f.pattern);
  if (f.timeframe) params.set("timeframe", f.timeframe);
  if (f.confidenceMin != null) params.set("confidence_min", String(f.confidenceMin));
  return params;
}

async function loadChoices() {
  const [universes, definitions] = await Promise.all([api("/api/universes"), api("/api/patterns/definitions")]);
  const fill = (select, items) => {
    const keep = select.value;
    for (const [value, label] of items) select.add(new Option(label, value));
    select.value = keep;
  };
  const universe = $("f-universe");
  if (universe.options.length <= 2) {
    fill(universe, universes.items.map((u) => [u.key, `${u.name} (${u.count})`]));
  }
  for (const d of definitions.items) catalog.set(d.name, d.direction);
  const pattern = $("f-pattern");
  if (pattern.options.length <= 1) {
    fill(pattern, definitions.items.filter((d) => d.enabled !== false).map((d) => [d.name, d.name])
      .sort((a, b) => a[1].localeCompare(b[1])));
  }
}

// ---------------------------------------------------------------- live feed

/** Rows arrive in bursts: queue them and touch the DOM once per animation frame, newest on top. */
class Feed {
  pending = [];
  scheduled = false;
  received = 0;
  flushes = 0; // how many DOM updates, and the time they took (the browser tests print them)
  flushMs = 0;
  flushMaxMs = 0;

  constructor(body, count) {
    Object.assign(this, { body, count });
  }

  push(event, seq) {
    this.received += 1;
    this.pending.push([event, seq]);
    // Rows beyond MAX_ROWS would be dropped on flush anyway (and rAF does not run in a hidden tab).
    if (this.pending.length > MAX_ROWS) this.pending.splice(0, this.pending.length - MAX_ROWS);
    this.schedule();
  }

  schedule() {
    if (this.scheduled || $("feed-pause").checked || !catalogLoaded) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  flush() {
    const started = performance.now();
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) fragment.append(eventRow(...batch[i]));
    this.body.prepend(fragment);
    const rows = this.body.rows;
    if (rows.length > MAX_ROWS) { // drop the oldest in one range operation
      const range = document.createRange();
      range.setStartBefore(rows[MAX_ROWS]);
      range.setEndAfter(this.body.lastElementChild);
      range.deleteContents();
    }
    this.count.textContent = `${this.received} received, ${rows.length} shown (newest first)`;
    const took = performance.now() - started;
    this.flushes += 1;
    this.flushMs += took;
    this.flushMaxMs = Math.max(this.flushMaxMs, took);
  }

  clear() {
    this.pending = [];
    this.received = 0;
    this.body.replaceChildren();
    this.count.textContent = "no events yet";
  }
}

/** Events per second over the last RATE_WINDOW_S seconds, in one-second buckets. */
class Rate {
  buckets = new Array(RATE_WINDOW_S).fill(0);
  tick() {
    this.buckets.push(0);
    this.buckets.shift();
  }
  add() {
    this.buckets[this.buckets.length - 1] += 1;
  }
  get perSecond() {
    return this.buckets.slice(0, -1).reduce((a, b) => a + b, 0) / (RATE_WINDOW_S - 1);
  }
}

// ---------------------------------------------------------------- scan table

const scan = { cursors: [null], page: 0, next: null, scans: 0, hits: 0, seqNo: 0 };

async function loadScan(page = 0) {
  const params = scanParams(readFilters());
  params.set("limit", $("scan-limit").value);
  const cursor = scan.cursors[page];
  if (cursor) params.set("cursor", cursor);
  const mine = ++scan.seqNo; // a slower earlier answer must not overwrite a newer one
  try {
    const [body] = await Promise.all([api("/api/patterns/scan", params), catalogReady]);
    if (mine !== scan.seqNo) return;
    scan.page = page;
    scan.cursors.length = page + 1;
    scan.next = body.next_cursor;
    scan.scans += 1;
    if (body.cache?.hit) scan.hits += 1;
    $("scan-error").textContent = "";
    $("scan-body").replaceChildren(...body.items.map((e) => eventRow(e, e.seq, [e.type.replace("pattern_", "")])));
    if (!body.items.length) {
      const tr = document.createElement("tr");
      tr.append(cell("No stored event matches these filters.", "empty"));
      tr.firstChild.colSpan = 8;
      $("scan-body").replaceChildren(tr);
    }
    $("scan-info").textContent = `${body.items.length} rows · ${body.query_ms} ms${body.cache?.hit ? " · cached" : ""}`;
    if (lastHealth) renderHealth(lastHealth);
  } catch (err) {
    if (mine !== scan.seqNo) return;
    if (err instanceof AuthError) return signOut(err.message);
    $("scan-error").textContent = `Scan failed: ${err.message}`;
  }
  $("scan-page").textContent = `page ${scan.page + 1}`;
  $("scan-prev").disabled = scan.page === 0;
  $("scan-first").disabled = scan.page === 0;
  $("scan-next").disabled = !scan.next;
}

function nextScanPage() {
  if (!scan.next) return;
  scan.cursors[scan.page + 1] = scan.next;
  loadScan(scan.page + 1);
}

// ---------------------------------------------------------------- health panel

const CHECK_NAMES = { postgres: "PostgreSQL", nats: "NATS JetStream", redis: "Redis" };
let lastHealth = null; // the last /health/ready body, re-rendered when this page's scans change the cache ratio
let lastHealthAt = null;

function kv(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([key, value, className]) => {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (className) dd.className = className;
    return [dt, dd];
  }));
}

async function loadHealth() {
  if (document.hidden) return;
  const badge = $("health-overall");
  let body;
  try {
    const response = await fetch("/health/ready", { cache: "no-store" });
    body = await response.json(); // 503 carries the same body
  } catch {
    badge.textContent = "unreachable";
    badge.dataset.status = "down";
    return;
  }
  badge.textContent = body.status;
  badge.dataset.status = body.status;
  lastHealth = body;
  lastHealthAt = new Date();
  renderHealth(body);
}

function renderHealth(body) {
  const pairs = Object.entries(body.checks || {}).map(([name, check]) => [
    CHECK_NAMES[name] || name,
    check.status === "up" ? `up · ${check.latency_ms} ms` : `down · ${check.error || ""}`,
    check.status === "up" ? "ok" : "bad",
  ]);
  // Whatever fields this hub's /health/ready has: each line only when its field is there.
  const p = body.pipeline || {};
  const number = (v) => (v == null ? "–" : Number(v).toLocaleString("en"));
  const percent = (ratio) => `${Math.round(ratio * 100)} %`;
  if ("consumer_pending" in p) {
    pairs.push(["Consumer lag", `${number(p.consumer_pending)} (+${number(p.ack_pending)} unacked)`]);
  }
  if ("dead_letters_pending" in p) {
    pairs.push(["Dead letters", number(p.dead_letters_pending), p.dead_letters_pending ? "warn" : ""]);
  }
  if (p.per_second) pairs.push(["Stored per second", number(p.per_second.stored)]);
  if (p.totals) pairs.push(["Stored (this node)", number(p.totals.stored)]);
  if ("ingest_to_stored_p95_s" in p) {
    pairs.push(["Ingest→stored p95", p.ingest_to_stored_p95_s == null ? "–" : `${p.ingest_to_stored_p95_s} s`]);
  }
  if (body.cache) { // the response cache (Redis): its state and the scan route's hit ratio
    const c = body.cache;
    const up = c.status === "up";
    pairs.push(["Cache", up ? "up" : `${c.status} (breaker ${c.breaker})`, up ? "ok" : "warn"]);
    const s = c.routes?.scan;
    const ratio = s?.hit_ratio_1m ?? s?.hit_ratio;
    const over = s?.hit_ratio_1m != null ? "(1 min)" : "(since start)";
    pairs.push(["Scan cache hits", ratio == null ? "–" : `${percent(ratio)} ${over}`]);
  } else if (scan.scans) { // a hub without the cache summary: what this page's own scans saw
    pairs.push(["Scan cache hits", `${percent(scan.hits / scan.scans)} (this page)`]);
  }
  if (body.uptime_s != null) pairs.push(["Uptime", `${Math.round(body.uptime_s)} s`]);
  pairs.push(["Checked", lastHealthAt.toLocaleTimeString()]);
  kv($("health"), pairs);
}

// ---------------------------------------------------------------- connection and state

const feed = new Feed($("feed-body"), $("feed-count"));
const minuteChart = new MinuteChart($("minute-chart"), { legend: $("minute-legend") });
const heat = new HeatMap($("heat"), { onPick: pickCell, onUnknown: () => loadStatsSoon() });
const symbolPanel = new SymbolPanel($("symbol-panel"), {
  chart: $("symbol-chart"), list: $("symbol-list"), title: $("symbol-title"),
});
window.tickstockCharts = { feed, minuteChart, heat, symbolPanel }; // for the browser tests' figures
const rate = new Rate();
let socket = null;
let subNo = 0;
let subId = null;

function setStatus(state, text, detail = state) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text; // role=status: announced politely, only when it changes
  $("conn-state").textContent = detail;
}

function onState(s) {
  switch (s.state) {
    case "connecting":
      return setStatus("connecting", "Connecting…");
    case "connected":
      $("conn-node").textContent = s.node ?? "–";
      $("conn-expiry").textContent = s.expiresAt ? new Date(s.expiresAt * 1000).toLocaleString() : "–";
      $("who").textContent = s.subject ? `Signed in as ${s.subject}` : "";
      if (s.resuming) loadHealth(); // the hub may have restarted: do not show its old numbers for 5 s
      return setStatus("connected", s.resuming ? "Reconnected" : "Connected");
    case "reconnecting": {
      // The announced text stays the same across attempts; the countdown goes to the panel only.
      const wait = s.retryInMs != null ? ` in ${(s.retryInMs / 1000).toFixed(1)} s` : "";
      return setStatus("reconnecting", "Connection lost, reconnecting…", `reconnecting${wait} (attempt ${s.attempt})`);
    }
    case "resumed":
      if (s.id !== subId) return;
      if (!s.recovered) {
        $("feed-notice").hidden = false;
        $("feed-notice").textContent = "The hub could not replay every event missed while disconnected; "
          + "the stored events table below has them.";
        loadScan(0);
      }
      return setStatus("resumed", `Resumed: ${s.replayed} missed event${s.replayed === 1 ? "" : "s"} replayed`);
    case "unauthorized":
      return signOut(`The hub closed the connection: ${s.reason}. Paste a new token.`);
    case "failed":
      return setStatus("failed", `Cannot connect: ${s.reason}`);
    default:
  }
}

function onEvent(event, seq, subs = [subId]) {
  if (subs.includes(CHARTS_SUB)) {
    const direction = directionOf(event, catalog);
    minuteChart.add(event);
    heat.add(event, direction);
    symbolPanel.add(event, direction);
  }
  if (!subs.includes(subId)) return;
  feed.push(event, seq);
  rate.add();
  $("conn-seq").textContent = seq;
  $("status").dataset.lastSeq = seq;
}

// ---------------------------------------------------------------- pictures

let statsNo = 0;
let statsSoon = 0;
let statsAt = 0;

/** Both pictures from ``/api/patterns/stats/recent``; a slower earlier answer never overwrites a newer one. */
async function loadStats() {
  if (!token()) return;
  const mine = ++statsNo;
  statsAt = Date.now();
  try {
    const body = await api("/api/patterns/stats/recent", new URLSearchParams({ minutes: "60" }));
    if (mine !== statsNo) return;
    minuteChart.load(body);
    heat.load(body);
    $("heat-error").textContent = "";
  } catch (err) {
    if (mine !== statsNo) return;
    if (err instanceof AuthError) return signOut(err.message);
    $("heat-error").textContent = `Statistics failed: ${err.message}`;
  }
}

/** An event whose sector the heat map does not know: ask again once the cache has it (at most every 5 s). */
function loadStatsSoon() {
  if (statsSoon) return;
  const wait = Math.max(STATS_SOON_MS, statsAt + 5000 - Date.now());
  statsSoon = setTimeout(() => { statsSoon = 0; loadStats(); }, wait);
}

/** A heat-map cell: the feed and the scan table show that pattern on the cell's symbols. */
function pickCell(cell, sectorName) {
  const pattern = $("f-pattern");
  if (![...pattern.options].some((o) => o.value === cell.pattern)) pattern.add(new Option(cell.pattern, cell.pattern));
  pattern.value = cell.pattern;
  $("f-symbols").value = cell.symbols.join(" ");
  $("f-universe").value = "";
  const more = cell.symbol_count > cell.symbols.length ? ` (the first ${cell.symbols.length} of ${cell.symbol_count})` : "";
  const note = $("heat-note");
  note.hidden = false;
  note.textContent = `Filtered to ${sectorName} × ${cell.pattern}: ${cell.symbols.length} symbol`
    + `${cell.symbols.length === 1 ? "" : "s"}${more}. Clear the filters to see everything again.`;
  $("filters").requestSubmit();
}

async function openSymbol(symbol) {
  const params = new URLSearchParams({ symbol, limit: "200" });
  symbolPanel.show(symbol, []);
  $("symbol-panel").focus();
  try {
    const [body] = await Promise.all([api("/api/patterns/scan", params), catalogReady]);
    if (symbolPanel.symbol !== symbol) return;
    symbolPanel.show(symbol, body.items.map((e) => ({ ...e, direction: directionOf(e, catalog) })));
  } catch (err) {
    if (err instanceof AuthError) return signOut(err.message);
    const li = document.createElement("li");
    li.textContent = `Could not load ${symbol}: ${err.message}`;
    $("symbol-list").replaceChildren(li);
  }
}

function onError(err) {
  if (err.code === "invalid_filter" || err.code === "invalid") $("filters-error").textContent = err.message;
  else console.warn("hub error", err);
}

function subscribe() {
  const previous = subId;
  subId = `feed-${++subNo}`;
  if (previous) socket.unsubscribe(previous);
  $("filters-error").textContent = "";
  $("feed-notice").hidden = true;
  feed.clear();
  socket.subscribe(subId, wsFilter(readFilters()));
  $("conn-sub").textContent = subId;
  $("status").dataset.sub = subId;
}

function onSubscribed(s) {
  if (s.id === subId) $("status").dataset.subscribed = s.id;
}

function signIn() {
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("filters").hidden = false;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new HubSocket({ url: `${scheme}//${location.host}/ws`, token: token(), onEvent, onState, onSubscribed, onError });
  socket.subscribe(CHARTS_SUB, {});
  subscribe();
  socket.start();
  $("charts").hidden = false;
  catalogLoaded = false;
  catalogReady = loadChoices()
    .catch((err) => (err instanceof AuthError ? signOut(err.message) : console.warn(err)))
    .finally(() => { catalogLoaded = true; feed.schedule(); });
  loadScan(0);
  loadStats();
}

function signOut(message = "") {
  socket?.stop();
  socket = null;
  subId = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("filters").hidden = true;
  $("charts").hidden = true;
  symbolPanel.hide();
  $("who").textContent = "";
  feed.clear(); // what was shown belongs to the token that signed out
  $("scan-body").replaceChildren();
  $("scan-info").textContent = "";
  $("sign-in-error").textContent = message;
  setStatus("signed-out", message ? "Signed out: token rejected" : "Signed out");
  $("token-input").focus();
}

// ---------------------------------------------------------------- wiring

$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token-input").value.trim().replace(/^Bearer\s+/i, "");
  if (value.split(".").length !== 3) {
    $("sign-in-error").textContent = "That does not look like a JWT (three dot-separated parts).";
    return;
  }
  $("token-input").value = "";
  $("sign-in-error").textContent = "";
  sessionStorage.setItem(TOKEN_KEY, value);
  signIn();
});

$("sign-out").addEventListener("click", () => signOut());

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!socket) return;
  subscribe();
  loadScan(0);
});
// `reset` fires before the fields are cleared: apply on the next task.
$("filters").addEventListener("reset", () => {
  $("heat-note").hidden = true;
  heat.active = null;
  heat.invalidate();
  setTimeout(() => $("filters").requestSubmit());
});
for (const table of [$("feed-body"), $("scan-body")]) {
  table.addEventListener("click", (e) => {
    const button = e.target.closest(".sym-link");
    if (button) openSymbol(button.textContent);
  });
}
$("symbol-close").addEventListener("click", () => symbolPanel.hide());

$("feed-pause").addEventListener("change", () => feed.schedule());
$("feed-clear").addEventListener("click", () => feed.clear());
$("scan-refresh").addEventListener("click", () => loadScan(scan.page));
$("scan-limit").addEventListener("change", () => { scan.cursors = [null]; loadScan(0); });
$("scan-first").addEventListener("click", () => loadScan(0));
$("scan-prev").addEventListener("click", () => loadScan(Math.max(0, scan.page - 1)));
$("scan-next").addEventListener("click", nextScanPage);

setInterval(() => {
  rate.tick();
  $("conn-rate").textContent = rate.perSecond.toFixed(1);
}, 1000);
setInterval(loadHealth, HEALTH_EVERY_MS);
setInterval(() => { if (socket) loadStats(); }, STATS_EVERY_MS);
setInterval(() => minuteChart.invalidate(), 10_000); // the window slides even without events
document.addEventListener("visibilitychange", loadHealth);

tokenFromFragment();
loadHealth();
if (token()) signIn();
else signOut();
