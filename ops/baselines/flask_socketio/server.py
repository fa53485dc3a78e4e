"""Baseline for ops/bench: Flask-SocketIO in its default threading mode with a Redis message queue.

    python server.py --port 9002 --redis redis://127.0.0.1:6379/0

The original design of the hub: every worker joins the Redis queue and re-emits what publishers send
through it (``publisher.py``) to its connected clients. Threading mode is the default when neither
eventlet nor gevent is installed: Werkzeug's threaded server, one thread per websocket
(simple-websocket). Runs in its own virtualenv (``requirements.txt``), never the project's.
"""

from __future__ import annotations

import argparse

from flask import Flask, jsonify
from flask_socketio import SocketIO

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=9002)
parser.add_argument("--redis", required=True)
args = parser.parse_args()

app = Flask(__name__)
socketio = SocketIO(
    app,
    message_queue=args.redis,
    async_mode="threading",
    cors_allowed_origins="*",
    logger=False,
    engineio_logger=False,
)
clients = {"n": 0}


@socketio.on("connect")
def on_connect() -> None:
    clients["n"] += 1


@socketio.on("disconnect")
def on_disconnect(*_: object) -> None:
    clients["n"] -= 1


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify({"clients": clients["n"]})


if __name__ == "__main__":
    socketio.run(app, host=args.host, port=args.port, allow_unsafe_werkzeug=True, log_output=False)
