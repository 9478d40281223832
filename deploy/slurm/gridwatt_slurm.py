#!/usr/bin/env python3
"""gridwatt's Slurm prolog and epilog (slurmd ``Prolog=``/``Epilog=``), standard library only.

Prolog (as root, before the job starts on the node):
    adds the job's id to the job-mapping file of each of its GPUs on this node, in the folder the
    gridwatt agent reads (``[attribution] job_mapping_dir``; dcgm-exporter's format: one file per
    GPU named by its index, one job id per line), plus ``.jobs/<job id>.json`` with the job's user,
    account and the id users write for it (``1234_7``, ``1234+1``). A GPU given by UUID (Slurm
    25.11 and later may put UUIDs in ``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES``) gets a file named
    by its UUID; the agent matches it through NVML.
Epilog (as root, after the job ended on the node):
    on the job's batch host, waits (bounded) until the agent's samples past the job's end are
    stored, asks the collector for the job's report, writes a one-line summary
    (``gridwatt: 12.4 kWh, 4.1 kg CO2e, 8 GPUs, mean util 71 %``) into the job's AdminComment and
    appends it to the job's output file as the job's user; then, on every node (always, also when
    anything above failed), removes the job from the mapping files.

Both always exit 0: a failing prolog or epilog would drain the node, and telemetry must never
cost a site a node. Problems are logged (syslog, and ``log_file`` if set) with the reason.

Configuration: the file named by ``GRIDWATT_SLURM_CONFIG`` (slurmd does not pass its own
environment on, so this is for running it by hand), else ``gridwatt-slurm.toml`` next to this
script, else ``/etc/gridwatt/slurm.toml``; see README.md in this folder.
The script picks prolog or epilog from its first argument, else
from ``SLURM_SCRIPT_CONTEXT`` (``prolog_slurmd``/``epilog_slurmd``), else from its own name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import syslog
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/gridwatt/slurm.toml")
JOB_ID = re.compile(r"\d{1,12}")
GPU_INDEX = re.compile(r"\d{1,4}")
GPU_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z-]{8,80}")
#: Job-mapping and job-info files are tiny; anything bigger is not ours and is not read whole.
MAX_FILE_BYTES = 64 * 1024
JOBS_SUBDIR = ".jobs"
LOCK_NAME = ".lock"


class ConfigError(Exception):
    """A bad configuration file or value; the message names the file, field and reason."""


@dataclass
class Config:
    """Settings of the prolog and epilog (README.md lists them)."""

    mapping_dir: Path = Path("/run/gridwatt/job-mapping")
    collector_url: str = "http://127.0.0.1:8080"
    #: The longest the epilog waits for the agent's flush and the collector's report, in total.
    report_timeout_s: float = 5.0
    #: The agent's acked file (agent.toml acked_path; by default its spool_path with ".acked"):
    #: how far the collector has stored what the agent read. The epilog waits on it, so the
    #: final report holds every interval of the job. "" (or an agent that writes none): the
    #: fixed wait below.
    agent_acked_file: str = "/var/lib/gridwatt/spool.acked"
    #: The agent's sampling interval (agent.toml interval_s): without the acked file, the epilog
    #: waits this long (plus 0.5 s) after unmapping for the agent's last attributed interval.
    agent_interval_s: float = 1.0
    #: Each Slurm command (scontrol, sacctmgr) gets at most this long.
    slurm_command_timeout_s: float = 5.0
    summary_to_output: bool = True
    #: Where the summary goes: "auto" (sacctmgr when accounting storage is slurmdbd, else
    #: scontrol), "sacctmgr", "scontrol", or "off".
    admin_comment: str = "auto"
    log_file: str = ""
    scontrol: str = "scontrol"
    sacctmgr: str = "sacctmgr"
    #: Ask slurmctld (one ``scontrol show job``) for the id users write, when the prolog's
    #: environment lacks it: slurmd 22.05 gives a prolog no SLURM_ARRAY_* or SLURM_HET_* variables.
    prolog_asks_slurm: bool = True
    #: Extra environment seen by the Slurm commands (tests point SLURM_CONF here).
    slurm_env: dict[str, str] = field(default_factory=dict)


_FIELDS: dict[str, type] = {
    "mapping_dir": str, "collector_url": str, "report_timeout_s": float, "agent_interval_s": float,
    "agent_acked_file": str,
    "slurm_command_timeout_s": float, "summary_to_output": bool, "admin_comment": str,
    "log_file": str, "scontrol": str, "sacctmgr": str, "slurm_env": dict, "prolog_asks_slurm": bool,
}


def load_config(path: Path) -> Config:
    """The config file's settings over the defaults; a missing file means all defaults."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    cfg = Config()
    for key, value in raw.items():
        want = _FIELDS.get(key)
        if want is None:
            raise ConfigError(f"{path}: field {key}: unknown setting")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path}: field {key}: expected {want.__name__}, got {value!r}")
        setattr(cfg, key, Path(str(value)) if key == "mapping_dir" else value)
    if not 0 < cfg.report_timeout_s <= 120:
        raise ConfigError(f"{path}: field report_timeout_s: must be in (0, 120] s, "
                          f"got {cfg.report_timeout_s}")
    if not 0 < cfg.agent_interval_s <= 60:
        raise ConfigError(f"{path}: field agent_interval_s: must be in (0, 60] s, got {cfg.agent_interval_s}")
    if not 0 < cfg.slurm_command_timeout_s <= 60:
        raise ConfigError(f"{path}: field slurm_command_timeout_s: must be in (0, 60] s, "
                          f"got {cfg.slurm_command_timeout_s}")
    if cfg.admin_comment not in ("auto", "sacctmgr", "scontrol", "off"):
        raise ConfigError(f"{path}: field admin_comment: must be auto, sacctmgr, scontrol or off, "
                          f"got {cfg.admin_comment!r}")
    if urllib.parse.urlsplit(cfg.collector_url).scheme not in ("http", "https"):
        raise ConfigError(f"{path}: field collector_url: must be an http(s) URL, got {cfg.collector_url!r}")
    return cfg


class Log:
    """One line per message to syslog (daemon facility) and, if configured, to a file."""

    def __init__(self, cfg: Config, tag: str) -> None:
        self.file = cfg.log_file
        self.tag = tag
        syslog.openlog("gridwatt-slurm", syslog.LOG_PID, syslog.LOG_DAEMON)

    def __call__(self, message: str, error: bool = False) -> None:
        line = f"{self.tag}: {message}"
        syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, line)
        if self.file:
            with contextlib.suppress(OSError), open(self.file, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


# -- the job, from Slurm's environment -------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    job_id: str
    #: The id users write: "1234_7" for an array task, "1234+1" for a het component; else job_id.
    alias: str
    user: str
    uid: int | None
    account: str
    #: GPUs on this node: index strings ("0") or UUIDs ("GPU-...").
    gpus: tuple[str, ...]
    node: str


def parse_gpus(text: str) -> tuple[str, ...]:
    """GPU names of a Slurm list: ``"0,2-3"`` -> ("0", "2", "3"); UUIDs kept as they are.

    Anything else (a path, ``NoDevFiles``, a reversed range) is left out, so a file name built
    from the result can never leave the mapping folder.
    """
    out: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if GPU_INDEX.fullmatch(item):
            names = [str(int(item))]
        elif GPU_UUID.fullmatch(item):
            names = [item]
        else:
            first, _, last = item.partition("-")
            if not (GPU_INDEX.fullmatch(first) and GPU_INDEX.fullmatch(last) and int(first) <= int(last)):
                continue
            names = [str(i) for i in range(int(first), int(last) + 1)][:1024]
        out += [n for n in names if n not in out]
    return tuple(out)


def job_from_env(env: Mapping[str, str]) -> Job | None:
    """The job this prolog/epilog runs for; None without a valid SLURM_JOB_ID."""
    job_id = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID", ""))
    if not JOB_ID.fullmatch(job_id):
        return None
    alias = job_id
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    het_job, het_offset = env.get("SLURM_HET_JOB_ID", ""), env.get("SLURM_HET_JOB_OFFSET", "")
    if JOB_ID.fullmatch(array_job) and JOB_ID.fullmatch(array_task):
        alias = f"{array_job}_{array_task}"
    elif JOB_ID.fullmatch(het_job) and JOB_ID.fullmatch(het_offset):
        alias = f"{het_job}+{het_offset}"
    gpus: tuple[str, ...] = ()
    for var in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        if env.get(var):
            gpus = parse_gpus(env[var])
            if gpus:
                break
    uid_text = env.get("SLURM_JOB_UID", "")
    return Job(
        job_id=job_id,
        alias=alias,
        user=env.get("SLURM_JOB_USER", "")[:256],
        uid=int(uid_text) if uid_text.isdigit() else None,
        account=env.get("SLURM_JOB_ACCOUNT", "")[:256],
        gpus=gpus,
        node=env.get("SLURMD_NODENAME", ""),
    )


# -- the mapping folder ----------------------------------------------------------------------------
def _check_dir(path: Path) -> None:
    """The folder must be ours (root's, or this user's) and writable by nobody else."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{path} must be owned by uid {os.geteuid()} and not group/world-writable")


def _ensure_dirs(mapping_dir: Path) -> None:
    for d in (mapping_dir, mapping_dir / JOBS_SUBDIR):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o755, parents=d == mapping_dir)
        _check_dir(d)


@contextlib.contextmanager
def _locked(mapping_dir: Path) -> Iterator[None]:
    """An exclusive lock on the folder: prologs and epilogs of jobs sharing a GPU take turns."""
    fd = os.open(mapping_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_small(path: Path) -> str | None:
    """A regular file's text (not following a link), or None when absent or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_FILE_BYTES).decode(errors="replace")
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a new file next to ``path`` (fsynced, final mode) and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _jobs_in(text: str | None) -> list[str]:
    return [] if text is None else [j for j in (line.strip() for line in text.splitlines()) if j]


def map_job(mapping_dir: Path, job: Job) -> list[str]:
    """Add the job to its GPUs' mapping files and write its info file; returns the files written."""
    _ensure_dirs(mapping_dir)
    written = []
    with _locked(mapping_dir):
        info = {"job_id": job.job_id, "alias": job.alias, "user": job.user, "account": job.account}
        write_atomic(mapping_dir / JOBS_SUBDIR / f"{job.job_id}.json", json.dumps(info) + "\n")
        for gpu in job.gpus:
            path = mapping_dir / gpu
            jobs = _jobs_in(_read_small(path))
            if job.job_id not in jobs:
                jobs.append(job.job_id)
            write_atomic(path, "".join(f"{j}\n" for j in jobs))
            written.append(gpu)
    return written


def unmap_job(mapping_dir: Path, job_id: str) -> list[str]:
    """Remove the job from every mapping file (an emptied file is deleted) and its info file."""
    if not mapping_dir.is_dir():
        return []
    _check_dir(mapping_dir)
    changed = []
    with _locked(mapping_dir):
        for entry in os.scandir(mapping_dir):
            if not (GPU_INDEX.fullmatch(entry.name) or GPU_UUID.fullmatch(entry.name)):
                continue
            path = Path(entry.path)
            jobs = _jobs_in(_read_small(path))
            if job_id not in jobs:
                continue
            rest = [j for j in jobs if j != job_id]
            if rest:
                write_atomic(path, "".join(f"{j}\n" for j in rest))
            else:
                os.unlink(path)
            changed.append(entry.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mapping_dir / JOBS_SUBDIR / f"{job_id}.json")
    return changed


# -- Slurm commands --------------------------------------------------------------------------------
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_line(line: str) -> dict[str, str]:
    """One ``scontrol show job -o`` record: Key=Value pairs; a value runs up to the next `` Key=``
    (so a path with spaces survives, unless it holds `` Word=``)."""
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for m, nxt in zip(keys, [*keys[1:], None], strict=True):
        end = nxt.start() if nxt is not None else len(line)
        out.setdefault(m.group(1), line[m.end():end].strip())
    return out


def _run(cfg: Config, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=max(timeout_s, 0.5),
                          env={**os.environ, **cfg.slurm_env}, check=False)


def show_job(cfg: Config, job_id: str, timeout_s: float) -> dict[str, str]:
    res = _run(cfg, [cfg.scontrol, "show", "job", "-o", job_id], timeout_s)
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"scontrol show job {job_id}: {res.stderr.strip() or 'no output'}")
    return parse_scontrol_line(res.stdout.splitlines()[0])


def alias_of(info: Mapping[str, str], job_id: str) -> str:
    """The id users write for a job, from its ``scontrol show job`` record."""
    array_job, array_task = info.get("ArrayJobId", ""), info.get("ArrayTaskId", "")
    if JOB_ID.fullmatch(array_job) and JOB_ID.fullmatch(array_task):
        return f"{array_job}_{array_task}"
    het_job, het_offset = info.get("HetJobId", ""), info.get("HetJobOffset", "")
    if JOB_ID.fullmatch(het_job) and JOB_ID.fullmatch(het_offset):
        return f"{het_job}+{het_offset}"
    return job_id


def accounting_storage(cfg: Config, timeout_s: float) -> str:
    res = _run(cfg, [cfg.scontrol, "show", "config"], timeout_s)
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", res.stdout, re.M)
    return m.group(1) if m else ""


def set_admin_comment(cfg: Config, job: Job, text: str, deadline: float) -> str:
    """Store ``text`` as the job's AdminComment; returns how (or raises with why not).

    Slurm 22.05 refuses ``scontrol update`` for a job that has finished (and in the epilog it has),
    so with slurmdbd the comment goes to the accounting record (``sacctmgr update job``, what
    ``sacct -o AdminComment`` shows), as sites do for job statistics.
    """
    how = cfg.admin_comment
    if how == "auto":
        storage = accounting_storage(cfg, min(cfg.slurm_command_timeout_s, deadline - time.monotonic()))
        how = "sacctmgr" if storage.endswith("slurmdbd") else "scontrol"
    timeout = min(cfg.slurm_command_timeout_s, deadline - time.monotonic())
    if how == "sacctmgr":
        # an array task by its array id: "jobid=<array job id>" alone would change every task
        args = [cfg.sacctmgr, "-i", "update", "job", "where", f"jobid={_sacct_id(job)}",
                "set", f'AdminComment="{text}"']
    else:
        args = [cfg.scontrol, "update", f"jobid={job.job_id}", f"AdminComment={text}"]
    res = _run(cfg, args, timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])}: {res.stderr.strip() or res.stdout.strip()}")
    return how


def _sacct_id(job: Job) -> str:
    return job.alias if "_" in job.alias else job.job_id


# -- the collector ---------------------------------------------------------------------------------
class NoReport(Exception):
    """The collector gave no report in time; the message says why."""


def fetch_report(cfg: Config, job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The job's report, or None when the collector has no samples for it yet (404)."""
    url = f"{cfg.collector_url.rstrip('/')}/v1/jobs/{urllib.parse.quote(job_id, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=max(timeout_s, 0.1)) as resp:
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise NoReport(f"collector {cfg.collector_url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoReport(f"collector {cfg.collector_url} unreachable: {reason}") from None
    try:
        report = json.loads(body)
    except ValueError:
        raise NoReport(f"collector {cfg.collector_url} sent a report that is not JSON") from None
    if not isinstance(report, dict):
        raise NoReport(f"collector {cfg.collector_url} sent a report that is not an object")
    return report


def wait_for_report(cfg: Config, job_id: str, ended_ns: int, deadline: float) -> tuple[dict[str, Any], bool]:
    """Poll until the report covers the job's end (the agent's last interval is stored), or the
    deadline passes: (report, complete). Raises NoReport when there is none at all."""
    report: dict[str, Any] | None = None
    last_error = ""
    while True:
        try:
            report = fetch_report(cfg, job_id, min(1.0, deadline - time.monotonic()))
            last_error = ""
        except NoReport as exc:
            last_error = str(exc)
        if report is not None and int(report.get("end_ns") or 0) >= ended_ns:
            return report, True
        if time.monotonic() + 0.2 >= deadline:
            break
        time.sleep(0.2)
    if report is not None:
        return report, False
    raise NoReport(f"{last_error or f'collector {cfg.collector_url} has no samples of job {job_id}'}; "
                   f"gave up after {cfg.report_timeout_s:g} s")


def read_acked(path: Path) -> int | None:
    """The agent's acked-through time (ns since the epoch; agent/acked.py writes it), or None."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(64)
        value = int(text.strip() or b"x")
    except (OSError, ValueError):
        return None
    return value if 0 <= value < 1 << 63 else None


def wait_acked(path: Path, through_ns: int, deadline: float) -> bool:
    """Poll until the agent's acked file reaches ``through_ns``: everything it read from then on
    is stored. False when the deadline passes first."""
    while True:
        acked = read_acked(path)
        if acked is not None and acked >= through_ns:
            return True
        if time.monotonic() + 0.05 >= deadline:
            return False
        time.sleep(0.05)


def _energy(kwh: float) -> str:
    if kwh >= 1:
        return f"{kwh:.{2 if kwh < 10 else 1 if kwh < 100 else 0}f} kWh"
    wh = kwh * 1000
    return f"{wh:.{3 if wh < 1 else 2 if wh < 10 else 1 if wh < 100 else 0}f} Wh"


def _mass(kg: float) -> str:
    if kg >= 1:
        return f"{kg:.{2 if kg < 10 else 1 if kg < 100 else 0}f} kg CO2e"
    g = kg * 1000
    return f"{g:.{3 if g < 1 else 2 if g < 10 else 1 if g < 100 else 0}f} g CO2e"


def summary_line(report: Mapping[str, Any], complete: bool = True) -> str:
    """``gridwatt: 12.4 kWh, 4.1 kg CO2e, 8 GPUs, mean util 71 %`` (facility energy, as emitted)."""
    gpus = int(report.get("gpu_count") or 0)
    line = (f"gridwatt: {_energy(float(report.get('facility_energy_kwh') or 0.0))}, "
            f"{_mass(float(report.get('co2e_kg') or 0.0))}, {gpus} GPU{'' if gpus == 1 else 's'}, "
            f"mean util {float(report.get('mean_util_pct') or 0.0):.0f} %")
    return line if complete else line + " (so far: the agent's last interval was not in yet)"


# -- the job's output, as its user -----------------------------------------------------------------
def append_as_user(path: str, uid: int, line: str, timeout_s: float) -> None:
    """Append ``line`` to the regular file ``path`` owned by ``uid``, as that user (never as root),
    not following a symbolic link at ``path``. Raises with the reason."""
    user = pwd.getpwuid(uid)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, then open
        code, msg = 0, ""
        try:
            os.close(read_fd)
            os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
            os.setgid(user.pw_gid)
            os.setuid(uid)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            if st.st_uid != uid:
                raise OSError(f"{path} is not owned by {user.pw_name}")
            os.write(fd, (line + "\n").encode())
            os.close(fd)
        except OSError as exc:
            code, msg = 1, str(exc)
        os.write(write_fd, msg.encode()[:500])
        os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise RuntimeError(f"appending to {path} took over {timeout_s:g} s")
            time.sleep(0.02)
        msg = os.read(read_fd, 600).decode(errors="replace")
    finally:
        os.close(read_fd)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"cannot append to {path}: {msg or 'failed'}")


# -- prolog and epilog -----------------------------------------------------------------------------
def prolog(cfg: Config, env: Mapping[str, str], log: Log) -> None:
    job = job_from_env(env)
    if job is None:
        log("no valid SLURM_JOB_ID in the environment; nothing to map", error=True)
        return
    if not job.gpus:
        return
    if job.alias == job.job_id and cfg.prolog_asks_slurm:
        try:
            info = show_job(cfg, job.job_id, cfg.slurm_command_timeout_s)
            job = dataclasses.replace(job, alias=alias_of(info, job.job_id),
                                      account=job.account or info.get("Account", "").replace("(null)", ""))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            log(f"job {job.job_id}: no array/het id from scontrol: {exc}", error=True)
    try:
        files = map_job(cfg.mapping_dir, job)
        log(f"job {job.alias} mapped to GPU(s) {','.join(files)} in {cfg.mapping_dir}")
    except OSError as exc:
        log(f"job {job.alias}: cannot write the job mapping in {cfg.mapping_dir}: {exc}", error=True)


def epilog(cfg: Config, env: Mapping[str, str], log: Log) -> None:
    started_ns = time.time_ns()
    deadline = time.monotonic() + cfg.report_timeout_s
    job = job_from_env(env)
    if job is None:
        log("no valid SLURM_JOB_ID in the environment; nothing to do", error=True)
        return
    unmapped = False

    def unmap() -> None:
        nonlocal unmapped
        if unmapped:
            return
        unmapped = True
        try:
            removed = unmap_job(cfg.mapping_dir, job.job_id)
            if removed:
                log(f"job {job.alias} unmapped from GPU(s) {','.join(removed)}")
        except OSError as exc:
            log(f"job {job.alias}: cannot clean the job mapping in {cfg.mapping_dir}: {exc}", error=True)

    try:
        report_job(cfg, job, started_ns, deadline, log, unmap)
    except Exception as exc:  # a report is a courtesy: it never blocks the clean-up below
        log(f"job {job.alias}: no summary: {exc}", error=True)
    finally:
        unmap()


def final_report(cfg: Config, job_id: str, acked: Path, ended_ns: int, deadline: float,
                 unmap: Callable[[], None]) -> tuple[dict[str, Any], bool]:
    """The job's report once the agent's acked file shows it complete: (report, complete).

    The agent reads a GPU, then looks up its job in the mapping, so: once what it read after the
    job's end is stored, the interval holding the end is stored as the job's; unmap; once what it
    read after the unmapping is stored, no interval of the job is still on its way.
    """
    complete = wait_acked(acked, ended_ns, deadline)
    unmap()
    unmapped_ns = time.time_ns()
    complete = wait_acked(acked, unmapped_ns, deadline) and complete
    gave_up = "" if complete else f"; gave up after {cfg.report_timeout_s:g} s"
    try:
        report = fetch_report(cfg, job_id, max(0.5, deadline - time.monotonic()))
    except NoReport as exc:
        raise NoReport(f"{exc}{gave_up}") from None
    if report is None:
        raise NoReport(f"collector {cfg.collector_url} has no samples of job {job_id}{gave_up}")
    return report, complete


def report_job(cfg: Config, job: Job, ended_ns: int, deadline: float, log: Log,
               unmap: Callable[[], None]) -> None:
    """On the job's batch host only: the summary into AdminComment and the job's output.

    Order: wait until the agent's samples reach the job's end (the mapping still names the job, so
    the interval holding the end is the job's), unmap, wait until what the agent read before the
    unmapping is stored (its acked file; without one, one interval), then fetch the final report.
    """
    if not job.gpus:
        return
    info = show_job(cfg, job.job_id, min(cfg.slurm_command_timeout_s, deadline - time.monotonic()))
    if info.get("BatchHost") != job.node:
        return  # another node of the job reports it (one summary per job)
    if job.alias == job.job_id:  # slurmd 22.05 gives an epilog no SLURM_ARRAY_*/SLURM_HET_* variables
        job = dataclasses.replace(job, alias=alias_of(info, job.job_id))
    acked = Path(cfg.agent_acked_file) if cfg.agent_acked_file else None
    try:
        if acked is not None and read_acked(acked) is not None:
            report, complete = final_report(cfg, job.job_id, acked, ended_ns, deadline, unmap)
            waited = f"waited on {acked}"
        else:  # no acked file: the report's end, then a fixed wait for the last interval
            waited = f"no acked file at {acked}: waited {cfg.agent_interval_s + 0.5:g} s"
            report, complete = wait_for_report(cfg, job.job_id, ended_ns, deadline)
            unmap()
            if complete:
                time.sleep(max(0.0, min(cfg.agent_interval_s + 0.5, deadline - time.monotonic())))
                with contextlib.suppress(NoReport):
                    report = fetch_report(cfg, job.job_id, max(0.5, deadline - time.monotonic())) or report
        line = summary_line(report, complete)
        keys = ("facility_energy_kwh", "co2e_kg", "gpu_count", "mean_util_pct", "it_energy_kwh", "end_ns")
        log(f"job {job.alias}: {line} ({waited}) report {json.dumps({k: report.get(k) for k in keys})}")
    except NoReport as exc:
        unmap()
        line = f"gridwatt: no report yet ({exc}); later: gridwatt job {job.alias}"
        log(f"job {job.alias}: {exc}", error=True)
        report = None
    if report is not None and cfg.admin_comment != "off":
        try:
            how = set_admin_comment(cfg, job, line, deadline + cfg.slurm_command_timeout_s)
            log(f"job {job.alias}: AdminComment set ({how})")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"job {job.alias}: AdminComment not set: {exc}", error=True)
    out = info.get("StdOut", "")
    if cfg.summary_to_output and info.get("BatchFlag") == "1" and out.startswith("/") and job.uid is not None:
        try:
            append_as_user(out, job.uid, line, cfg.slurm_command_timeout_s)
        except (RuntimeError, OSError, KeyError) as exc:
            log(f"job {job.alias}: summary not appended to its output: {exc}", error=True)


def config_file() -> Path:
    """``$GRIDWATT_SLURM_CONFIG``, else ``gridwatt-slurm.toml`` beside this script, else the default."""
    if os.environ.get("GRIDWATT_SLURM_CONFIG"):
        return Path(os.environ["GRIDWATT_SLURM_CONFIG"])
    beside = Path(__file__).resolve().parent / "gridwatt-slurm.toml"
    return beside if beside.exists() else DEFAULT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else os.environ.get("SLURM_SCRIPT_CONTEXT", Path(sys.argv[0]).name)
    what = "prolog" if "prolog" in what else "epilog" if "epilog" in what else what
    if what not in ("prolog", "epilog"):
        print("usage: gridwatt_slurm.py prolog|epilog (or run as Slurm's Prolog/Epilog)", file=sys.stderr)
        return 2
    config_path = config_file()
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        syslog.syslog(syslog.LOG_ERR, f"gridwatt-slurm {what}: {exc}")
        print(f"gridwatt-slurm {what}: {exc}", file=sys.stderr)
        return 0  # a broken config must not drain the node
    log = Log(cfg, what)
    try:
        (prolog if what == "prolog" else epilog)(cfg, os.environ, log)
    except Exception as exc:  # never fail the job or drain the node over telemetry
        log(f"unexpected error: {exc!r}", error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
