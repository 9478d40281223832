"""The reusable Slurm test cluster itself: it starts, runs a GPU job, and leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, available

# real Slurm daemons, agents and collectors as processes
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(available()), reason=available())]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_runs_a_gpu_job_and_cleans_up() -> None:
    cluster = SlurmCluster(keep=False)
    with cluster:
        job = cluster.sbatch("#!/bin/sh\necho gpus=$SLURM_JOB_GPUS\n", "--gres=gpu:4")
        info = cluster.wait_done(job)
        assert info["JobState"] == "COMPLETED"
        assert (cluster.base / "jobs" / f"job-{job}.out").read_text() == "gpus=0,1,2,3\n"
        # a job that never ends: stop() must cancel it and end its slurmstepd
        stuck = cluster.sbatch("#!/bin/sh\necho started\nsleep 600\n", "--gres=gpu:1", name="stuck")
        cluster.wait_state(stuck, {"RUNNING"})
        out = cluster.base / "jobs" / f"stuck-{stuck}.out"
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text() == "started\n"):  # its slurmstepd runs the script
            assert time.monotonic() < deadline, "the job's script did not start"
            time.sleep(0.05)
        pids = [p.pid for p in cluster._procs.values()]
        munged = int((cluster.base / "munge" / "munged.pid").read_text())
        stepds = cluster._own_stepds()
        job_processes = cluster._own_processes()
        assert stepds and set(job_processes) > set(stepds)  # the job's shell and its sleep too
    assert not any(_alive(p) for p in [*pids, munged, *job_processes])
    assert not cluster.base.exists()
