"""Reads a package's imports with ``ast`` (imports inside functions included) and reports what breaks its layering:
an import of a module in a higher stage, an import cycle, or an import of another module's private name.

A stage is a subpackage directly under the package; ``stages`` lists them lowest first. Modules at the package's
top (``__init__``, ``__main__``) sit above every stage. Within one stage, imports may go either way but not round.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Graph:
    package: str
    modules: dict[str, Path] = field(default_factory=dict)
    # (importer, imported module) -> first line number
    edges: dict[tuple[str, str], int] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    # (importer, line) of ``importlib.import_module`` calls whose module is not a constant string
    dynamic: list[tuple[str, int]] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_imports(root: Path) -> Graph:
    """Every module under the package folder ``root`` and every import between them."""
    g = Graph(package=root.name)
    for path in sorted(root.rglob("*.py")):
        g.modules[_module_name(root, path)] = path
    for name, path in g.modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == g.package:
                        g.edges.setdefault((name, _nearest(g, alias.name)), node.lineno)
            elif isinstance(node, ast.Call) and _is_import_module(node.func):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    if arg.value.split(".")[0] == g.package:
                        g.edges.setdefault((name, _nearest(g, arg.value)), node.lineno)
                else:
                    g.dynamic.append((name, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != g.package:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in g.modules:  # ``from pkg import module``
                        g.edges.setdefault((name, sub), node.lineno)
                        continue
                    imported = _nearest(g, target)
                    g.edges.setdefault((name, imported), node.lineno)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and imported != name:
                        g.private.append(
                            f"{name} imports the private name {alias.name} of {imported} (line {node.lineno})"
                        )
    return g


def _is_import_module(func: ast.expr) -> bool:
    """``importlib.import_module`` or a bare ``import_module``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _nearest(g: Graph, dotted: str) -> str:
    parts = dotted.split(".")
    while parts and ".".join(parts) not in g.modules:
        parts.pop()
    return ".".join(parts)


def _stage(g: Graph, module: str) -> str | None:
    """The subpackage directly under the package that holds ``module``; None for the package's top modules."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and g.modules[module].name == "__init__.py"):
        return parts[1]
    return None


def cycles(g: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), each in order."""
    adj: dict[str, list[str]] = {m: [] for m in g.modules}
    for a, b in g.edges:
        if b in adj:
            adj[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the packages are small enough for recursion
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in adj[v]:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def problems(root: Path, stages: list[str]) -> list[str]:
    """Every layering problem of the package at ``root``, one line each naming the modules involved."""
    g = read_imports(root)
    rank = {s: i for i, s in enumerate(stages)}
    found = []
    for sub in sorted({m.split(".")[1] for m in g.modules if m.count(".") >= 1}):
        path = g.modules.get(f"{g.package}.{sub}")
        if path is not None and path.name == "__init__.py" and sub not in rank:
            found.append(f"{g.package}.{sub} is a subpackage missing from the list of stages")
    top = len(stages)
    for (a, b), line in sorted(g.edges.items()):
        if a == b:
            continue
        sa, sb = _stage(g, a), _stage(g, b)
        ra = rank.get(sa, top) if sa else top
        rb = rank.get(sb, top) if sb else top
        if rb > ra:
            found.append(f"upward import: {a} (stage {sa or 'top'}) imports {b} (stage {sb or 'top'}) at line {line}")
    for comp in cycles(g):
        path = _cycle_path(g, comp)
        found.append("import cycle: " + " -> ".join(path))
    found += g.private
    for name, line in g.dynamic:
        if _stage(g, name) is not None:  # the package's top may load its API lazily; stages may not hide imports
            found.append(f"{name} imports a module whose name is computed at run time (line {line}): not checkable")
    return found


def _cycle_path(g: Graph, comp: list[str]) -> list[str]:
    """A shortest closed path through the component's first module, for the message (a -> b -> a)."""
    members = set(comp)
    start = comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for a, b in sorted(g.edges):
                if a != v or b not in members:
                    continue
                if b == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if b not in parent:
                    parent[b] = v
                    nxt.append(b)
        frontier = nxt
    return [start, start]
