"""Build build/typecheck/: the import tree of gridwatt as installed, made of links to the real folders.

setuptools maps the import names onto folders (``[tool.setuptools.package-dir]`` in pyproject.toml:
``gridwatt.agent`` is ``agent/``, ``gridwatt.collector`` is ``collector/``). Python follows that
mapping through the installed package, but mypy finds modules only by their place in a folder tree.
mypy's ``mypy_path`` points at the tree built here, in which ``gridwatt/agent`` links to ``agent/``
and so on, so mypy checks the real files under their import names. The tree is generated
(build/ is ignored by git), rebuilt by scripts/setup.sh, and cheap to rebuild:

    python3 scripts/typecheck_tree.py && .venv/bin/mypy

Errors name the files by their path in the tree, e.g. build/typecheck/gridwatt/agent/config.py is
agent/config.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "typecheck"


def package_dirs(repo: Path = REPO) -> dict[str, Path]:
    """The import name → folder mapping of pyproject.toml, folders made absolute."""
    table = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: (repo / folder).resolve() for name, folder in table.items()}


def _fill(target: Path, name: str, mapping: dict[str, Path]) -> None:
    """Make ``target`` stand for package ``name``: one link, or a folder of links when a mapped
    package sits inside it."""
    folder = mapping[name]
    nested = {other.rsplit(".", 1)[1]: other for other in mapping if other.rpartition(".")[0] == name}
    if not nested:
        target.symlink_to(os.path.relpath(folder, target.parent), target_is_directory=True)
        return
    target.mkdir(parents=True)
    for entry in sorted(folder.iterdir()):
        if entry.name in nested or entry.name == "__pycache__":
            continue
        (target / entry.name).symlink_to(os.path.relpath(entry, target), entry.is_dir())
    for child, other in nested.items():
        _fill(target / child, other, mapping)


def build(repo: Path = REPO, tree: Path | None = None) -> Path:
    """(Re)build the link tree; returns its folder."""
    tree = tree or repo / "build" / "typecheck"
    mapping = package_dirs(repo)
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for name in mapping:
        if "." not in name:
            _fill(tree / name, name, mapping)
    return tree


if __name__ == "__main__":
    print(f"[typecheck_tree] built {build().relative_to(REPO)}", file=sys.stderr)
