"""Prepare an image folder (``install --root DIR``) so that ``useradd --prefix DIR`` can add users.

``useradd --prefix`` edits ``DIR/etc/passwd``, ``group``, ``shadow`` and ``gshadow`` and fails (after
retrying its lock for seconds) when they or ``DIR/etc`` do not exist. An image made by debootstrap or
a container export has them; an empty folder gets them here, each with only a root entry.
"""

from __future__ import annotations

from pathlib import Path

#: file → (mode, content with only root's entry)
_ACCOUNT_FILES = {
    "passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\n"),
    "group": (0o644, "root:x:0:\n"),
    "shadow": (0o640, "root:*:19000:0:99999:7:::\n"),
    "gshadow": (0o640, "root:*::\n"),
}


def prepare_root(root: Path) -> list[str]:
    """Create ``root/etc`` and any missing account file; returns what was created, one line each."""
    done: list[str] = []
    etc = root / "etc"
    if not etc.is_dir():
        etc.mkdir(parents=True, exist_ok=True)
        done.append(f"created {etc}")
    for name, (mode, content) in _ACCOUNT_FILES.items():
        path = etc / name
        if path.exists():
            continue
        path.touch(mode=mode)
        path.chmod(mode)
        path.write_text(content)
        done.append(f"created {path} (root only; useradd adds the service user)")
    return done
