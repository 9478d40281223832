"""Lists every package under the folders that ``[tool.setuptools] package-dir`` maps (pyproject.toml).

The repository keeps ``agent/``, ``collector/`` and ``deploy/`` at its root; the import names
``gridwatt.agent``, ``gridwatt.collector`` and ``gridwatt.deploy`` come from that mapping. This file
only finds the subpackages below each mapped folder, so a new subpackage ships without a list to edit.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def mapped_packages() -> list[str]:
    """Every import package: each mapped root and the packages found below its folder."""
    package_dir = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found: list[str] = []
    for name, folder in package_dir.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(str(HERE / folder))]
    return sorted(set(found))


setup(packages=mapped_packages())
