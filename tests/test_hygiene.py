"""Static checks over the test suite itself: tests wait with a deadline and never measure time.

A test that polls in its own ``while`` loop can hang until the per-test timeout, or give up after a
guess; one that asserts ``elapsed < X`` fails when the machine is busy. ``tests.support.wait_for``
(and ``wait_for_sync``, ``within``) are the one way to wait. Each rule is checked against planted
examples below, so a rule that stops detecting anything fails too.

A line that a rule flags but that is right may carry ``# hygiene: ok - <why>``.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# The helpers themselves are the one place that may loop and read clocks.
EXEMPT = {TESTS / "support.py"}
WAIVER = "# hygiene: ok"
CLOCKS = {"monotonic", "perf_counter", "monotonic_ns", "perf_counter_ns"}


@dataclass(frozen=True)
class Finding:
    line: int
    rule: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.rule}"


def _calls(node: ast.AST, names: set[str]) -> bool:
    """True if ``node`` calls ``x.<name>()`` or ``<name>()`` for a name in ``names`` (the loop clock too)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if name in names:
                return True
            # loop.time() / asyncio.get_running_loop().time(): the event loop's monotonic clock.
            if (
                name == "time"
                and isinstance(func, ast.Attribute)
                and not (isinstance(func.value, ast.Name) and func.value.id in {"time", "datetime"})
            ):
                return True
    return False


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _scopes(tree: ast.AST) -> list[ast.AST]:
    return [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))),
    ]


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of ``scope`` that do not belong to a nested function."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_sleep(stmt: ast.stmt) -> bool:
    value = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(value, ast.Await):
        value = value.value
    return isinstance(value, ast.Call) and (
        (isinstance(value.func, ast.Attribute) and value.func.attr == "sleep")
        or (isinstance(value.func, ast.Name) and value.func.id == "sleep")
    )


def findings(source: str) -> list[Finding]:
    """Every rule broken in ``source`` (a test module), in line order."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: set[Finding] = set()
    for scope in _scopes(tree):
        own = _own_nodes(scope)
        # Names that hold a clock reading, or a difference of them, within this function.
        timed: set[str] = set()
        for node in sorted(
            (n for n in own if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))),
            key=lambda n: n.lineno,
        ):
            value = node.value
            if value is not None and (_calls(value, CLOCKS) or _names(value) & timed):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                timed |= {n for t in targets for n in _names(t)}
        for node in [scope, *own]:
            if isinstance(node, ast.While):
                body = ast.Module(body=node.body, type_ignores=[])
                sleeps = any(_is_sleep(s) for s in ast.walk(body) if isinstance(s, ast.stmt))
                if (
                    sleeps
                    or _calls(node, CLOCKS)
                    or _names(node) & timed
                    or (isinstance(node.test, ast.UnaryOp) and "started" in ast.unparse(node.test))
                ):
                    found.add(Finding(node.lineno, "a `while` loop polls: use tests.support.wait_for"))
            elif isinstance(node, ast.Assert) and (_calls(node.test, CLOCKS) or _names(node.test) & timed):
                found.add(Finding(node.lineno, "an assertion on elapsed time: wait with a deadline instead"))
            for block in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")):
                if not isinstance(block, list):
                    continue
                for before, after in itertools.pairwise(block):
                    if isinstance(before, ast.stmt) and _is_sleep(before) and isinstance(after, ast.Assert):
                        found.add(
                            Finding(before.lineno, "a sleep, then an assertion: wait for a barrier instead")
                        )
    return sorted((f for f in found if WAIVER not in lines[f.line - 1]), key=lambda f: (f.line, f.rule))


PLANTED = {
    "server started loop": """
        async def test_x(server):
            while not server.started:
                await asyncio.sleep(0.01)
    """,
    "deadline loop": """
        async def test_x(js):
            deadline = time.monotonic() + 5
            while (await js.info()).pending:
                assert time.monotonic() < deadline
    """,
    "sync poll": """
        def test_x(proc):
            while proc.poll() is None:
                time.sleep(0.1)
    """,
    "elapsed inline": """
        async def test_x(limiter):
            started = time.monotonic()
            await limiter.acquire()
            assert time.monotonic() - started < 0.5
    """,
    "elapsed variable": """
        def test_x():
            started = time.perf_counter()
            load()
            elapsed = time.perf_counter() - started
            assert elapsed < 2
    """,
    "loop clock": """
        async def test_x():
            t0 = asyncio.get_running_loop().time()
            await thing()
            assert asyncio.get_running_loop().time() - t0 < 1
    """,
    "nothing more arrives": """
        async def test_x(peer):
            await asyncio.sleep(0.2)
            assert peer.events() == []
    """,
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_rule_detects_a_planted_case(name: str) -> None:
    assert findings(textwrap.dedent(PLANTED[name])), f"the planted {name!r} went unnoticed"


def test_the_helpers_and_bounded_reads_pass() -> None:
    source = textwrap.dedent("""
        async def test_x(ws, pool):
            await wait_for(lambda: stored(pool), timeout=10, what="stored")
            while cursor:
                cursor = await page(cursor)
            issued = time.time()
            assert issued > 0
            await asyncio.sleep(0.05)  # pacing a producer
            await publish()
            t = loop.time()  # hygiene: ok - a planted waiver
            while loop.time() < t:  # hygiene: ok - a planted waiver
                await asyncio.sleep(0)
    """)
    assert findings(source) == []


def test_a_waiver_needs_the_marker_on_the_flagged_line() -> None:
    source = textwrap.dedent("""
        async def test_x(server):
            # hygiene: ok - on the wrong line
            while not server.started:
                await asyncio.sleep(0.01)
    """)
    assert [f.line for f in findings(source)] == [4]


def test_the_suite_waits_with_deadlines_and_never_times_itself() -> None:
    broken = {
        str(path.relative_to(TESTS.parent)): [str(f) for f in found]
        for path in sorted(TESTS.rglob("*.py"))
        if path not in EXEMPT
        if (found := findings(path.read_text()))
    }
    assert broken == {}
