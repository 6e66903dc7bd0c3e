"""No import cycles among the modules of retrikt/ and among those of benchmarks/, read statically with ast.

Every import statement counts, at module top level and inside functions alike: a lazy import hides a cycle from
Python's import machinery but not from the design (the two modules still cannot be understood, tested or moved
apart). An import of ``a.b.c`` is an edge to the most specific module of the package it names; the parent packages
it executes on the way are not counted, as import-linter and pydeps do not count them either.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py")) if "__pycache__" not in p.parts}


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package (None: outside it)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that one import statement loads."""
    if isinstance(node, ast.Import):
        return {t for a in node.names if (t := _target(a.name, modules))}
    if node.level:   # relative: resolve against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # ``from pkg import name`` loads the submodule pkg.name when there is one, else takes name from pkg itself
    return {t for a in node.names
            if (t := f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else _target(prefix, modules))}


def import_graph(package: str) -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: ["file:line: statement", ...]}} within ``package``."""
    modules = _modules(package)
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in modules}
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                statement = " ".join(ast.get_source_segment(source, node).split())
                where = f"{path.relative_to(ROOT)}:{node.lineno}: {statement}"
                for t in _imported(node, module, path.name == "__init__.py", modules) - {module}:
                    graph[module].setdefault(t, []).append(where)
    return graph


def _shortest_cycle(graph: dict[str, dict[str, list[str]]], start: str) -> list[str] | None:
    """Shortest cycle start -> ... -> start (BFS), as a list of modules, or None."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start] + path[::-1][1:] + [start] if node != start else [start, start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The shortest cycle through each module that is on one, each cycle once (rotations merged)."""
    seen, cycles = set(), []
    for module in sorted(graph):
        cycle = _shortest_cycle(graph, module)
        if cycle is None:
            continue
        ring = cycle[:-1]
        i = ring.index(min(ring))
        key = tuple(ring[i:] + ring[:i])
        if key not in seen:
            seen.add(key)
            cycles.append(list(key) + [key[0]])
    return cycles


def describe(graph: dict[str, dict[str, list[str]]], cycles: list[list[str]]) -> str:
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines += [f"    {w}" for w in graph[a][b]]
    return "\n".join(lines)


@pytest.mark.parametrize("package", ["retrikt", "benchmarks"])
def test_no_import_cycles(package):
    graph = import_graph(package)
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles among {package}/ modules:\n{describe(graph, cycles)}"


def test_the_cycle_finder_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    graph = import_graph("pkg")
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert "pkg/a.py:2: from pkg.sub import b" in describe(graph, find_cycles(graph))
