"""Reading one process's environment, cgroup and owner from a ``/proc`` tree.

Every read tolerates the process having exited or being unreadable (permission
denied, hidepid): it answers "nothing" instead of raising. The root is a
parameter so tests point it at a fixture tree, and an agent in a container
points it at the host's ``/proc`` mounted elsewhere (e.g. ``/host/proc``).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

#: Reads the text of ``/proc/PID/cgroup`` for a pid; None when unreadable.
CgroupReader = Callable[[int], "str | None"]
#: Turns a numeric uid into a user name.
UserResolver = Callable[[int], str]


def user_name_of_uid(uid: int) -> str:
    """The login name of ``uid`` from the passwd database, else the number as text."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


class ProcFS:
    """A ``/proc`` tree: per-process environ, cgroup and owner, each read failing soft."""

    def __init__(self, root: Path = Path("/proc")):
        self.root = Path(root)

    def environ(self, pid: int) -> dict[str, str]:
        """``/proc/PID/environ`` as a dict; empty when unreadable or the process is gone."""
        try:
            raw = (self.root / str(pid) / "environ").read_bytes()
        except OSError:
            return {}
        env: dict[str, str] = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
        return env

    def cgroup(self, pid: int) -> str | None:
        """Text of ``/proc/PID/cgroup`` (lines ``hierarchy-id:controllers:path``), or None."""
        try:
            return (self.root / str(pid) / "cgroup").read_text(errors="replace")
        except OSError:
            return None

    def owner_uid(self, pid: int) -> int | None:
        """Uid owning ``/proc/PID`` (the process's real owner), or None when gone."""
        try:
            return os.stat(self.root / str(pid)).st_uid
        except OSError:
            return None


def cgroup_paths(cgroup_text: str) -> list[str]:
    """The paths of a ``/proc/PID/cgroup`` text, one per line, in file order.

    Lines are ``7:devices:/slurm/uid_1000/job_1234/step_0`` (cgroup v1) or
    ``0::/system.slice/...`` (cgroup v2); the path is everything after the second colon.
    """
    paths: list[str] = []
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2]:
            paths.append(parts[2].strip())
    return paths
