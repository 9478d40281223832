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

The folder may be writable by users, so a file is trusted only when it is safe to read:
it is opened without following a symlink and without blocking (a FIFO never hangs the
agent), must be a regular file of at most ``MAX_FILE_BYTES``, and must belong to root or
to the agent's own user. Anything else is ignored with one warning per file and reason.
Lines that are not valid job ids (gridwatt/names.py), and ids beyond ``MAX_JOBS_PER_GPU``,
are skipped the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from gridwatt.names import name_problem

log = logging.getLogger("gridwatt.agent.attribution")

MAX_FILE_BYTES = 64 * 1024
MAX_JOBS_PER_GPU = 16
_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, reason: str) -> None:
    key = (str(path), reason.split(":")[0])
    if key not in _warned and len(_warned) < 10_000:
        _warned.add(key)
        log.warning("job-mapping file %s ignored: %s", path, reason)


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def read_mapping_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The text of a job-mapping file, or None when absent or not safe to trust (logged once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _warn_once(path, "symbolic link (not followed)")
        elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            _warn_once(path, f"cannot open: {exc.strerror}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _warn_once(path, "not a regular file")
            return None
        if st.st_uid not in _trusted_owners():
            _warn_once(path, f"owned by uid {st.st_uid}, not by root or the agent's user")
            return None
        if st.st_size > max_bytes:
            _warn_once(path, f"size: {st.st_size} bytes, above the {max_bytes} allowed")
            return None
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:
            _warn_once(path, f"size: above the {max_bytes} bytes allowed")
            return None
        return data.decode(errors="replace")
    except OSError as exc:
        _warn_once(path, f"cannot read: {exc.strerror}")
        return None
    finally:
        os.close(fd)


def mapped_jobs(mapping_dir: Path, gpu_index: int | str) -> list[str]:
    """Job ids mapped to GPU ``gpu_index`` (or a file named by the GPU's UUID), in file order;
    empty when unmapped or not trusted."""
    path = mapping_dir / str(gpu_index)
    text = read_mapping_file(path)
    if text is None:
        return []
    jobs: list[str] = []
    for line in text.splitlines():
        job = line.strip()
        if not job or job in jobs:
            continue
        problem = name_problem(job)
        if problem:
            _warn_once(path, f"job id: {problem}")
            continue
        if len(jobs) >= MAX_JOBS_PER_GPU:
            _warn_once(path, f"jobs: more than {MAX_JOBS_PER_GPU} job ids; the rest are ignored")
            break
        jobs.append(job)
    return jobs
