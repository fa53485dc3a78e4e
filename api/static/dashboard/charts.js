// The dashboard's pictures, in plain SVG and HTML built with DOM calls (no library, no inline script or
// style: colours and widths are set through the CSSOM or SVG attributes, which the page's CSP allows).
//
//   MinuteChart  events per minute over the last hour, stacked by timeframe; live from the websocket
//   HeatMap      sector × pattern over the last hour: a table of buttons, a click filters the page
//   SymbolPanel  one symbol's recent patterns over time (a dot per event: direction and confidence)

const SVG = "http://www.w3.org/2000/svg";
export const TIMEFRAMES = ["1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly"];
// Okabe-Ito: told apart by most colour-blind readers; the legend names them too.
const TF_COLOURS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7a6a00", "#555555"];
export const DIRECTIONS = ["bullish", "bearish", "neutral"];
const ARROWS = { bullish: "▲", bearish: "▼", neutral: "●" };
const MINUTE_MS = 60_000;
const RENDER_EVERY_MS = 250; // live updates are batched: at most four redraws a second per picture

function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

function html(tag, { text, cls, attrs } = {}, parent = null) {
  const el = document.createElement(tag);
  if (text != null) el.textContent = text;
  if (cls) el.className = cls;
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

/** bullish | bearish | neutral: what the event says, else what the catalog says of its pattern. */
export function directionOf(event, catalog) {
  const said = event?.data?.direction;
  if (DIRECTIONS.includes(said)) return said;
  const known = catalog.get(event.pattern);
  return DIRECTIONS.includes(known) ? known : "neutral";
}

/** A direction badge: an arrow and the word (never colour alone). */
export function directionBadge(direction) {
  const span = html("span", { cls: `dir dir-${direction}` });
  html("span", { text: ARROWS[direction], attrs: { "aria-hidden": "true" } }, span);
  span.append(` ${direction}`);
  return span;
}

/** The confidence as a number and a bar; the bar is decoration, the number is what is read out. */
export function confidenceBar(value) {
  const wrap = html("span", { cls: "conf" });
  const bar = html("span", { cls: "conf-bar", attrs: { "aria-hidden": "true" } }, wrap);
  const fill = html("span", { cls: value >= 0.8 ? "conf-fill high" : "conf-fill" }, bar);
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, value)) * 100)}%`;
  html("span", { cls: "conf-num", text: typeof value === "number" ? value.toFixed(2) : "" }, wrap);
  return wrap;
}

/** Redraw at most every RENDER_EVERY_MS, and only when something changed. */
class Throttled {
  dirty = false;
  timer = 0;
  last = 0;
  renders = 0;
  renderMs = 0; // time spent drawing, in total and at most once (the browser tests print them)
  renderMaxMs = 0;

  invalidate() {
    this.dirty = true;
    if (this.timer) return;
    const wait = Math.max(0, this.last + RENDER_EVERY_MS - performance.now());
    this.timer = setTimeout(() => requestAnimationFrame(() => this.flush()), wait);
  }

  flush() {
    this.timer = 0;
    if (!this.dirty) return;
    this.dirty = false;
    this.last = performance.now();
    this.renders += 1;
    const started = performance.now();
    this.render();
    const took = performance.now() - started;
    this.renderMs += took;
    this.renderMaxMs = Math.max(this.renderMaxMs, took);
  }
}

// ---------------------------------------------------------------- events per minute

export class MinuteChart extends Throttled {
  counts = new Map(); // minute start (ms) -> counts per timeframe index
  minutes = 60;

  constructor(root, { legend }) {
    super();
    this.root = root;
    const title = root.querySelector("title");
    this.desc = root.querySelector("desc");
    this.titleText = title?.textContent ?? "";
    this.plot = svg("g", { class: "plot" }, root);
    this.axis = svg("g", { class: "axis" }, root);
    for (const [i, tf] of TIMEFRAMES.entries()) { // the legend: a swatch and the name
      const item = html("li", {}, legend);
      html("span", { cls: "swatch", attrs: { "aria-hidden": "true" } }, item).style.background = TF_COLOURS[i];
      item.append(tf);
    }
  }

  /** Replace the counts with the stats endpoint's ``per_minute`` rows. */
  load(body) {
    this.minutes = body.minutes;
    this.counts.clear();
    for (const row of body.per_minute) {
      const minute = Date.parse(row.minute);
      const counts = this.counts.get(minute) ?? new Array(TIMEFRAMES.length).fill(0);
      counts[TIMEFRAMES.indexOf(row.timeframe)] += row.events;
      this.counts.set(minute, counts);
    }
    this.invalidate();
  }

  /** One live event: counted in its minute if that minute is on the chart. */
  add(event) {
    const at = Date.parse(event.detected_at);
    const minute = at - (at % MINUTE_MS);
    const now = Date.now();
    if (!(minute > now - this.minutes * MINUTE_MS && minute <= now)) return;
    const tf = TIMEFRAMES.indexOf(event.timeframe);
    if (tf < 0) return;
    const counts = this.counts.get(minute) ?? new Array(TIMEFRAMES.length).fill(0);
    counts[tf] += 1;
    this.counts.set(minute, counts);
    this.invalidate();
  }

  render() {
    const W = 600, H = 170, left = 34, bottom = 18, top = 8;
    const now = Date.now();
    const last = now - (now % MINUTE_MS);
    const first = last - (this.minutes - 1) * MINUTE_MS;
    for (const minute of this.counts.keys()) if (minute < first) this.counts.delete(minute);
    let peak = 1, total = 0;
    for (const counts of this.counts.values()) {
      const sum = counts.reduce((a, b) => a + b, 0);
      peak = Math.max(peak, sum);
      total += sum;
    }
    const slot = (W - left) / this.minutes;
    const scale = (H - bottom - top) / peak;
    const plot = svg("g", { class: "plot" });
    for (const [minute, counts] of this.counts) {
      const x = left + ((minute - first) / MINUTE_MS) * slot;
      let y = H - bottom;
      for (const [i, n] of counts.entries()) {
        if (!n) continue;
        const h = n * scale;
        y -= h;
        svg("rect", { x: x + 0.5, y, width: Math.max(1, slot - 1), height: h, fill: TF_COLOURS[i] }, plot);
      }
    }
    this.plot.replaceWith(plot);
    this.plot = plot;
    const axis = svg("g", { class: "axis" });
    svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom }, axis);
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, axis).textContent = String(peak);
    svg("text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, axis).textContent = "0";
    const labels = [[left, "start", `−${this.minutes} min`], [left + (W - left) / 2, "middle", `−${this.minutes / 2}`],
      [W, "end", "now"]];
    for (const [x, anchor, text] of labels) svg("text", { x, y: H - 4, "text-anchor": anchor }, axis).textContent = text;
    this.axis.replaceWith(axis);
    this.axis = axis;
    const current = (this.counts.get(last) ?? []).reduce((a, b) => a + b, 0);
    this.root.dataset.total = String(total);
    this.root.dataset.current = String(current);
    this.desc.textContent = `${total} events in the last ${this.minutes} minutes, ${current} this minute; `
      + `busiest minute ${peak === 1 && total === 0 ? 0 : peak}.`;
  }
}

// ---------------------------------------------------------------- sector × pattern

const MAX_PATTERNS = 10;
const MAX_SECTORS = 12;
const UNCLASSIFIED = "No sector";

export class HeatMap extends Throttled {
  cells = new Map(); // "sector\u0000pattern" -> cell
  sectorOf = new Map(); // symbol -> sector (null: none), from the endpoint's cells
  active = null; // the cell the filters were set from

  constructor(root, { onPick, onUnknown }) {
    super();
    Object.assign(this, { root, onPick, onUnknown });
  }

  static key(sector, pattern) {
    return `${sector ?? ""}\u0000${pattern}`;
  }

  load(body) {
    this.cells.clear();
    for (const cell of body.heat) {
      this.cells.set(HeatMap.key(cell.sector, cell.pattern), { ...cell, symbols: [...cell.symbols] });
      for (const symbol of cell.symbols) this.sectorOf.set(symbol, cell.sector);
    }
    this.invalidate();
  }

  /** One live event: counted at once if its symbol's sector is known, else the caller refreshes. */
  add(event, direction) {
    if (!this.sectorOf.has(event.symbol)) {
      this.onUnknown();
      return;
    }
    const sector = this.sectorOf.get(event.symbol);
    const key = HeatMap.key(sector, event.pattern);
    let cell = this.cells.get(key);
    if (!cell) {
      cell = { sector, pattern: event.pattern, events: 0, avg_confidence: 0, bullish: 0, bearish: 0, neutral: 0,
               symbols: [], symbol_count: 0 };
      this.cells.set(key, cell);
    }
    cell.avg_confidence = (cell.avg_confidence * cell.events + event.confidence) / (cell.events + 1);
    cell.events += 1;
    cell[direction] += 1;
    if (!cell.symbols.includes(event.symbol)) {
      cell.symbols.push(event.symbol);
      cell.symbols.sort();
      cell.symbol_count += 1;
    }
    this.invalidate();
  }

  render() {
    const cells = [...this.cells.values()];
    const total = (pick) => {
      const sums = new Map();
      for (const c of cells) sums.set(pick(c), (sums.get(pick(c)) ?? 0) + c.events);
      return [...sums].sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0])));
    };
    const patterns = total((c) => c.pattern).slice(0, MAX_PATTERNS).map(([p]) => p);
    const sectors = total((c) => c.sector ?? UNCLASSIFIED).slice(0, MAX_SECTORS).map(([s]) => s);
    const peak = Math.max(1, ...cells.map((c) => c.events));
    const table = html("table", { cls: "heat" });
    html("caption", { cls: "visually-hidden", text: "Events per sector (rows) and pattern (columns) over the last "
      + "hour; each cell is a button that filters the live feed and the stored events to it" }, table);
    const head = html("tr", {}, html("thead", {}, table));
    html("th", { text: "Sector", attrs: { scope: "col" } }, head);
    for (const p of patterns) html("th", { text: p.replaceAll("_", " "), attrs: { scope: "col" } }, head);
    const body = html("tbody", {}, table);
    for (const sectorName of sectors) {
      const sector = sectorName === UNCLASSIFIED ? null : sectorName;
      const tr = html("tr", {}, body);
      html("th", { text: sectorName, attrs: { scope: "row" } }, tr);
      for (const pattern of patterns) {
        const td = html("td", {}, tr);
        const cell = this.cells.get(HeatMap.key(sector, pattern));
        if (!cell) {
          td.className = "none";
          continue;
        }
        const net = (cell.bullish - cell.bearish) / cell.events;
        const lean = net > 0.2 ? "bullish" : net < -0.2 ? "bearish" : "neutral";
        const button = html("button", {
          cls: `heat-cell lean-${lean}`,
          attrs: {
            type: "button",
            "data-sector": sectorName,
            "data-pattern": pattern,
            "data-events": cell.events,
            "aria-pressed": String(this.active === HeatMap.key(sector, pattern)),
            "aria-label": `${sectorName}, ${pattern}: ${cell.events} events, ${cell.bullish} bullish, `
              + `${cell.bearish} bearish, ${cell.neutral} neutral, average confidence `
              + `${cell.avg_confidence.toFixed(2)}. Filter the feed to it.`,
          },
        }, td);
        html("span", { cls: "arrow", text: ARROWS[lean], attrs: { "aria-hidden": "true" } }, button);
        button.append(String(cell.events));
        // Stronger colour for more events; the hue is the lean (and the arrow says it too).
        button.style.setProperty("--strength", (0.15 + 0.85 * Math.sqrt(cell.events / peak)).toFixed(3));
        button.addEventListener("click", () => {
          this.active = HeatMap.key(sector, pattern);
          this.onPick(cell, sectorName);
          this.invalidate();
        });
      }
    }
    if (!sectors.length) {
      this.root.replaceChildren(html("p", { cls: "hint", text: "No events in the last hour yet." }));
    } else {
      // Keep the keyboard focus on the same cell across a redraw.
      const focused = document.activeElement?.closest?.(".heat-cell");
      const where = focused && [focused.dataset.sector, focused.dataset.pattern];
      this.root.replaceChildren(table);
      if (where) {
        for (const b of table.querySelectorAll(".heat-cell")) {
          if (b.dataset.sector === where[0] && b.dataset.pattern === where[1]) b.focus();
        }
      }
    }
    this.root.dataset.cells = String(cells.length);
    this.root.dataset.events = String(cells.reduce((a, c) => a + c.events, 0));
  }
}

// ---------------------------------------------------------------- one symbol over time

const PANEL_ROWS = 8; // patterns drawn, the most frequent first
const PANEL_EVENTS = 200;

export class SymbolPanel extends Throttled {
  symbol = null;
  events = [];

  constructor(root, { chart, list, title }) {
    super();
    Object.assign(this, { root, chart, list, title });
  }

  show(symbol, events) {
    this.symbol = symbol;
    this.events = events.slice(0, PANEL_EVENTS);
    this.root.hidden = false;
    this.root.dataset.symbol = symbol;
    this.title.textContent = `${symbol}: recent patterns`;
    this.flushNow();
  }

  hide() {
    this.symbol = null;
    this.root.hidden = true;
    delete this.root.dataset.symbol;
  }

  flushNow() {
    this.dirty = true;
    this.flush();
  }

  /** A live event for the symbol shown: drawn with the next redraw. */
  add(event, direction) {
    if (event.symbol !== this.symbol) return;
    this.events.unshift({ ...event, direction });
    this.events.length = Math.min(this.events.length, PANEL_EVENTS);
    this.invalidate();
  }

  render() {
    const events = this.events;
    const W = 1100, left = 120, right = 12, rowH = 22, top = 8, bottom = 20;
    const byPattern = new Map();
    for (const e of events) byPattern.set(e.pattern, (byPattern.get(e.pattern) ?? 0) + 1);
    const rows = [...byPattern].sort((a, b) => b[1] - a[1]).slice(0, PANEL_ROWS).map(([p]) => p);
    const H = top + Math.max(1, rows.length) * rowH + bottom;
    const times = events.map((e) => Date.parse(e.detected_at));
    const end = Math.max(Date.now(), ...times);
    const start = Math.min(end - MINUTE_MS, ...times);
    const x = (t) => left + ((t - start) / (end - start)) * (W - left - right);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "img",
                              "aria-labelledby": "symbol-desc" });
    for (const [i, p] of rows.entries()) {
      const y = top + i * rowH + rowH / 2;
      svg("line", { x1: left, y1: y, x2: W - right, y2: y, class: "grid" }, root);
      svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, root).textContent = p.replaceAll("_", " ");
    }
    for (const e of events) {
      const row = rows.indexOf(e.pattern);
      if (row < 0) continue;
      const dot = svg("circle", {
        cx: x(Date.parse(e.detected_at)), cy: top + row * rowH + rowH / 2, r: 3 + 6 * e.confidence,
        class: `dot dot-${e.direction}`,
      }, root);
      svg("title", {}, dot).textContent = `${e.pattern} ${e.direction} ${e.confidence.toFixed(2)} at ${e.detected_at}`;
    }
    const axisY = H - 6;
    const span = (end - start) / MINUTE_MS;
    const ago = span >= 120 ? `${Math.round(span / 60)} h ago` : `${Math.round(span)} min ago`;
    svg("text", { x: left, y: axisY, "text-anchor": "start" }, root).textContent = ago;
    svg("text", { x: W - right, y: axisY, "text-anchor": "end" }, root).textContent = "now";
    this.chart.replaceChildren(root);

    const split = { bullish: 0, bearish: 0, neutral: 0 };
    for (const e of events) split[e.direction] += 1;
    const desc = html("p", { cls: "hint", attrs: { id: "symbol-desc" } });
    desc.textContent = events.length
      ? `${events.length} recent events: ${split.bullish} bullish, ${split.bearish} bearish, ${split.neutral} neutral.`
      : "No stored events for this symbol.";
    this.chart.append(desc);
    const items = events.slice(0, 8).map((e) => {
      const li = html("li");
      li.append(directionBadge(e.direction), ` ${e.pattern} · ${e.timeframe} · `, confidenceBar(e.confidence),
                ` · ${e.detected_at.replace("T", " ").replace(/(\.\d+)?Z$/, "")}`);
      return li;
    });
    this.list.replaceChildren(...items);
    this.root.dataset.events = String(events.length);
  }
}
