"""The import graph of ``synthex`` runs one way (issue 12, item 5).

Every module under ``src/synthex`` is parsed with :mod:`ast` (nothing is imported), and each
``import synthex...`` / ``from synthex... import ...`` (absolute or relative) is recorded with where
it sits: at import time (module or class body, ``try``/``if`` blocks included), inside a function
(lazy), or under ``if TYPE_CHECKING:`` (annotations only). Then:

(a) no cycle between modules counting the import-time imports only;
(b) library code (everything except ``synthex.cli`` and ``synthex.ui``) never imports the CLI or the UI;
(c) the layers: data -> train -> generate -> evaluate, with models below generate.

(b) and (c) count imports at any level. A known violation that is not fixed yet goes into an
allow-list below with its reason, so the test still fails on any new one (and on a listed one
that has gone: then delete it from the list).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import synthex

ROOT = Path(synthex.__file__).resolve().parent
TOP = "synthex"
FRONT_ENDS = ("synthex.cli", "synthex.ui")

LOW_LEVEL = ("synthex.errors", "synthex.io", "synthex.paths")
LAYERS: dict[str, tuple[str, ...]] = {
    "synthex.data": ("synthex.train", "synthex.generate", "synthex.evaluate", "synthex.search"),
    "synthex.train": ("synthex.generate", "synthex.evaluate"),
    "synthex.models": ("synthex.generate", "synthex.evaluate", "synthex.train"),
    "synthex.generate": ("synthex.evaluate", "synthex.train"),
}

# Known violations not fixed yet, each with its reason; empty now (the graph was clean when this
# test was written). Keys: (layer, forbidden package) and (importer module, front end).
LAYER_ALLOW: dict[tuple[str, str], str] = {}
FRONT_END_ALLOW: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    target: str
    where: str  # "import-time", "function" or "type-checking"
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.target} ({self.where}, {_path(self.importer)}:{self.line})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _path(module: str) -> str:
    return _modules()[module].relative_to(ROOT.parent.parent).as_posix()


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def _known(name: str) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of ours."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in _modules():
            return candidate
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of ``module`` with where it runs."""
    tree = ast.parse(_modules()[module].read_text(encoding="utf-8"), filename=str(_modules()[module]))
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, where))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "function" if where == "import-time" else where)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "type-checking" if where == "import-time" else where)
                for stmt in child.orelse:
                    visit_stmt(stmt, where)
            else:
                visit(child, where)

    def visit_stmt(stmt: ast.stmt, where: str) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append((stmt, where))
        else:
            visit(stmt, where)

    visit(tree, "import-time")
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules of ours that one import statement names."""
    if isinstance(node, ast.Import):
        return [t for alias in node.names if (t := _known(alias.name)) and alias.name.split(".")[0] == TOP]
    if node.level:  # relative: from the importer's package
        package = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != TOP:
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in _modules() else _known(base)
        if target:
            out.append(target)
    return out


@lru_cache(maxsize=1)
def edges() -> tuple[Edge, ...]:
    out = []
    for module in _modules():
        for node, where in _imports(module):
            for target in _targets(module, node):
                if target != module:
                    out.append(Edge(module, target, where, node.lineno))
    return tuple(dict.fromkeys(out))  # one edge per statement, however many names it imports


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_time_graph() -> dict[str, set[str]]:
    """Module -> the modules it makes Python run when it is imported.

    Importing ``synthex.a.b`` also runs ``synthex/a/__init__.py`` first, so that is an edge too,
    except from inside ``synthex.a`` itself (that package is already being imported then)."""
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for e in edges():
        if e.where != "import-time":
            continue
        parts = e.target.split(".")
        for i in range(1, len(parts) + 1):
            step = ".".join(parts[:i])
            if step != e.importer and not _inside(e.importer, step):
                graph[e.importer].add(step)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) for every strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            strong(v)

    cycles = []
    for group in groups:
        start = min(group)
        # shortest way back to start inside the group (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = previous[start]
        while v != start:
            path.append(v)
            v = previous[v]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def _why(a: str, b: str) -> str:
    lines = [str(e) for e in edges() if e.importer == a and e.where == "import-time"
             and (_inside(e.target, b) or e.target == b)]
    return "; ".join(lines) or f"{a} -> {b}"


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------
def test_the_parser_sees_the_known_imports():
    """A check on the checker: it finds imports at each level, absolute and relative."""
    found = {(e.importer, e.target, e.where) for e in edges()}
    assert len(_modules()) > 50
    assert ("synthex.evaluate", "synthex.evaluate.run", "import-time") in found
    assert ("synthex.evaluate.run", "synthex.generate.batch", "function") in found
    assert ("synthex.evaluate.types", "synthex.evaluate.data", "type-checking") in found
    assert ("synthex.evaluate.report", "synthex.evaluate.types", "import-time") in found
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_time_cycle():
    cycles = find_cycles(import_time_graph())
    described = ["\n  " + " -> ".join(c) + "\n    " + "\n    ".join(_why(a, b) for a, b in pairwise(c))
                 for c in cycles]
    assert not cycles, "modules that import each other when imported:" + "".join(described)


def test_evaluate_run_and_report_do_not_import_each_other():
    between = [str(e) for e in edges() if e.importer == "synthex.evaluate.report" and e.target == "synthex.evaluate.run"]
    assert not between, "report must take its types from synthex.evaluate.types, not from run: " + "; ".join(between)
    # the types sit below the rest of synthex.evaluate (low-level modules and generate's defaults are fine)
    types = {e.target for e in edges() if e.importer == "synthex.evaluate.types" and e.where != "type-checking"
             and _inside(e.target, "synthex.evaluate")}
    assert not types, f"synthex.evaluate.types must stay at the bottom of the package; it imports {types}"


def test_library_never_imports_the_cli_or_the_ui():
    found = {}
    for e in edges():
        if any(_inside(e.importer, f) for f in FRONT_ENDS):
            continue
        for front in FRONT_ENDS:
            if _inside(e.target, front):
                found.setdefault((e.importer, front), []).append(str(e))
    new = {k: v for k, v in found.items() if k not in FRONT_END_ALLOW}
    assert not new, "library code imports a front end:\n" + "\n".join(x for v in new.values() for x in v)
    gone = set(FRONT_END_ALLOW) - set(found)
    assert not gone, f"allowed violations that no longer happen (remove them from FRONT_END_ALLOW): {gone}"


def test_layers_run_one_way():
    found: dict[tuple[str, str], list[str]] = {}
    for e in edges():
        for layer, forbidden in LAYERS.items():
            if not _inside(e.importer, layer):
                continue
            for other in forbidden:
                if _inside(e.target, other):
                    found.setdefault((layer, other), []).append(str(e))
    new = {k: v for k, v in found.items() if k not in LAYER_ALLOW}
    assert not new, "imports against the layering (data -> train -> generate -> evaluate, models below " \
        "generate):\n" + "\n".join(x for v in new.values() for x in v)
    gone = set(LAYER_ALLOW) - set(found)
    assert not gone, f"allowed violations that no longer happen (remove them from LAYER_ALLOW): {gone}"


def test_low_level_modules_import_only_each_other():
    """errors, io (atomic writes, the hash helpers) and paths sit below every package."""
    bad = [str(e) for e in edges() if e.importer in LOW_LEVEL and e.target not in LOW_LEVEL + (TOP,)]
    assert not bad, "a low-level module imports the rest of the package:\n" + "\n".join(bad)
