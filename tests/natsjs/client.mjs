// A Node.js client of the hub's NATS service for tests/api/test_nats_service_node.py, on the `nats` package.
//   node client.mjs <nats url>
// Reads one request a line on stdin: {"subject": ..., "token": <jwt or null>, "body": <JSON value>} (or
// "raw": <text sent as it is>), sends it with `Authorization: Bearer <token>` and prints the reply as one
// line: {"headers": {name: value}, "body": <parsed JSON>} (or {"error": message}). Exits at end of input.
import { connect, headers } from "nats";
import readline from "node:readline";

const [url] = process.argv.slice(2);
const nc = await connect({ servers: url, name: "tickstock-node-check" });
const encoder = new TextEncoder();
const decoder = new TextDecoder();

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const ask = JSON.parse(line);
  const h = headers();
  if (ask.token) h.set("Authorization", `Bearer ${ask.token}`);
  const data = "raw" in ask ? ask.raw : ask.body === undefined ? "" : JSON.stringify(ask.body);
  let out;
  try {
    const reply = await nc.request(ask.subject, encoder.encode(data), { timeout: 10000, headers: h });
    const got = {};
    for (const name of reply.headers ? reply.headers.keys() : []) got[name] = reply.headers.get(name);
    out = { headers: got, body: JSON.parse(decoder.decode(reply.data)) };
  } catch (err) {
    out = { error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
await nc.drain();
