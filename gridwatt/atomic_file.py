"""Replace a file atomically: readers see the old content or the new, never a part, and never a
moment at which the new content has a wider mode or another owner than asked.

The one way the project writes a file in place (alert state, the agent's acked-through mark, the
installer's config). The Slurm prolog/epilog script has its own, because it uses only the standard
library.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path | str, text: str, *, mode: int = 0o600, owner: tuple[int, int] | None = None,
                 sync: bool = True) -> None:
    """Write ``text`` (UTF-8) to a temporary file in ``path``'s folder, created with ``mode`` whatever the
    umask and chowned to ``owner`` (uid, gid; when running as root), then rename it over ``path``.

    ``sync``: fsync the file before the rename and the folder after it, so the new content survives a
    power cut; leave it off for a hint rewritten every few seconds.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it is durable (best effort: not every filesystem allows it)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)
    os.close(dir_fd)
