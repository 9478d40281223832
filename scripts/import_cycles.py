"""Find import circles among gridwatt's own modules, from the source files (no import is run).

Modules are named as installed: ``[tool.setuptools.package-dir]`` in pyproject.toml maps
``gridwatt.agent`` onto ``agent/`` and so on. Every import counts, wherever it stands: at module
level, inside a function (a "lazy" import) or under ``if TYPE_CHECKING:``, since each of them is a
dependency that a circle can hide behind. ``from a.b import c`` is an edge to ``a.b.c`` when that
is a module, else to ``a.b``; a package's ``__init__`` is not implied by importing its submodules
(the convention of grimp and import-linter).

    python3 scripts/import_cycles.py        # prints each circle; exit status 1 if there is one

tests/test_layout.py runs it as part of the suite.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """Import name → source file for every module under the mapped folders."""
    table = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mapping = {name: repo / folder for name, folder in table.items()}
    files: dict[str, Path] = {}
    for name, folder in mapping.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(other != name and other.startswith(name + ".") and
                   path.is_relative_to(repo / table[other]) for other in mapping):
                continue  # belongs to a nested mapping (none today; kept exact anyway)
            files[".".join([name, *parts])] = path
    return files


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an import statement refers to (``from x import y`` gives x and x.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    return []


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the gridwatt modules it imports (every import statement in the file)."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            names = _imported(node, name, is_package)
            if not names:
                continue
            if isinstance(node, ast.ImportFrom):
                source, members = names[0], names[1:]
                targets = [m for m in members if m in files] or ([source] if source in files else [])
                if len(targets) < len(members) and source in files:
                    targets.append(source)  # names defined in the module itself
            else:
                targets = [n for n in names if n in files]
            graph[name].update(t for t in targets if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        nonlocal counter
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def main() -> int:
    files = module_files()
    graph = import_graph(files)
    found = cycles(graph)
    for component in found:
        print(f"circle of {len(component)} modules: " + ", ".join(component))
    edges = sum(len(v) for v in graph.values())
    print(f"{len(files)} modules, {edges} imports between them, {len(found)} circles", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
