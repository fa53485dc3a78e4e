// A small browser client for the hub's websocket protocol (docs/websocket.md): authenticate with an
// `auth` frame, keep a set of subscriptions, reconnect with jittered exponential back-off and resume
// every subscription with `since` = the last seq it saw, so a restart or a network blip loses nothing.
// No dependency; usable on its own:
//
//   const hub = new HubSocket({ url: "ws://127.0.0.1:8000/ws", token,
//                               onEvent: (event, seq, subs) => ..., onState: (s) => ... });
//   hub.subscribe("s1", { symbols: ["AAPL"], confidence_min: 0.7 });
//   hub.start();

// The Python client's defaults (hub/client.py): 0.1 s doubling up to 5 s, full jitter.
export const BACKOFF_FIRST_MS = 100;
export const BACKOFF_MAX_MS = 5000;
const PING_EVERY_MS = 15000;
// Nothing at all from the server for this long (its own pings come every 20 s at most, ours are
// answered at once) means the link is dead even if the socket has not noticed yet.
const SILENCE_LIMIT_MS = 45000;
// Reconnecting with the same token cannot help after these.
const FATAL_CLOSE = new Map([[4401, "the token is invalid or expired"], [4403, "the token lacks patterns:read"]]);

/** Full jitter on an exponential back-off: a random delay in [0, d), d doubling up to the cap, so
 * the dashboards a restart disconnected do not all come back at the same instant. */
export function backoffMs(attempt) {
  return Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 16));
}

export class HubSocket {
  #ws = null;
  #subs = new Map(); // id -> { filter, lastSeq, head, since }
  #attempt = 0;
  #retryTimer = 0;
  #pingTimer = 0;
  #lastFrameAt = 0;
  #welcomed = false; // at least one welcome on this HubSocket: later ones are reconnects
  #ready = false; // the current socket is authenticated (before that the hub refuses subscribe)
  #stopped = true;

  constructor({ url, token, onEvent = () => {}, onState = () => {}, onSubscribed = () => {}, onError = () => {} }) {
    Object.assign(this, { url, token, onEvent, onState, onSubscribed, onError });
  }

  start() {
    this.#stopped = false;
    this.#connect();
  }

  stop() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#teardown(1000, "client closed");
    this.onState({ state: "stopped" });
  }

  /** Add or replace subscription `id`; live from now on (re-using an id replaces it on the hub too). */
  subscribe(id, filter) {
    this.#subs.set(id, { filter, lastSeq: null, head: null, since: null });
    if (this.#ready) this.#send({ op: "subscribe", id, filter }); // else: sent after the welcome
  }

  unsubscribe(id) {
    if (this.#subs.delete(id) && this.#ready) this.#send({ op: "unsubscribe", id });
  }

  /** The seq a resume of `id` would start after (null before the hub acknowledged it). */
  resumePoint(id) {
    const sub = this.#subs.get(id);
    return sub ? sub.lastSeq ?? sub.head : null;
  }

  #connect() {
    this.onState({ state: this.#welcomed ? "reconnecting" : "connecting", attempt: this.#attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) { // a malformed URL: nothing to retry
      this.onState({ state: "failed", reason: String(err) });
      return;
    }
    this.#ws = ws;
    // The token goes in the first frame, not in the URL, so it never lands in an access log.
    ws.onopen = () => ws.send(JSON.stringify({ op: "auth", token: this.token }));
    ws.onmessage = (m) => {
      if (ws !== this.#ws) return;
      this.#lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(m.data); } catch { return; }
      this.#frame(frame);
    };
    ws.onclose = (e) => {
      if (ws === this.#ws) this.#lost(e.code, e.reason); // else: a socket we already gave up on
    };
  }

  #lost(code, reason) {
    this.#teardown(4000, reason);
    if (this.#stopped) return;
    const fatal = FATAL_CLOSE.get(code);
    if (fatal) {
      this.#stopped = true;
      this.onState({ state: "unauthorized", code, reason: reason || fatal });
      return;
    }
    const delay = backoffMs(this.#attempt++);
    this.onState({ state: "reconnecting", code, reason, retryInMs: delay, attempt: this.#attempt });
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #frame(f) {
    switch (f.op) {
      case "welcome": {
        const resuming = this.#welcomed;
        this.#welcomed = true;
        this.#ready = true;
        this.#attempt = 0;
        this.#lastFrameAt = Date.now();
        this.#pingTimer = setInterval(() => this.#keepAlive(), PING_EVERY_MS);
        this.onState({ state: "connected", node: f.node, head: f.head, subject: f.subject,
                       expiresAt: f.expires_at, resuming });
        for (const [id, sub] of this.#subs) {
          sub.since = resuming ? this.resumePoint(id) : null;
          const frame = { op: "subscribe", id, filter: sub.filter };
          if (sub.since != null) frame.since = sub.since;
          this.#send(frame);
        }
        break;
      }
      case "subscribed": {
        const sub = this.#subs.get(f.id);
        if (!sub) break;
        sub.head = f.head;
        const resumed = sub.since != null;
        this.onSubscribed({ id: f.id, head: f.head, replayed: f.replayed ?? 0, recovered: f.recovered !== false,
                            resumed, since: sub.since });
        if (resumed) this.onState({ state: "resumed", id: f.id, replayed: f.replayed ?? 0, recovered: f.recovered !== false });
        break;
      }
      case "event": {
        // Per subscription, seqs only grow: anything at or below the last one seen is a repeat
        // (e.g. a replay overlapping what arrived just before a disconnect) and is dropped.
        const fresh = [];
        for (const id of f.subs || []) {
          const sub = this.#subs.get(id);
          if (!sub || (sub.lastSeq != null && f.seq <= sub.lastSeq)) continue;
          sub.lastSeq = f.seq;
          fresh.push(id);
        }
        if (fresh.length) this.onEvent(f.event, f.seq, fresh);
        break;
      }
      case "ping":
        this.#send({ op: "pong" });
        break;
      case "error":
        this.onError(f);
        break;
      default: // pong, unsubscribed, refreshed: nothing to do
    }
  }

  #keepAlive() {
    if (Date.now() - this.#lastFrameAt > SILENCE_LIMIT_MS) {
      // Do not wait for a close handshake on a dead link: drop the socket and reconnect now.
      this.#lost(4000, "no frame from the hub");
      return;
    }
    this.#send({ op: "ping", ts: Date.now() });
  }

  #send(frame) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(frame));
  }

  #teardown(code, reason) {
    clearInterval(this.#pingTimer);
    this.#ready = false;
    const ws = this.#ws;
    this.#ws = null;
    if (ws && code && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
  }
}
