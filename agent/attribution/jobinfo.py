"""What a Slurm prolog tells about a mapped job: ``<job_mapping_dir>/.jobs/<job id>.json``.

gridwatt's prolog (``deploy/slurm/gridwatt_slurm.py``) writes, next to the dcgm-exporter style
mapping files, one small JSON object per job::

    {"job_id": "1241", "alias": "1234_7", "user": "alice", "account": "physics"}

``alias`` is the id people write for the job (an array task ``1234_7``, a heterogeneous
component ``1234+1``); ``job_id`` is Slurm's raw id, the one in the mapping files. The agent
sends user, account and alias with each share of the job, so the collector can name the user and
account in alerts and find a job by its alias. The file is optional: without it those stay empty.
It is read at most once per job and cached while the job stays mapped; a file that is too big,
not JSON, or not a regular file counts as absent.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

JOBS_SUBDIR = ".jobs"
MAX_INFO_BYTES = 4096
MAX_FIELD_CHARS = 256
_JOB_ID = re.compile(r"\d{1,12}")
_ALIAS = re.compile(r"\d{1,12}[_+]\d{1,12}")
#: Names of mapping files that are GPU UUIDs (Slurm 25.11+ may give UUIDs instead of indices).
GPU_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z-]{8,80}")


@dataclass(frozen=True, slots=True)
class JobInfo:
    """User, account and alias of a mapped job ("" where unknown)."""

    user: str = ""
    account: str = ""
    alias: str = ""


NO_INFO = JobInfo()


def read_job_info(mapping_dir: Path, job_id: str) -> JobInfo:
    """The job's info file, or NO_INFO when there is none or it cannot be used."""
    if not _JOB_ID.fullmatch(job_id):
        return NO_INFO
    try:
        path = mapping_dir / JOBS_SUBDIR / f"{job_id}.json"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return NO_INFO
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return NO_INFO
        raw = os.read(fd, MAX_INFO_BYTES + 1)
    except OSError:
        return NO_INFO
    finally:
        os.close(fd)
    if len(raw) > MAX_INFO_BYTES:
        return NO_INFO
    try:
        obj = json.loads(raw)
    except ValueError:
        return NO_INFO
    if not isinstance(obj, dict) or obj.get("job_id") != job_id:
        return NO_INFO

    def text(key: str) -> str:
        value = obj.get(key, "")
        return value[:MAX_FIELD_CHARS] if isinstance(value, str) and value.isprintable() else ""

    alias = text("alias")
    if not _ALIAS.fullmatch(alias) or alias == job_id:
        alias = ""
    return JobInfo(text("user"), text("account"), alias)


class JobInfoCache:
    """Job info by job id, read once per job; at most ``max_jobs`` kept (then it starts afresh)."""

    def __init__(self, mapping_dir: Path, max_jobs: int = 1024) -> None:
        self.mapping_dir = mapping_dir
        self.max_jobs = max_jobs
        self._cache: dict[str, JobInfo] = {}

    def get(self, job_id: str) -> JobInfo:
        info = self._cache.get(job_id)
        if info is None:
            info = read_job_info(self.mapping_dir, job_id)
            if info is not NO_INFO:  # absent now, maybe written a moment later: look again next time
                if len(self._cache) >= self.max_jobs:
                    self._cache.clear()
                self._cache[job_id] = info
        return info
