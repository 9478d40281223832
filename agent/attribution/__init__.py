"""Job attribution: which job(s) each GPU interval belongs to.

Order of precedence for one GPU interval:

1. jobs the source itself names (a simulated trace), method "trace";
2. jobs of the processes using the GPU (Slurm, from each process's environment
   or cgroup), method "slurm";
3. the node-wide job id from config or ``GRIDWATT_JOB_ID``, method "static";
4. nothing: the interval is reported as unattributed (never dropped).

Several jobs on one GPU share its energy evenly; such a split is flagged
``split_estimated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridwatt.agent.attribution.slurm import slurm_job_of_pid
from gridwatt.agent.sources.base import GpuReading

METHOD_STATIC = "static"
METHOD_SLURM = "slurm"
METHOD_TRACE = "trace"
METHOD_JOB_MAPPING = "job_mapping"
METHOD_KUBERNETES = "kubernetes"


@dataclass(frozen=True, slots=True)
class JobShareInfo:
    """One job's share of one GPU interval."""

    job_id: str
    fraction: float
    method: str
    user: str = ""
    split_estimated: bool = False


class Attributor:
    """Maps a GPU reading to the jobs its interval is attributed to."""

    def __init__(self, static_job_id: str | None = None, proc_root: Path = Path("/proc"), slurm: bool = True):
        self.static_job_id = static_job_id or None
        self.proc_root = proc_root
        self.slurm = slurm

    def attribute(self, reading: GpuReading) -> list[JobShareInfo]:
        """The jobs of this reading's interval; an empty list means unattributed."""
        if reading.jobs:
            return [
                JobShareInfo(h.job_id, h.fraction, METHOD_TRACE, h.user, split_estimated=False)
                for h in reading.jobs
            ]
        if self.slurm and reading.pids:
            jobs: dict[str, str] = {}
            for pid in reading.pids:
                found = slurm_job_of_pid(self.proc_root, pid)
                if found is not None:
                    jobs.setdefault(found[0], found[1])
            if jobs:
                share = 1.0 / len(jobs)
                return [
                    JobShareInfo(job, share, METHOD_SLURM, user, split_estimated=len(jobs) > 1)
                    for job, user in sorted(jobs.items())
                ]
        if self.static_job_id:
            return [JobShareInfo(self.static_job_id, 1.0, METHOD_STATIC)]
        return []
