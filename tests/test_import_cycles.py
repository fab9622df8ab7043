"""No import cycle in ``qinspect/``: module-level imports never form one, and the few
function-level (lazy) cycles left are listed here and may only shrink.

An import edge is every ``import``/``from ... import`` of a ``qinspect`` module written in
a module, except under ``if TYPE_CHECKING:`` (never executed). Parent packages run on
import but are not edges of their own (else every module would cycle through
``qinspect/__init__.py``, which imports the API lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qinspect"

KNOWN_LAZY_CYCLES: list[set[str]] = [
    # load() dispatches lazily to format modules that import helpers from the package
    {"qinspect.loaders", "qinspect.loaders.torchao", "qinspect.loaders.torchscript",
     "qinspect.loaders.fx_pickle"},
]
"""Debts to pay (issue 16), not exemptions to extend: the test fails when one of these
grows, when a new one appears, and when one disappears (then delete it here)."""


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path], lazy: bool) -> set[str]:
    """The qinspect modules ``name`` imports (at module level, or anywhere if ``lazy``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not lazy:
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package[:len(package) - child.level + 1]
                    base = ".".join(parent + ([child.module] if child.module else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    if full in known:
                        found.add(full)
                    elif base in known:
                        found.add(base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


def _graph(lazy: bool, root: Path = PACKAGE) -> dict[str, set[str]]:
    known = _modules(root)
    return {name: _imports(name, path, known, lazy) for name, path in known.items()}


def test_no_module_level_import_cycle():
    assert _cycles(_graph(lazy=False)) == []


def test_lazy_import_cycles_only_shrink():
    found = _cycles(_graph(lazy=True))
    new = [sorted(c) for c in found if c not in KNOWN_LAZY_CYCLES]
    gone = [sorted(c) for c in KNOWN_LAZY_CYCLES if c not in found]
    assert not new, f"new (or grown) import cycle(s): {new}"
    assert not gone, f"paid off, delete from KNOWN_LAZY_CYCLES: {gone}"


def test_gate_package_is_free_of_cycles_even_lazily():
    """config and rules used to import each other (issue 16)."""
    for cycle in _cycles(_graph(lazy=True)):
        assert not any(m.startswith("qinspect.gate") for m in cycle), cycle


def test_the_detector_finds_a_cycle(tmp_path):
    """A detector that cannot fail proves nothing: two modules importing each other,
    one lazily, and a three-module ring at module level."""
    pkg = tmp_path / "qinspect"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from qinspect.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from qinspect import a\n")
    (pkg / "x.py").write_text("from . import y\n")
    (pkg / "y.py").write_text("import qinspect.z\n")
    (pkg / "z.py").write_text("from typing import TYPE_CHECKING\nfrom .x import name\n"
                              "if TYPE_CHECKING:\n    from qinspect import a\n")
    assert _cycles(_graph(lazy=False, root=pkg)) == [{"qinspect.x", "qinspect.y", "qinspect.z"}]
    lazy = _cycles(_graph(lazy=True, root=pkg))
    assert sorted(map(sorted, lazy)) == [["qinspect.a", "qinspect.sub.b"],
                                         ["qinspect.x", "qinspect.y", "qinspect.z"]]
