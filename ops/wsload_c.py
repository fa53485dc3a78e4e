"""The C engine of :mod:`ops.wsload`: builds ``ops/wsload.c`` and drives one process of it.

``Load(..., engine="c")`` starts :class:`CWorker` processes in place of the Python workers. Each takes
its connections on stdin, answers ``status`` and ``stop`` exactly as a Python worker answers them over
its pipe (the same dictionary), so everything after it (the driver, the reports) is the same. It reads
a delivered message for a fraction of the Python engine's CPU; see ``ops/wsload.c`` for what it does
not read (a negotiated extension among them: the deflate rows of a server that compresses need the
Python engine).

The binary is built once per version of the source, with the machine's ``cc`` (``$CC``), into
``ops/.build/`` (ignored by git; not a shared temporary directory, where another user could leave a
program under the name it would run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = ["CWorker", "binary"]

SOURCE = Path(__file__).with_name("wsload.c")
BUILD = Path(__file__).with_name(".build")
BLOBS = ("latency_kept", "index_kept", "latency_other")


def binary() -> Path:
    """The engine's executable, built from ``ops/wsload.c`` if this version of it is not yet."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = BUILD / f"wsload-{digest}"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the C engine needs a C compiler (cc or $CC); use engine='python'")
    BUILD.mkdir(exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}")
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    partial.replace(target)  # atomic: a concurrent build of the same source lands the same bytes
    return target


def setup_lines(
    mode: str, conns: Sequence[Any], first: int, count: int, concurrency: int, expected: dict[str, int]
) -> bytes:
    """What the engine reads on stdin before it starts: see ``ops/wsload.c``. ``conns`` are
    :class:`ops.wsload.Conn`; ``expected``: what a connection of each kind should receive."""
    kinds = list(expected)
    lines = [
        " ".join([mode, str(first), str(count), str(concurrency), str(len(conns)), str(len(kinds)), *kinds])
    ]
    for conn in conns:
        parts = urlsplit(conn.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if " " in path or "\n" in path:
            raise ValueError(f"a connection URL with a space or a newline: {conn.url!r}")
        lines.append(
            " ".join(
                [
                    str(kinds.index(conn.kind)),
                    str(expected[conn.kind]),
                    "1" if conn.deflate else "0",
                    parts.hostname or "127.0.0.1",
                    str(parts.port or 80),
                    path,
                    str(len(conn.hello)),
                    *(frame.hex() for frame in conn.hello),
                ]
            )
        )
    return ("\n".join(lines) + "\n").encode()


class CWorker:
    """One engine process holding ``conns``; quacks like both the worker process (``join``,
    ``is_alive``, ``kill``) and its pipe (``send``, ``recv``) of a Python worker."""

    def __init__(
        self,
        mode: str,
        conns: Sequence[Any],
        *,
        first: int,
        count: int,
        concurrency: int,
        expected: dict[str, int],
    ) -> None:
        self.proc = subprocess.Popen(
            [str(binary())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self._stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self._stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        self._stdin.write(setup_lines(mode, conns, first, count, concurrency, expected))

    def send(self, command: str) -> None:
        self._stdin.write(command.encode() + b"\n")

    def recv(self) -> dict[str, Any]:
        line = self._stdout.readline()
        if not line:
            raise EOFError(f"the C engine exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        for name, size in zip(BLOBS, answer.pop("blobs", ()), strict=False):
            answer[name] = self._read_exactly(size)
        return answer

    def _read_exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self._stdout.read(left)
            if not chunk:
                raise EOFError("the C engine's answer was cut short")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        for stream in (self._stdin, self._stdout):
            stream.close()
