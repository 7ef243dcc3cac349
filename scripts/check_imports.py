"""Check that searchlab's modules import each other without cycles.

Reads every module of the ``searchlab`` package with :mod:`ast` (nothing is imported),
collects the ``searchlab`` modules each one imports -- at module level *and* inside
functions, since a deferred import is still a dependency -- and reports every cycle
(strongly connected component of two or more modules).

The one allowed exception (docs/ARCHITECTURE.md, "Registries"): a registry module
importing the modules that register its built-in components.  Such an import line
carries the comment ``# registers built-ins``; its edge is left out of the graph.

Run: ``python scripts/check_imports.py`` (exit 1 and a list of cycles if there are any).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "searchlab"
MARKER = "# registers built-ins"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(current: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        text = path.read_text()
        lines = text.splitlines()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if MARKER in lines[node.lineno - 1]:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = resolve(mod, is_pkg, node.level, node.module)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest searchlab module the import names
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                # an ancestor package is always imported before its submodules, so an
                # edge to it (``from . import x``) adds nothing; ``x`` is the edge
                if t and t != mod and t.startswith(PACKAGE) and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    graph = edges(modules())
    found = cycles(graph)
    if not found:
        print(f"check_imports: no import cycles among {len(graph)} {PACKAGE} modules")
        return 0
    for comp in found:
        inner = {m: sorted(graph[m] & set(comp)) for m in comp}
        print("import cycle: " + ", ".join(comp))
        for m, ts in inner.items():
            print(f"    {m} -> {', '.join(ts)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
