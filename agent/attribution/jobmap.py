"""dcgm-exporter HPC job-mapping files: which job(s) a site's prolog put on each GPU.

The same directory that ``dcgm-exporter --hpc-job-mapping-dir DIR`` (or
``DCGM_HPC_JOB_MAPPING_DIR``) reads, in the same format, so a site whose Slurm
prolog/epilog already writes it needs nothing new:

* one regular file per GPU, named by the GPU's index: ``DIR/0``, ``DIR/1``, ...
  (dcgm-exporter also accepts ``<gpu>.<gpu-instance>`` for MIG instances, e.g.
  ``2.0``; gridwatt meters whole GPUs and does not read those);
* each line of the file is one job id running on that GPU;
* no file, or a file with no job ids, means no mapping for that GPU.

Unlike dcgm-exporter, blank lines and surrounding whitespace are ignored (it
would label a metric with an empty job), and a repeated id counts once.
"""

from __future__ import annotations

from pathlib import Path


def mapped_jobs(mapping_dir: Path, gpu_index: int | str) -> list[str]:
    """Job ids mapped to GPU ``gpu_index`` (or a file named by the GPU's UUID), in file order;
    empty when unmapped or unreadable."""
    try:
        text = (mapping_dir / str(gpu_index)).read_text(errors="replace")
    except OSError:  # no file (GPU free), a directory, permission denied, dir missing
        return []
    jobs: list[str] = []
    for line in text.splitlines():
        job = line.strip()
        if job and job not in jobs:
            jobs.append(job)
    return jobs
