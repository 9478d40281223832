"""Slurm job of a process: from its environment or its cgroup path.

Sources, in order:

* ``SLURM_JOB_ID`` (or the older ``SLURM_JOBID``) in ``/proc/PID/environ``: wins
  when present, even over a cgroup that names another job.
* ``job_<id>`` in the process's cgroup path, below a Slurm cgroup root:

  - cgroup v1 (``cgroup/v1`` plugin), one line per controller::

        7:devices:/slurm/uid_1000/job_1234/step_0/task_0

    (``/slurm_<nodename>/...`` with multiple slurmd per host);
  - cgroup v2 (``cgroup/v2`` plugin), below slurmd's systemd scope::

        0::/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0

    (``<nodename>_slurmstepd.scope`` with multiple slurmd; steps may be
    ``step_batch``, ``step_extern``, ``step_interactive``).

  The cgroup catches processes without Slurm variables too, e.g. an ssh session
  adopted into the job by ``pam_slurm_adopt``.

The job id is Slurm's raw id (what ``SLURM_JOB_ID`` and the cgroup hold); an
array task ``1234_7`` shows as its own raw id, as in ``sacct -o JobIDRaw``.

The user: ``SLURM_JOB_USER``; else the uid in a v1 path (``uid_1000``); else the
owner of ``/proc/PID``; each uid resolved to a name with ``pwd``, else the number.

The job's GPUs (global indices, as Slurm counts them: with ``AutoDetect=nvml``
these are NVML indices): ``SLURM_JOB_GPUS``, else ``SLURM_STEP_GPUS``; else
``CUDA_VISIBLE_DEVICES`` only as a weak hint, since with ``ConstrainDevices`` it is
renumbered from 0 inside the job's cgroup and may hold UUIDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gridwatt.agent.attribution.procfs import (
    CgroupReader,
    ProcFS,
    UserResolver,
    cgroup_paths,
    user_name_of_uid,
)

_JOB_SEGMENT = re.compile(r"job_(\d+)")
_UID_SEGMENT = re.compile(r"uid_(\d+)")


@dataclass(frozen=True, slots=True)
class SlurmProcess:
    """What Slurm tells about one process."""

    job_id: str
    #: Login name of the job's user, or the uid as text, or "" when nothing is visible.
    user: str = ""
    #: Global GPU indices of the job; None when no variable names them.
    gpu_indices: frozenset[int] | None = None
    #: Name of the variable gpu_indices came from ("" when None).
    gpu_indices_from: str = ""
    #: True when gpu_indices is only a hint (from CUDA_VISIBLE_DEVICES).
    gpu_indices_weak: bool = False
    #: SLURM_JOB_ACCOUNT, SLURM_JOB_PARTITION, SLURM_JOB_NAME of the process's environment ("" if unseen).
    account: str = ""
    partition: str = ""
    job_name: str = ""


def parse_gpu_list(text: str) -> frozenset[int] | None:
    """GPU indices of a Slurm-style list: ``"0,2-3"`` gives {0, 2, 3}.

    None when any item is not an index or an ascending range (UUIDs, ``NoDevFiles``).
    An empty text gives the empty set.
    """
    found: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        first, sep, last = item.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            return None
        lo, hi = int(first), int(last) if sep else int(first)
        if hi < lo:
            return None
        found.update(range(lo, hi + 1))
    return frozenset(found)


def job_of_cgroup(cgroup_text: str) -> tuple[str, int | None] | None:
    """(job_id, uid or None) from a ``/proc/PID/cgroup`` text, or None outside Slurm.

    Only a ``job_<id>`` segment below a Slurm root counts: ``slurm`` or
    ``slurm_<node>`` (v1) or ``...slurmstepd.scope`` (v2). uid comes from a v1
    ``uid_<n>`` segment; v2 paths carry none.
    """
    for path in cgroup_paths(cgroup_text):
        segments = [s for s in path.split("/") if s]
        root_at = next(
            (
                i
                for i, seg in enumerate(segments)
                if seg == "slurm" or seg.startswith("slurm_") or seg.endswith("slurmstepd.scope")
            ),
            None,
        )
        if root_at is None:
            continue
        uid: int | None = None
        for seg in segments[root_at + 1 :]:
            m_uid = _UID_SEGMENT.fullmatch(seg)
            if m_uid:
                uid = int(m_uid.group(1))
                continue
            m_job = _JOB_SEGMENT.fullmatch(seg)
            if m_job:
                return m_job.group(1), uid
    return None


def job_gpus_of_environ(env: dict[str, str]) -> tuple[frozenset[int] | None, str, bool]:
    """(indices, variable, weak) of a job's GPUs from its environment; (None, "", False) if unnamed."""
    for var in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        if var in env:
            gpus = parse_gpu_list(env[var])
            if gpus is not None:
                return gpus, var, False
    if "CUDA_VISIBLE_DEVICES" in env:
        gpus = parse_gpu_list(env["CUDA_VISIBLE_DEVICES"])
        if gpus is not None:
            return gpus, "CUDA_VISIBLE_DEVICES", True
    return None, "", False


def slurm_process(
    pid: int,
    procfs: ProcFS,
    read_cgroup: CgroupReader | None = None,
    user_of_uid: UserResolver = user_name_of_uid,
) -> SlurmProcess | None:
    """What Slurm tells about ``pid``, or None when it is not in a Slurm job (or is gone)."""
    env = procfs.environ(pid)
    env_job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or ""
    env_user = env.get("SLURM_JOB_USER", "")
    cgroup_job: tuple[str, int | None] | None = None
    if not env_job or not env_user:
        text = (read_cgroup or procfs.cgroup)(pid)
        cgroup_job = job_of_cgroup(text) if text else None
    job = env_job or (cgroup_job[0] if cgroup_job else "")
    if not job:
        return None
    user = env_user
    if not user:
        uid = cgroup_job[1] if cgroup_job and cgroup_job[0] == job else None
        if uid is None:
            uid = procfs.owner_uid(pid)
        user = user_of_uid(uid) if uid is not None else ""
    gpus, gpus_from, weak = job_gpus_of_environ(env)
    return SlurmProcess(job, user, gpus, gpus_from, weak, env.get("SLURM_JOB_ACCOUNT", ""),
                        env.get("SLURM_JOB_PARTITION", ""), env.get("SLURM_JOB_NAME", ""))
