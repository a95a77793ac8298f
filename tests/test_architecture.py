"""The package's shape is its architecture: imports point one way, never in a circle.

Layers, from the top: entry points (cli, demo, sim, __main__) -> service -> ops ->
push / poll / feed -> store -> core. The shared modules at the top level (config, errors, logs,
metrics, history, timefmt, contract, jsonparse, heap, signatures, budget, api and their helpers) sit
beside the stages: any stage may use them, they use no stage,
and core uses only the pure ones. Read from the source with `ast`, so a lazy import inside
a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "syncd"

#: Rank of each part of the package: a module may import its own part or a lower rank.
RANKS = {
    "cli": 7,
    "demo": 7,
    "sim": 7,
    "__main__": 7,
    "service": 6,
    "ops": 5,
    "push": 4,
    "feed": 4,
    "poll": 4,
    "store": 3,
    "core": 2,
    # shared modules: below every stage
    "api": 1,
    "budget": 1,
    "api_transport": 1,
    "jetstream": 1,
    "signatures": 0,
    "logs": 1,
    "metrics": 1,
    "config": 0,
    "config_feed": 0,
    "config_nats": 0,
    "config_secrets": 0,
    "timefmt": 0,
    "history": 0,
    "contract": 0,
    "config_values": 0,
    "jsonparse": 0,
    "heap": 0,
    "errors": 0,
    "__init__": 0,
}
#: What core may import besides itself: nothing that does I/O or reads a clock.
CORE_ALLOWED = {"__init__", "core", "errors", "timefmt", "jsonparse", "contract"}
#: push, poll and feed are siblings; none reaches into another.
SIBLINGS = {(a, b) for a in ("push", "poll", "feed") for b in ("push", "poll", "feed") if a != b}


def _part(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "syncd", module
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "syncd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "syncd":
                continue
            found.add(mod)
            # `from syncd.store import db` imports the module syncd.store.db
            for alias in node.names:
                candidate = f"{mod}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).exists():
                    found.add(candidate)
    found.discard(me)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in graph.items():
        mine = _part(module)
        for target in sorted(imported):
            theirs = _part(target)
            if theirs == mine:
                continue
            if mine == "core" and theirs not in CORE_ALLOWED:
                bad.append(f"{module} -> {target}: core imports only {sorted(CORE_ALLOWED)}")
            elif (mine, theirs) in SIBLINGS:
                bad.append(f"{module} -> {target}: {mine} and {theirs} are siblings")
            elif RANKS[theirs] > RANKS[mine]:
                bad.append(f"{module} -> {target}: {mine} (rank {RANKS[mine]}) imports upward")
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_part_has_a_rank() -> None:
    parts = {_part(m) for m in _graph()}
    assert parts <= set(RANKS), f"give these a rank: {sorted(parts - set(RANKS))}"


def test_imports_point_down() -> None:
    assert _violations(_graph()) == []


def test_no_import_circles() -> None:
    graph = {m: {t for t in imp if not t.startswith(m + ".")} for m, imp in _graph().items()}
    assert _cycles(graph) == []


def test_no_module_past_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_every_subpackage_says_what_lives_there() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.parent.name}/__init__.py has no docstring"


@pytest.mark.parametrize(
    ("module", "imports", "problem"),
    [
        ("syncd.core.reconcile", {"syncd.store.db"}, "core imports only"),
        ("syncd.store.db", {"syncd.push.inbox"}, "imports upward"),
        ("syncd.poll.poller", {"syncd.push.inbox"}, "siblings"),
        ("syncd.config", {"syncd.service.daemon"}, "imports upward"),
    ],
)
def test_the_check_catches_a_wrong_arrow(module: str, imports: set[str], problem: str) -> None:
    (found,) = _violations({module: imports})
    assert problem in found


def test_the_check_catches_a_circle() -> None:
    assert _cycles({"syncd.a": {"syncd.b"}, "syncd.b": {"syncd.a"}, "syncd.c": set()}) == [
        ["syncd.a", "syncd.b"]
    ]


def test_relative_and_lazy_imports_are_read(tmp_path: Path) -> None:
    graph = defaultdict(set, _graph())
    assert graph  # the package was read
    # syncd.cli imports its command modules inside a function: they must be seen.
    assert any(t.startswith("syncd.cli.") for t in graph["syncd.cli"])
