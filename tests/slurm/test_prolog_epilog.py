"""deploy/slurm/gridwatt_slurm.py without Slurm: GPU lists, mapping files, summaries, appending as
the job's user, configuration errors; and the agent reading what the prolog wrote."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.attribution.jobinfo import read_job_info
from gridwatt.agent.sources.base import GpuReading
from tests.conftest import REPO


def _load() -> ModuleType:
    path = REPO / "deploy" / "slurm" / "gridwatt_slurm.py"
    spec = importlib.util.spec_from_file_location("gridwatt_slurm", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gridwatt_slurm"] = module
    spec.loader.exec_module(module)
    return module


gs = _load()
request_cleanup: list[Path] = []


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while request_cleanup:
        shutil.rmtree(request_cleanup.pop(), ignore_errors=True)
UUID_A = "GPU-8a3c6f0e-1b2d-4c5e-9f00-0123456789ab"


def env(job: str, gpus: str, **extra: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": job, "SLURM_JOB_GPUS": gpus, "SLURM_JOB_USER": "alice",
            "SLURM_JOB_UID": "1000", "SLURMD_NODENAME": "n1", **extra}


def test_gpu_lists_as_slurm_writes_them() -> None:
    assert gs.parse_gpus("0,2-3") == ("0", "2", "3")
    assert gs.parse_gpus(f"{UUID_A},1") == (UUID_A, "1")
    # nothing that could name a file outside the folder, nor Slurm's placeholders
    assert gs.parse_gpus("../../etc/passwd,NoDevFiles,3-1,/x,") == ()


def test_job_from_env_ids_and_gpu_sources() -> None:
    job = gs.job_from_env(env("1241", "0,1", SLURM_ARRAY_JOB_ID="1234", SLURM_ARRAY_TASK_ID="7"))
    assert (job.job_id, job.alias, job.user, job.uid) == ("1241", "1234_7", "alice", 1000)
    assert job.gpus == ("0", "1")
    het = gs.job_from_env(env("1235", "2", SLURM_HET_JOB_ID="1234", SLURM_HET_JOB_OFFSET="1"))
    assert het.alias == "1234+1"
    # Slurm 25.11+: UUIDs in CUDA_VISIBLE_DEVICES when SLURM_JOB_GPUS is absent
    uuid_job = gs.job_from_env({"SLURM_JOB_ID": "9", "CUDA_VISIBLE_DEVICES": UUID_A})
    assert uuid_job.gpus == (UUID_A,)
    assert gs.job_from_env({"SLURM_JOB_ID": "9; rm -rf /"}) is None
    assert gs.alias_of({"ArrayJobId": "1234", "ArrayTaskId": "7"}, "1241") == "1234_7"
    assert gs.alias_of({"HetJobId": "1234", "HetJobOffset": "1"}, "1235") == "1234+1"
    assert gs.alias_of({"ArrayJobId": "(null)"}, "5") == "5"


def test_map_and_unmap_share_a_gpu_atomically_and_leave_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    a = gs.job_from_env(env("11", "0,1", SLURM_JOB_ACCOUNT="physics"))
    b = gs.job_from_env(env("12", f"1,{UUID_A}"))
    assert gs.map_job(folder, a) == ["0", "1"]
    assert gs.map_job(folder, b) == ["1", UUID_A]
    assert gs.map_job(folder, a) == ["0", "1"]  # a prolog run twice adds nothing twice
    assert (folder / "0").read_text() == "11\n"
    assert (folder / "1").read_text() == "11\n12\n"
    assert (folder / UUID_A).read_text() == "12\n"
    for f in ("0", "1", UUID_A):
        st = (folder / f).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o644)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert read_job_info(folder, "11").account == "physics"
    assert sorted(gs.unmap_job(folder, "11")) == ["0", "1"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["1", UUID_A]
    assert (folder / "1").read_text() == "12\n"
    assert sorted(gs.unmap_job(folder, "12")) == ["1", UUID_A]
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    assert list((folder / ".jobs").iterdir()) == []
    assert gs.unmap_job(tmp_path / "never-made", "12") == []  # no folder (agent never installed): fine


def test_a_writable_mapping_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(OSError, match="not group/world-writable"):
        gs.map_job(folder, gs.job_from_env(env("11", "0")))


def test_agent_attributes_index_and_uuid_files_with_user_account_alias(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    gs.map_job(folder, gs.job_from_env(env("1241", "0", SLURM_ARRAY_JOB_ID="1234", SLURM_ARRAY_TASK_ID="7",
                                           SLURM_JOB_ACCOUNT="physics")))
    gs.map_job(folder, gs.job_from_env(env("1300", UUID_A, SLURM_JOB_USER="bob")))
    attributor = Attributor(job_mapping_dir=folder, slurm=False, kubernetes=False)

    def reading(index: int, uuid: str) -> GpuReading:
        return GpuReading(index=index, uuid=uuid, name="sim", t_ns=0, energy_mj=0, power_mw=0)

    (s0,) = attributor.attribute(reading(0, "GPU-00000000-0000-0000-0000-000000000000"))
    assert (s0.job_id, s0.method, s0.user) == ("1241", "job_mapping", "alice")
    assert (s0.account, s0.alias) == ("physics", "1234_7")
    (s1,) = attributor.attribute(reading(3, UUID_A))  # NVML says GPU 3 has that UUID
    assert (s1.job_id, s1.user, s1.alias) == ("1300", "bob", "")
    assert attributor.attribute(reading(2, "GPU-11111111-0000-0000-0000-000000000000")) == []


def test_job_info_that_is_not_ours_is_ignored(tmp_path: Path) -> None:
    jobs = tmp_path / ".jobs"
    jobs.mkdir(parents=True)
    (jobs / "5.json").write_text('{"job_id": "6", "user": "mallory"}')
    (jobs / "7.json").write_text("x" * 5000)
    (jobs / "8.json").write_text('{"job_id": "8", "alias": "../x", "user": "a\\u0007b"}')
    (jobs / "9.json").symlink_to(jobs / "8.json")
    assert read_job_info(tmp_path, "5").user == ""
    assert read_job_info(tmp_path, "7").user == ""
    info8 = read_job_info(tmp_path, "8")
    assert (info8.alias, info8.user) == ("", "")
    assert read_job_info(tmp_path, "9").user == ""


def test_summary_line_units() -> None:
    report = {"facility_energy_kwh": 12.44, "co2e_kg": 4.1, "gpu_count": 8, "mean_util_pct": 71.4}
    assert gs.summary_line(report) == "gridwatt: 12.4 kWh, 4.10 kg CO2e, 8 GPUs, mean util 71 %"
    small = {"facility_energy_kwh": 0.001775, "co2e_kg": 0.00062125, "gpu_count": 1, "mean_util_pct": 87.5}
    assert gs.summary_line(small) == "gridwatt: 1.78 Wh, 0.621 g CO2e, 1 GPU, mean util 88 %"
    partial = gs.summary_line(small, complete=False)
    assert partial.endswith("(so far: the agent's last interval was not in yet)")


def test_scontrol_record_with_spaces_in_paths() -> None:
    rec = gs.parse_scontrol_line("JobId=5 BatchFlag=1 StdOut=/home/a b/out 5.txt Power= BatchHost=n1")
    assert rec["StdOut"] == "/home/a b/out 5.txt" and rec["BatchHost"] == "n1" and rec["Power"] == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_append_as_user_never_follows_a_link_nor_writes_others_files(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    # a folder nobody can reach (pytest's tmp_path is private to root)
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-append-"))
    folder.chmod(0o1777)
    request_cleanup.append(folder)
    out = folder / "job.out"
    out.write_text("hello\n")
    os.chown(out, nobody, -1)
    gs.append_as_user(str(out), nobody, "gridwatt: 1 Wh", 10)
    assert out.read_text() == "hello\ngridwatt: 1 Wh\n"
    assert out.stat().st_uid == nobody
    # a link planted where the output should be: refused, its target untouched
    target = tmp_path / "root-owned"
    target.write_text("secret\n")
    link = folder / "link.out"
    link.symlink_to(target)
    with pytest.raises(RuntimeError, match="cannot append"):
        gs.append_as_user(str(link), nobody, "gridwatt: x", 10)
    assert target.read_text() == "secret\n"
    # a file of another user (root), even one the job's user could write: refused
    other = folder / "other.out"
    other.write_text("")
    other.chmod(0o666)
    with pytest.raises(RuntimeError, match="not owned by nobody"):
        gs.append_as_user(str(other), nobody, "gridwatt: x", 10)
    assert other.read_text() == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("report_timeout_s = 0\n", "field report_timeout_s: must be in (0, 120] s, got 0.0"),
        ("collector_url = \"ftp://x\"\n", "field collector_url: must be an http(s) URL"),
        ("admin_comment = \"yes\"\n", "field admin_comment: must be auto, sacctmgr, scontrol or off"),
        ("mapping_dirr = \"/x\"\n", "field mapping_dirr: unknown setting"),
        ("summary_to_output = 1\n", "field summary_to_output: expected bool, got 1"),
        ("report_timeout_s = [\n", "cannot read"),
    ],
)
def test_config_errors_name_file_field_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "slurm.toml"
    path.write_text(text)
    with pytest.raises(gs.ConfigError) as err:
        gs.load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_missing_config_file_means_defaults(tmp_path: Path) -> None:
    cfg = gs.load_config(tmp_path / "absent.toml")
    assert cfg.report_timeout_s == 5.0 and cfg.admin_comment == "auto"


def test_epilog_without_a_collector_cleans_up_and_says_why(tmp_path: Path) -> None:
    """No Slurm here (scontrol fails): no summary, and still no mapping left behind."""
    from gridwatt.demo_harness.influxdb import free_port

    folder = tmp_path / "map"
    cfg = gs.Config(mapping_dir=folder, collector_url=f"http://127.0.0.1:{free_port()}", report_timeout_s=1.0,
                    scontrol=str(tmp_path / "no-scontrol"), log_file=str(tmp_path / "log"))
    job_env = env("77", "0,1")
    gs.prolog(cfg, job_env, gs.Log(cfg, "prolog"))
    assert (folder / "0").read_text() == "77\n"
    gs.epilog(cfg, job_env, gs.Log(cfg, "epilog"))
    assert not [p for p in folder.iterdir() if not p.name.startswith(".")]
    log = (tmp_path / "log").read_text()
    assert "epilog: job 77: no summary:" in log and "epilog: job 77 unmapped from GPU(s) 0,1" in log


def test_the_example_config_is_the_defaults() -> None:
    assert gs.load_config(REPO / "deploy" / "slurm" / "slurm.example.toml") == gs.Config()


def test_epilog_waits_on_the_acked_file_within_its_bound(tmp_path: Path) -> None:
    """An agent that stopped storing (its acked file stays in the past) holds the epilog no longer
    than report_timeout_s; it says it gave up, and the mapping is gone."""
    from gridwatt.demo_harness.influxdb import free_port

    folder, acked = tmp_path / "map", tmp_path / "spool.acked"
    acked.write_text("1000\n")
    cfg = gs.Config(mapping_dir=folder, collector_url=f"http://127.0.0.1:{free_port()}", report_timeout_s=1.0,
                    agent_acked_file=str(acked), log_file=str(tmp_path / "log"))
    gs.prolog(cfg, env("78", "0"), gs.Log(cfg, "prolog"))
    unmapped: list[int] = []

    def unmap() -> None:
        unmapped.append(time.time_ns())
        gs.unmap_job(folder, "78")

    started = time.monotonic()
    with pytest.raises(gs.NoReport, match=r"unreachable: .*; gave up after 1 s$"):
        gs.final_report(cfg, "78", acked, time.time_ns(), started + cfg.report_timeout_s, unmap)
    assert len(unmapped) == 1 and not (folder / "0").exists()
    assert gs.wait_acked(acked, 1000, time.monotonic()) and not gs.wait_acked(acked, 1001, time.monotonic())
