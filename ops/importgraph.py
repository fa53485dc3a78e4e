"""The import graph of the hub's packages: cycles, layering violations and oversized modules.

    python -m ops.importgraph                      # hub/, api/, store/ of this checkout
    python -m ops.importgraph --root /some/tree    # the same packages under another tree
    python -m ops.importgraph --skip-type-checking # leave out imports under ``if TYPE_CHECKING:``

The modules are read with :mod:`ast`, never imported. Every ``import`` and ``from ... import`` is an edge,
wherever it stands: at module level, inside a function (a function-local import still makes the two
modules depend on each other; it only hides it), and under ``if TYPE_CHECKING:`` (counted unless
``--skip-type-checking``). Relative imports are resolved; ``from hub import model`` is an edge to
``hub.model`` when that is a module, otherwise to ``hub``. Only edges between the checked packages count.

It prints each cycle, each import that breaks the layering (``store`` imports neither ``hub`` nor ``api``;
``hub`` does not import ``api``; ``api`` is the outermost), and each module over ``--max-lines`` lines,
then a summary line. Exit status 1 when any was found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FORBIDDEN", "MAX_LINES", "PACKAGES", "Edge", "Graph", "Report", "analyse", "main", "read_graph"]

PACKAGES = ("store", "hub", "api")
MAX_LINES = 400
FORBIDDEN: dict[str, frozenset[str]] = {  # package -> packages it must not import
    "store": frozenset({"hub", "api"}),
    "hub": frozenset({"api"}),
    "api": frozenset(),
}
KINDS = ("module", "function", "type-checking")


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line`` (``path`` relative to the root); ``kind`` is one of
    :data:`KINDS`."""

    source: str
    target: str
    path: Path
    line: int
    kind: str


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    lines: dict[str, int] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)


@dataclass
class Report:
    graph: Graph
    cycles: list[list[str]]
    violations: list[Edge]
    oversized: list[tuple[str, int]]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (self.cycles or self.violations or self.oversized)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every import statement with its kind: at module level, inside a function, under TYPE_CHECKING."""

    def __init__(self) -> None:
        self.kind = "module"
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.append((node, self.kind))

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._within("function" if self.kind == "module" else self.kind, node.body)
        for child in (*node.decorator_list, *node.args.defaults):
            self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._within("type-checking", node.body)
        for child in node.orelse:
            self.visit(child)

    def _within(self, kind: str, body: Sequence[ast.stmt]) -> None:
        saved, self.kind = self.kind, kind
        for child in body:
            self.visit(child)
        self.kind = saved


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    found = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.append(candidate if candidate in known else base)
    return found


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The checked module ``name`` refers to (``hub.model.X`` -> ``hub.model``), or None if outside."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def read_graph(root: Path, packages: Sequence[str] = PACKAGES, *, type_checking: bool = True) -> Graph:
    """Parse every ``*.py`` under ``root/<package>`` into a :class:`Graph`. Raises :class:`SyntaxError`."""
    graph = Graph()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            graph.modules[_module_name(root, path)] = path
    for module, path in graph.modules.items():
        text = path.read_text(encoding="utf-8")
        graph.lines[module] = len(text.splitlines())
        tree = ast.parse(text, filename=str(path))
        collector = _Imports()
        collector.visit(tree)
        for node, kind in collector.found:
            if kind == "type-checking" and not type_checking:
                continue
            for name in _targets(node, module, path.name == "__init__.py", graph.modules):
                target = _owner(name, graph.modules)
                if target is not None and target != module:
                    graph.edges.append(Edge(module, target, path.relative_to(root), node.lineno, kind))
    return graph


def _cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    adjacency: dict[str, set[str]] = {m: set() for m in graph.modules}
    for edge in graph.edges:
        adjacency[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(adjacency[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(adjacency) + 100))
    try:
        for node in sorted(adjacency):
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return [_path_through(component, adjacency) for component in sorted(components)]


def _path_through(component: list[str], adjacency: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the component's first module back to itself (breadth first)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for succ in sorted(adjacency[node] & members):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if succ not in previous:
                previous[succ] = node
                queue.append(succ)
    return [*component, start]  # unreachable for a strongly connected component


def analyse(
    root: Path, packages: Sequence[str] = PACKAGES, *, max_lines: int = MAX_LINES, type_checking: bool = True
) -> Report:
    """Cycles, layering violations and modules over ``max_lines`` lines in ``root``'s ``packages``."""
    graph = read_graph(root, packages, type_checking=type_checking)
    violations = [
        e for e in graph.edges if e.target.split(".")[0] in FORBIDDEN.get(e.source.split(".")[0], frozenset())
    ]
    oversized = sorted((m, n) for m, n in graph.lines.items() if n > max_lines)
    counts = {kind: sum(1 for e in graph.edges if e.kind == kind) for kind in KINDS}
    return Report(graph, _cycles(graph), violations, oversized, counts)


def _edge_where(graph_edges: list[Edge], source: str, target: str) -> str:
    edge = next(e for e in graph_edges if e.source == source and e.target == target)
    return f"{edge.path}:{edge.line} ({edge.kind})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.importgraph", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the tree holding the packages (default: this checkout)",
    )
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES))
    parser.add_argument("--max-lines", type=int, default=MAX_LINES)
    parser.add_argument(
        "--skip-type-checking", action="store_true", help="leave out imports under `if TYPE_CHECKING:`"
    )
    args = parser.parse_args(argv)
    type_checking = not args.skip_type_checking
    report = analyse(args.root, args.packages, max_lines=args.max_lines, type_checking=type_checking)
    graph = report.graph
    labels = {
        "module": "at module level",
        "function": "inside functions",
        "type-checking": "under TYPE_CHECKING",
    }
    counted = ", ".join(f"{n} {labels[kind]}" for kind, n in report.counts.items())
    print(
        f"{len(graph.modules)} modules in {', '.join(args.packages)}; {len(graph.edges)} imports counted "
        f"({counted}{'' if type_checking else '; TYPE_CHECKING imports skipped'})"
    )
    for cycle in report.cycles:
        hops = [f"{a} -> {b} [{_edge_where(graph.edges, a, b)}]" for a, b in itertools.pairwise(cycle)]
        print(f"cycle of {len(cycle) - 1} modules:\n  " + "\n  ".join(hops))
    for edge in report.violations:
        print(
            f"layering: {edge.source} imports {edge.target} at {edge.path}:{edge.line} ({edge.kind}); "
            f"{edge.source.split('.')[0]} must not import {edge.target.split('.')[0]}"
        )
    for module, lines in report.oversized:
        print(f"oversized: {module} has {lines} lines (limit {args.max_lines})")
    print(
        f"{len(report.cycles)} cycles, {len(report.violations)} layering violations, "
        f"{len(report.oversized)} modules over {args.max_lines} lines"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
