// Baseline for ops/bench: Socket.IO v4 on Node.js, every client in the default namespace, every
// message broadcast to all (io.emit encodes each packet once). An in-process publisher sends
// `count` messages at `rate`/s when asked:
//
//   node server.js --port 9000
//   POST /publish?count=600&rate=20&start=0   -> 202; publishing runs in the background
//   GET  /health                              -> {"clients": N, "publishing": bool, "sent": N}
//   GET  /gc                                  -> a full garbage collection (run with --expose-gc)
//
// Each message carries bench_i (its index) and bench_t0 (epoch seconds when it was emitted) so the
// load client can count losses and latency; the rest of the payload is the size of a hub event.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const args = process.argv.slice(2);
const port = Number(args[args.indexOf("--port") + 1] || 9000);

const EVENT = {
  id: "baseline", type: "pattern_detected", symbol: "AAPL", pattern: "hammer", timeframe: "daily",
  confidence: 0.82, detected_at: "2026-11-28T15:30:00Z", expires_at: null, price: 187.5, volume: 1200300,
  levels: { support: 181.2, resistance: 192.4 }, indicators: { rsi: 41.5 }, source: "baseline",
  schema_version: 1,
};

let publishing = false;
let sent = 0;

function publish(count, rate, start) {
  publishing = true;
  const t0 = Date.now();
  let i = 0;
  const tick = () => {
    // Catch up on every message that is due (timers drift under load), then sleep to the next one.
    const now = Date.now();
    while (i < count && t0 + (i * 1000) / rate <= now) {
      io.emit("event", { bench_i: start + i, bench_t0: Date.now() / 1000, event: EVENT });
      i += 1;
      sent += 1;
    }
    if (i >= count) {
      publishing = false;
      return;
    }
    setTimeout(tick, Math.max(0, t0 + (i * 1000) / rate - Date.now()));
  };
  tick();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (req.method === "POST" && url.pathname === "/publish") {
    const count = Number(url.searchParams.get("count") || 0);
    const rate = Number(url.searchParams.get("rate") || 20);
    const start = Number(url.searchParams.get("start") || 0);
    if (publishing || !(count >= 0) || !(rate > 0)) {
      res.writeHead(409).end();
      return;
    }
    publish(count, rate, start);
    res.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ count, rate, start }));
    return;
  }
  if (url.pathname === "/gc") {
    // The memory measurement samples RSS right after a full collection (node --expose-gc).
    if (global.gc) global.gc();
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ gc: Boolean(global.gc) }));
    return;
  }
  if (url.pathname === "/health") {
    res.writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ clients: io.engine.clientsCount, publishing, sent }));
    return;
  }
  // Socket.IO attaches its own request listener for /socket.io/; leave those to it.
  if (!url.pathname.startsWith("/socket.io/")) {
    res.writeHead(404).end();
  }
});

const io = new Server(server, { transports: ["websocket"], serveClient: false });
server.listen(port, "127.0.0.1", 4096, () => {
  console.log(`socket.io baseline listening on 127.0.0.1:${port}`);
});

const stop = () => {
  io.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
