"""Files shipped with gridwatt (the repository's ``deploy/`` folder, packaged as ``gridwatt.deploy``)."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

DEPLOY_PACKAGE = "gridwatt.deploy"


def deploy_file(*parts: str) -> Traversable:
    """A shipped file by its path under ``deploy/``, e.g. ``deploy_file("systemd", "x.service")``."""
    return resources.files(DEPLOY_PACKAGE).joinpath(*parts)
