// A socket.io-client session for tests/api/test_socketio_node.py; one JSON line per received event.
//   node client.mjs <hub url> <token or ""> <first event name> <its JSON payload>
// Prints {"event": name, "data": ...} for every event (connect_error and disconnect too), in order;
// reads "quit" on stdin to disconnect and exit.
import { io } from "socket.io-client";
import readline from "node:readline";

const [url, token, first, payload] = process.argv.slice(2);
const out = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");
const socket = io(url, {
  auth: token ? { token } : {},
  transports: ["websocket"],
  reconnection: false,
});
socket.onAny((event, data) => {
  out(event, data);
  if (event === "connection_confirmed" && first) socket.emit(first, JSON.parse(payload));
});
socket.on("connect_error", (err) => {
  out("connect_error", { message: err.message, data: err.data ?? null });
  process.exit(0);
});
socket.on("disconnect", (reason) => {
  out("disconnect", reason);
  process.exit(0);
});
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "quit") socket.disconnect();
});
