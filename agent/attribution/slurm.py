"""Slurm job of a process: ``SLURM_JOB_ID`` in its environment, else ``job_NNN`` in its cgroup path."""

from __future__ import annotations

import re
from pathlib import Path

_CGROUP_JOB = re.compile(r"/job_(\d+)(?:/|$)")


def _read_environ(proc_root: Path, pid: int) -> dict[str, str]:
    try:
        raw = (proc_root / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _job_from_cgroup(proc_root: Path, pid: int) -> str | None:
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        m = _CGROUP_JOB.search(line)
        if m:
            return m.group(1)
    return None


def slurm_job_of_pid(proc_root: Path, pid: int) -> tuple[str, str] | None:
    """(job_id, user) of a process in a Slurm job, or None. user is "" where not visible."""
    env = _read_environ(proc_root, pid)
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or _job_from_cgroup(proc_root, pid)
    if not job:
        return None
    return job, env.get("SLURM_JOB_USER", "")
