"""Job attribution: which job(s) each GPU interval belongs to.

Order of precedence for one GPU interval (see README.md in this folder):

1. jobs the source itself names (a simulated trace), method "trace";
2. the job ids in the dcgm-exporter job-mapping file of that GPU, method "job_mapping";
   then the pods the kubelet's pod-resources API says hold that GPU, method "kubernetes";
3. the jobs of the processes using the GPU: Slurm (environment or cgroup), method
   "slurm"; else Kubernetes (pod of the cgroup), method "kubernetes";
4. the node-wide job id from config or ``GRIDWATT_JOB_ID``, method "static";
5. nothing: the interval is reported as unattributed (never dropped).

Several jobs on one GPU split its energy by their processes' utilisation where
known, else evenly (flagged ``split_estimated``); see ``share.split_gpu``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gridwatt.agent.attribution.jobinfo import GPU_UUID, JobInfoCache
from gridwatt.agent.attribution.jobmap import mapped_jobs
from gridwatt.agent.attribution.kubernetes import pod_job_id, pod_uid_of_cgroup
from gridwatt.agent.attribution.podresources import GpuPods
from gridwatt.agent.attribution.procfs import CgroupReader, ProcFS, UserResolver, user_name_of_uid
from gridwatt.agent.attribution.share import (
    METHOD_JOB_MAPPING,
    METHOD_KUBERNETES,
    METHOD_SLURM,
    METHOD_STATIC,
    METHOD_TRACE,
    JobOnGpu,
    JobShareInfo,
    split_gpu,
)
from gridwatt.agent.attribution.slurm import SlurmProcess, slurm_process
from gridwatt.agent.sources.base import GpuReading, JobHint

__all__ = [
    "METHOD_JOB_MAPPING",
    "METHOD_KUBERNETES",
    "METHOD_SLURM",
    "METHOD_STATIC",
    "METHOD_TRACE",
    "Attributor",
    "JobShareInfo",
    "ProcessJob",
]


@dataclass(frozen=True, slots=True)
class ProcessJob:
    """The job one process belongs to."""

    job_id: str
    method: str
    user: str = ""
    #: The Slurm details (the job's GPUs among them) when method is "slurm".
    slurm: SlurmProcess | None = None


def _slurm_who(pj: ProcessJob) -> dict[str, str]:
    """Account, partition and job name of a process's job, as far as Slurm told (keywords of JobOnGpu)."""
    if pj.slurm is None:
        return {}
    return {"account": pj.slurm.account, "partition": pj.slurm.partition, "job_name": pj.slurm.job_name}


class Attributor:
    """Maps a GPU reading to the jobs its interval is attributed to.

    ``proc_root``, ``read_cgroup`` (pid -> text of its cgroup file), ``user_of_uid``
    and ``job_mapping_dir`` are injectable so tests run on fixture trees. Each pid's
    job is looked up once and cached while the pid is seen on any GPU; the entry
    is dropped when the pid leaves every GPU's latest reading.
    """

    #: Distinct job hints remembered with their shares; the memo is cleared when it grows past this.
    HINT_MEMO_MAX = 1024

    def __init__(
        self,
        static_job_id: str | None = None,
        proc_root: Path = Path("/proc"),
        slurm: bool = True,
        *,
        kubernetes: bool = True,
        job_mapping_dir: Path | None = None,
        read_cgroup: CgroupReader | None = None,
        user_of_uid: UserResolver = user_name_of_uid,
        gpu_pods: Callable[[], GpuPods] | None = None,
    ):
        self.static_job_id = static_job_id or None
        self.proc_root = proc_root
        self.slurm = slurm
        self.kubernetes = kubernetes
        self.job_mapping_dir = job_mapping_dir
        #: The kubelet's device -> pods map (KubeletGpuMap.current); None = not asked.
        self.gpu_pods = gpu_pods
        self._job_info = JobInfoCache(job_mapping_dir) if job_mapping_dir is not None else None
        self._procfs = ProcFS(proc_root)
        self._read_cgroup: CgroupReader = read_cgroup or self._procfs.cgroup
        self._user_of_uid = user_of_uid
        self._users: dict[int, str] = {}
        self._pid_jobs: dict[int, ProcessJob | None] = {}
        self._pids_by_gpu: dict[int, frozenset[int]] = {}
        #: One share object for every interval attributed to the static job id (None: no static id).
        self._static_share = (JobShareInfo(self.static_job_id, 1.0, METHOD_STATIC)
                              if self.static_job_id else None)
        self._hint_shares: dict[tuple[JobHint, ...], tuple[JobShareInfo, ...]] = {}

    def attribute(
        self, reading: GpuReading, process_util_pct: Mapping[int, float] | None = None
    ) -> list[JobShareInfo]:
        """The jobs of this reading's interval; an empty list means unattributed.

        ``process_util_pct`` maps pid -> SM utilisation (percent 0-100) over the
        interval, from ``nvmlDeviceGetProcessUtilization``; it splits a shared GPU.
        """
        if reading.pids or self._pids_by_gpu.get(reading.index):
            self._track_pids(reading)
        if reading.jobs:
            return self._trace_shares(reading.jobs)
        if self.job_mapping_dir is not None:
            mapped = mapped_jobs(self.job_mapping_dir, reading.index)
            if not mapped and GPU_UUID.fullmatch(reading.uuid):  # a prolog that got UUIDs from Slurm
                mapped = mapped_jobs(self.job_mapping_dir, reading.uuid)
            if mapped:
                return split_gpu(self._mapped_on_gpu(mapped, reading.pids), process_util_pct)
        pods = self._pods_holding(reading)
        if pods:
            return split_gpu(pods, process_util_pct)
        on_gpu = self._processes_on_gpu(reading.pids) if reading.pids else None
        if on_gpu:
            return split_gpu(on_gpu, process_util_pct)
        if self._static_share is not None:
            return [self._static_share]
        return []

    def _trace_shares(self, hints: tuple[JobHint, ...]) -> list[JobShareInfo]:
        """The shares of the jobs a source names (memoized: a trace repeats the same hints)."""
        shares = self._hint_shares.get(hints)
        if shares is None:
            if len(self._hint_shares) >= self.HINT_MEMO_MAX:
                self._hint_shares.clear()
            shares = self._hint_shares[hints] = tuple(
                JobShareInfo(h.job_id, h.fraction, METHOD_TRACE, h.user, False, account=h.account,
                             partition=h.partition, namespace=h.namespace, job_name=h.job_name)
                for h in hints
            )
        return list(shares)

    def process_job(self, pid: int) -> ProcessJob | None:
        """The job of process ``pid`` (Slurm first, then Kubernetes), or None; cached."""
        if pid in self._pid_jobs:
            return self._pid_jobs[pid]
        found = self._look_up(pid)
        self._pid_jobs[pid] = found
        return found

    def _look_up(self, pid: int) -> ProcessJob | None:
        cgroup_text: list[str | None] = []  # read at most once, by whichever method needs it first

        def read_once(p: int) -> str | None:
            if not cgroup_text:
                cgroup_text.append(self._read_cgroup(p))
            return cgroup_text[0]

        if self.slurm:
            sp = slurm_process(pid, self._procfs, read_once, self._user_name)
            if sp is not None:
                return ProcessJob(sp.job_id, METHOD_SLURM, sp.user, sp)
        if self.kubernetes:
            text = read_once(pid)
            uid = pod_uid_of_cgroup(text) if text else None
            if uid:
                return ProcessJob(pod_job_id(uid), METHOD_KUBERNETES)
        return None

    def _user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            name = self._users[uid] = self._user_of_uid(uid)
        return name

    def _pods_holding(self, reading: GpuReading) -> list[JobOnGpu]:
        """The pods the kubelet says hold this GPU (by UUID, else by index), one job per pod."""
        if not (self.kubernetes and self.gpu_pods):
            return []
        held = self.gpu_pods()
        holders = held.get(reading.uuid, ()) if reading.uuid else ()
        holders = holders or held.get(str(reading.index), ())
        pods = sorted({(h.job_id, h.namespace, h.pod) for h in holders})
        # who ran what: the pod's namespace, and the pod's name as the job's name
        return [JobOnGpu(job, METHOD_KUBERNETES, namespace=namespace, job_name=pod)
                for job, namespace, pod in pods]

    def _mapped_on_gpu(self, mapped: list[str], pids: tuple[int, ...]) -> list[JobOnGpu]:
        """Jobs named by the mapping file, each with the GPU's processes found in it (for user, util)."""
        jobs: list[JobOnGpu] = []
        for job_id in mapped:
            own = [(pid, pj) for pid in pids if (pj := self.process_job(pid)) and pj.job_id == job_id]
            info = self._job_info.get(job_id) if self._job_info is not None else None
            user = next((pj.user for _, pj in own if pj.user), "") or (info.user if info else "")
            jobs.append(JobOnGpu(job_id, METHOD_JOB_MAPPING, user, tuple(pid for pid, _ in own),
                                 account=info.account if info else "", alias=info.alias if info else ""))
        return jobs

    def _processes_on_gpu(self, pids: tuple[int, ...]) -> list[JobOnGpu]:
        by_job: dict[str, tuple[ProcessJob, list[int]]] = {}
        for pid in pids:
            pj = self.process_job(pid)
            if pj is not None:
                by_job.setdefault(pj.job_id, (pj, []))[1].append(pid)
        return [JobOnGpu(job, pj.method, pj.user, tuple(own), **_slurm_who(pj))
                for job, (pj, own) in by_job.items()]

    def _track_pids(self, reading: GpuReading) -> None:
        """Remember this GPU's pids; forget cached pids that no GPU shows any more."""
        seen = frozenset(reading.pids)
        gone = self._pids_by_gpu.get(reading.index, frozenset()) - seen
        self._pids_by_gpu[reading.index] = seen
        if gone:
            still = frozenset().union(*self._pids_by_gpu.values())
            for pid in gone - still:
                self._pid_jobs.pop(pid, None)
