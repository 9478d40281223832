"""Attribution of GPU intervals to jobs, on fixture /proc trees and job-mapping dirs."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from gridwatt.agent.attribution import (
    METHOD_JOB_MAPPING,
    METHOD_KUBERNETES,
    METHOD_SLURM,
    METHOD_STATIC,
    METHOD_TRACE,
    Attributor,
    JobShareInfo,
)
from gridwatt.agent.attribution.jobmap import mapped_jobs
from gridwatt.agent.attribution.kubernetes import pod_uid_of_cgroup
from gridwatt.agent.attribution.procfs import ProcFS, user_name_of_uid
from gridwatt.agent.attribution.share import JobOnGpu, split_gpu
from gridwatt.agent.attribution.slurm import (
    job_of_cgroup,
    parse_gpu_list,
    slurm_process,
)
from gridwatt.agent.sources.base import GpuReading, JobHint

FIXTURE_PROC = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
USERS = {1000: "alice", 1001: "bob"}


def user_of(uid: int) -> str:
    return USERS.get(uid, str(uid))


def reading(index: int = 0, pids: tuple[int, ...] = (), jobs: tuple[JobHint, ...] = ()) -> GpuReading:
    return GpuReading(
        index=index, uuid=f"GPU-{index}", name="Fake", t_ns=0, energy_mj=0, power_mw=0, pids=pids, jobs=jobs
    )


def add_proc(
    root: Path,
    pid: int,
    *,
    environ: dict[str, str] | None = None,
    cgroup: str | None = None,
    fixture: bool = False,
) -> Path:
    """A /proc/PID dir under root: cgroup from the checked-in fixture or given text, environ as given."""
    d = root / str(pid)
    if fixture:
        shutil.copytree(FIXTURE_PROC / str(pid), d)
    else:
        d.mkdir(parents=True)
    if cgroup is not None:
        (d / "cgroup").write_text(cgroup)
    if environ is not None:
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items()))
    return d


def slurm_env(job: str, **more: str) -> dict[str, str]:
    return {"PATH": "/usr/bin", "SLURM_JOB_ID": job, **more}


# ---- Slurm -----------------------------------------------------------------------------------------


def test_slurm_cgroup_v1(tmp_path: Path) -> None:
    add_proc(tmp_path, 1001, fixture=True)
    attr = Attributor(proc_root=tmp_path, user_of_uid=user_of)
    assert attr.attribute(reading(pids=(1001,))) == [JobShareInfo("1234", 1.0, METHOD_SLURM, "alice", False)]


def test_slurm_cgroup_v1_line_and_multi_slurmd_root() -> None:
    assert job_of_cgroup("7:devices:/slurm/uid_1000/job_1234/step_0\n") == ("1234", 1000)
    assert job_of_cgroup("4:memory:/slurm_node17/uid_1001/job_99/step_extern/task_0\n") == ("99", 1001)


def test_slurm_cgroup_v2(tmp_path: Path) -> None:
    add_proc(tmp_path, 1002, fixture=True)
    attr = Attributor(proc_root=tmp_path, user_of_uid=lambda uid: f"u{uid}")
    owner = os.stat(tmp_path / "1002").st_uid  # v2 paths carry no uid: the owner of /proc/PID is used
    assert attr.attribute(reading(pids=(1002,))) == [
        JobShareInfo("5678", 1.0, METHOD_SLURM, f"u{owner}", False)
    ]


def test_slurm_cgroup_v2_forms() -> None:
    assert job_of_cgroup("0::/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0\n") == ("1234", None)
    assert job_of_cgroup("0::/system.slice/n01_slurmstepd.scope/job_77/step_interactive/user/task_0") == (
        "77",
        None,
    )
    # a job_NNN segment outside any Slurm root is not a Slurm job
    assert job_of_cgroup("0::/user.slice/user-1000.slice/job_1234/x.scope\n") is None
    assert job_of_cgroup("0::/system.slice/slurmd.service\n") is None


def test_slurm_environ_only(tmp_path: Path) -> None:
    add_proc(tmp_path, 300, environ=slurm_env("4242", SLURM_JOB_USER="carol"), cgroup="0::/user.slice\n")
    attr = Attributor(proc_root=tmp_path, user_of_uid=user_of)
    assert attr.attribute(reading(pids=(300,))) == [JobShareInfo("4242", 1.0, METHOD_SLURM, "carol", False)]


def test_slurm_environ_tells_account_partition_and_job_name(tmp_path: Path) -> None:
    add_proc(tmp_path, 300, environ=slurm_env("4242", SLURM_JOB_USER="carol", SLURM_JOB_ACCOUNT="physics",
                                              SLURM_JOB_PARTITION="gpu-long", SLURM_JOB_NAME="md run"),
             cgroup="0::/user.slice\n")
    attr = Attributor(proc_root=tmp_path, user_of_uid=user_of)
    assert attr.attribute(reading(pids=(300,))) == [
        JobShareInfo("4242", 1.0, METHOD_SLURM, "carol", False, account="physics", partition="gpu-long",
                     job_name="md run")
    ]


def test_slurm_environ_beats_cgroup(tmp_path: Path) -> None:
    add_proc(tmp_path, 1001, fixture=True, environ=slurm_env("777"))  # cgroup says job 1234
    attr = Attributor(proc_root=tmp_path, user_of_uid=user_of)
    got = attr.attribute(reading(pids=(1001,)))
    assert [(s.job_id, s.method) for s in got] == [("777", METHOD_SLURM)]


def test_slurm_user_lookup(tmp_path: Path) -> None:
    # SLURM_JOB_USER wins over the cgroup's uid
    add_proc(tmp_path, 1001, fixture=True, environ=slurm_env("1234", SLURM_JOB_USER="dave"))
    procfs = ProcFS(tmp_path)
    sp = slurm_process(1001, procfs, user_of_uid=user_of)
    assert sp is not None and sp.user == "dave"
    # no variable: uid_1000 of the v1 path, resolved
    (tmp_path / "1001" / "environ").write_bytes(b"PATH=/bin\0")
    sp = slurm_process(1001, procfs, user_of_uid=user_of)
    assert sp is not None and sp.user == "alice"
    # uid unknown to the resolver: the number
    add_proc(tmp_path, 301, cgroup="7:devices:/slurm/uid_4321/job_5/step_0\n")
    sp = slurm_process(301, procfs, user_of_uid=user_of)
    assert sp is not None and (sp.job_id, sp.user) == ("5", "4321")
    # the real resolver: pwd for a known uid, the number for an unknown one
    assert user_name_of_uid(os.getuid()) == pwd.getpwuid(os.getuid()).pw_name
    unknown = next(u for u in range(2_000_000_000, 2_000_000_100) if _no_passwd_entry(u))
    assert user_name_of_uid(unknown) == str(unknown)


def _no_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def test_slurm_job_gpus_parsing() -> None:
    assert parse_gpu_list("0,2-3") == frozenset({0, 2, 3})
    assert parse_gpu_list("5") == frozenset({5})
    assert parse_gpu_list(" 1, 4-6 ") == frozenset({1, 4, 5, 6})
    assert parse_gpu_list("") == frozenset()
    assert parse_gpu_list("GPU-8e7d6c5b-aaaa-bbbb-cccc-0123456789ab") is None
    assert parse_gpu_list("NoDevFiles") is None
    assert parse_gpu_list("3-1") is None


def test_slurm_job_gpus_from_environ(tmp_path: Path) -> None:
    procfs = ProcFS(tmp_path)
    add_proc(tmp_path, 401, environ=slurm_env("1", SLURM_JOB_GPUS="0,2-3", SLURM_STEP_GPUS="2"))
    add_proc(tmp_path, 402, environ=slurm_env("2", SLURM_STEP_GPUS="4,5"))
    add_proc(tmp_path, 403, environ=slurm_env("3", CUDA_VISIBLE_DEVICES="0,1"))
    add_proc(tmp_path, 404, environ=slurm_env("4"))
    got = {pid: slurm_process(pid, procfs, user_of_uid=user_of) for pid in (401, 402, 403, 404)}
    assert all(sp is not None for sp in got.values())
    assert [(sp.gpu_indices, sp.gpu_indices_from, sp.gpu_indices_weak) for sp in got.values() if sp] == [
        (frozenset({0, 2, 3}), "SLURM_JOB_GPUS", False),
        (frozenset({4, 5}), "SLURM_STEP_GPUS", False),
        (frozenset({0, 1}), "CUDA_VISIBLE_DEVICES", True),
        (None, "", False),
    ]


# ---- dcgm-exporter job-mapping files ---------------------------------------------------------------


def test_dcgm_mapping_file(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    (jobmap / "0").write_text("1234\n")
    (jobmap / "1").write_text("1234\n5678\n\n")
    (jobmap / "2").write_text("")  # free GPU left with an empty file
    (jobmap / "3.0").write_text("999\n")  # a MIG instance: not read
    attr = Attributor(proc_root=tmp_path / "proc", job_mapping_dir=jobmap)
    assert attr.attribute(reading(0)) == [JobShareInfo("1234", 1.0, METHOD_JOB_MAPPING, "", False)]
    assert attr.attribute(reading(1)) == [
        JobShareInfo("1234", 0.5, METHOD_JOB_MAPPING, "", True),
        JobShareInfo("5678", 0.5, METHOD_JOB_MAPPING, "", True),
    ]
    assert attr.attribute(reading(2)) == []
    assert attr.attribute(reading(3)) == []
    assert mapped_jobs(jobmap, 1) == ["1234", "5678"]
    assert mapped_jobs(tmp_path / "missing", 0) == []


def test_dcgm_mapping_beats_processes_and_takes_their_user_and_util(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    add_proc(proc, 501, environ=slurm_env("1234", SLURM_JOB_USER="alice"))
    add_proc(proc, 502, environ=slurm_env("5678", SLURM_JOB_USER="bob"))
    add_proc(proc, 503, environ=slurm_env("999", SLURM_JOB_USER="eve"))
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    (jobmap / "0").write_text("1234\n5678\n")
    attr = Attributor(proc_root=proc, job_mapping_dir=jobmap)
    got = attr.attribute(reading(0, pids=(501, 502, 503)), process_util_pct={501: 30.0, 502: 10.0, 503: 60.0})
    assert got == [
        JobShareInfo("1234", 0.75, METHOD_JOB_MAPPING, "alice", False),
        JobShareInfo("5678", 0.25, METHOD_JOB_MAPPING, "bob", False),
    ]


def test_dcgm_mapping_absent_falls_through_to_processes(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    add_proc(proc, 501, environ=slurm_env("1234", SLURM_JOB_USER="alice"))
    attr = Attributor(proc_root=proc, job_mapping_dir=tmp_path / "no-such-dir")
    assert attr.attribute(reading(0, pids=(501,))) == [
        JobShareInfo("1234", 1.0, METHOD_SLURM, "alice", False)
    ]


# ---- Kubernetes ------------------------------------------------------------------------------------


def test_k8s_cgroupfs_driver(tmp_path: Path) -> None:
    add_proc(tmp_path, 1003, fixture=True)
    attr = Attributor(proc_root=tmp_path)
    assert attr.attribute(reading(pids=(1003,))) == [
        JobShareInfo("k8s-pod/0f2e9a3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", 1.0, METHOD_KUBERNETES, "", False)
    ]


def test_k8s_systemd_driver(tmp_path: Path) -> None:
    add_proc(tmp_path, 1004, fixture=True)
    attr = Attributor(proc_root=tmp_path)
    assert attr.attribute(reading(pids=(1004,))) == [
        JobShareInfo("k8s-pod/7d1c2b3a-4e5f-4a6b-9c8d-1e2f3a4b5c6d", 1.0, METHOD_KUBERNETES, "", False)
    ]


def test_k8s_other_forms() -> None:
    uid = "0f2e9a3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
    assert pod_uid_of_cgroup(f"0::/kubepods/pod{uid}/abc\n") == uid  # Guaranteed QoS, cgroupfs
    assert (
        pod_uid_of_cgroup(f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/crio-1.scope") == uid
    )
    assert pod_uid_of_cgroup(f"0::/kubepods/besteffort/pod{uid}/abc\n") == uid
    assert pod_uid_of_cgroup("0::/system.slice/docker-0123456789abcdef.scope\n") is None
    assert pod_uid_of_cgroup(f"0::/user.slice/pod{uid}/x\n") is None  # no kubepods above it
    # Kubernetes is read only when asked
    assert Attributor(kubernetes=False).kubernetes is False


def test_k8s_disabled_falls_through_to_static(tmp_path: Path) -> None:
    add_proc(tmp_path, 1004, fixture=True)
    attr = Attributor("static-1", proc_root=tmp_path, kubernetes=False)
    assert attr.attribute(reading(pids=(1004,))) == [JobShareInfo("static-1", 1.0, METHOD_STATIC, "", False)]


# ---- shared GPU ------------------------------------------------------------------------------------


def _two_jobs(tmp_path: Path) -> Attributor:
    add_proc(tmp_path, 601, environ=slurm_env("1234", SLURM_JOB_USER="alice"))
    add_proc(tmp_path, 602, environ=slurm_env("5678", SLURM_JOB_USER="bob"))
    return Attributor(proc_root=tmp_path)


def test_shared_gpu_even_split_is_estimated(tmp_path: Path) -> None:
    attr = _two_jobs(tmp_path)
    assert attr.attribute(reading(pids=(602, 601))) == [
        JobShareInfo("1234", 0.5, METHOD_SLURM, "alice", True),
        JobShareInfo("5678", 0.5, METHOD_SLURM, "bob", True),
    ]


def test_shared_gpu_util_split_is_exact(tmp_path: Path) -> None:
    attr = _two_jobs(tmp_path)
    assert attr.attribute(reading(pids=(601, 602)), process_util_pct={601: 30.0, 602: 10.0}) == [
        JobShareInfo("1234", 0.75, METHOD_SLURM, "alice", False),
        JobShareInfo("5678", 0.25, METHOD_SLURM, "bob", False),
    ]


def test_shared_gpu_util_summed_per_job(tmp_path: Path) -> None:
    attr = _two_jobs(tmp_path)
    add_proc(tmp_path, 603, environ=slurm_env("1234", SLURM_JOB_USER="alice"))
    got = attr.attribute(reading(pids=(601, 602, 603)), process_util_pct={601: 20.0, 603: 10.0, 602: 10.0})
    assert [(s.job_id, s.fraction, s.split_estimated) for s in got] == [
        ("1234", 0.75, False),
        ("5678", 0.25, False),
    ]


def test_shared_gpu_util_without_information_falls_back_to_even(tmp_path: Path) -> None:
    attr = _two_jobs(tmp_path)
    for util in ({}, {601: 0.0, 602: 0.0}, {9999: 50.0}, {601: float("nan")}):
        got = attr.attribute(reading(pids=(601, 602)), process_util_pct=util)
        assert [(s.fraction, s.split_estimated) for s in got] == [(0.5, True), (0.5, True)], util


def test_split_fractions_sum_to_exactly_one() -> None:
    three = [JobOnGpu(j, METHOD_SLURM) for j in ("a", "b", "c")]
    got = split_gpu(three)
    assert [s.fraction for s in got] == [1 / 3, 1 / 3, 1.0 - (1 / 3 + 1 / 3)]
    assert sum(s.fraction for s in got) == 1.0
    seven = [JobOnGpu(str(i), METHOD_SLURM, pids=(i,)) for i in range(7)]
    got = split_gpu(seven, {i: 10.0 + i * 3.7 for i in range(7)})
    assert sum(s.fraction for s in got) == 1.0
    assert got[-1].fraction == 1.0 - sum(s.fraction for s in got[:-1])
    assert split_gpu([]) == []


# ---- failures, precedence, cache -------------------------------------------------------------------


def test_process_exited_falls_through_to_static(tmp_path: Path) -> None:
    attr = Attributor("static-1", proc_root=tmp_path)  # pid 700 has no /proc entry: it has exited
    assert attr.attribute(reading(pids=(700,))) == [JobShareInfo("static-1", 1.0, METHOD_STATIC, "", False)]


def test_proc_permission_denied_falls_through_to_static(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_proc(tmp_path, 701, environ=slurm_env("1234"), cgroup="7:devices:/slurm/uid_1000/job_1234/step_0\n")
    real_read_bytes, real_read_text = Path.read_bytes, Path.read_text

    def deny_bytes(self: Path) -> bytes:
        if "701" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    def deny_text(self: Path, *args: object, **kwargs: object) -> str:
        if "701" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_bytes", deny_bytes)
    monkeypatch.setattr(Path, "read_text", deny_text)
    attr = Attributor("static-1", proc_root=tmp_path)
    assert attr.attribute(reading(pids=(701,))) == [JobShareInfo("static-1", 1.0, METHOD_STATIC, "", False)]


def test_unattributed_is_empty_list(tmp_path: Path) -> None:
    add_proc(
        tmp_path, 800, environ={"PATH": "/bin"}, cgroup="0::/user.slice/user-1000.slice/session-3.scope\n"
    )
    attr = Attributor(proc_root=tmp_path, job_mapping_dir=tmp_path / "jobmap")
    assert attr.attribute(reading(pids=(800,))) == []
    assert attr.attribute(reading(pids=())) == []


def test_trace_beats_everything(tmp_path: Path) -> None:
    add_proc(tmp_path, 1001, fixture=True)
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    (jobmap / "0").write_text("1234\n")
    attr = Attributor("static-1", proc_root=tmp_path, job_mapping_dir=jobmap)
    got = attr.attribute(reading(0, pids=(1001,), jobs=(JobHint("t1", 0.6, "u"), JobHint("t2", 0.4))))
    assert got == [
        JobShareInfo("t1", 0.6, METHOD_TRACE, "u", False),
        JobShareInfo("t2", 0.4, METHOD_TRACE, "", False),
    ]


def test_slurm_then_kubernetes_per_process(tmp_path: Path) -> None:
    add_proc(tmp_path, 1001, fixture=True)
    add_proc(tmp_path, 1004, fixture=True)
    attr = Attributor(proc_root=tmp_path, user_of_uid=user_of)
    got = attr.attribute(reading(pids=(1004, 1001)))
    assert [(s.job_id, s.method, s.fraction, s.split_estimated) for s in got] == [
        ("1234", METHOD_SLURM, 0.5, True),
        ("k8s-pod/7d1c2b3a-4e5f-4a6b-9c8d-1e2f3a4b5c6d", METHOD_KUBERNETES, 0.5, True),
    ]


def test_pid_lookups_cached_and_dropped_when_gone(tmp_path: Path) -> None:
    reads: list[int] = []

    def read_cgroup(pid: int) -> str | None:
        reads.append(pid)
        return "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n"

    add_proc(tmp_path, 900, environ={"PATH": "/bin"})
    attr = Attributor(proc_root=tmp_path, read_cgroup=read_cgroup, user_of_uid=user_of)
    for _ in range(3):
        assert [s.job_id for s in attr.attribute(reading(0, pids=(900,)))] == ["42"]
        assert [s.job_id for s in attr.attribute(reading(1, pids=(900,)))] == ["42"]
    assert reads == [900]  # one lookup for 6 calls on 2 GPUs
    attr.attribute(reading(0, pids=()))  # gone from GPU 0 but still on GPU 1: kept
    attr.attribute(reading(1, pids=(900,)))
    assert reads == [900]
    attr.attribute(reading(1, pids=()))  # gone from every GPU: dropped (the pid may be reused)
    attr.attribute(reading(1, pids=(900,)))
    assert reads == [900, 900]
