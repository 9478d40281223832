"""A real one-node Slurm cluster for tests: Debian's slurm-wlm 22.05 and munge, without systemd.

    with SlurmCluster(prolog=..., epilog=...) as cluster:
        job = cluster.sbatch("#!/bin/sh\\nsleep 1\\n", "--gres=gpu:2")
        info = cluster.wait_done(job)          # scontrol show job, as a dict
        assert info["JobState"] == "COMPLETED"

What it starts, all in one temporary folder (its own, under /tmp: munged wants every folder above
its socket traversable by all, which pytest's ``tmp_path`` is not) and on free 127.0.0.1 ports:

* ``munged`` with a fresh random key and its own socket (``AuthInfo=socket=...``), so it never
  touches a site's ``/etc/munge``;
* ``slurmctld -D`` and ``slurmd -D -N <node>`` (foreground daemons, no systemd), with
  ``proctrack/linuxproc`` and ``task/none`` (no cgroups needed), ``select/cons_tres`` so jobs
  share the node, and a ``gpu`` GRES of ``gpus`` fake device files (``File=`` entries);
* with ``accounting=True``: a MariaDB server (``mariadbd``, fresh data folder, own socket and
  port) and ``slurmdbd -D``, so ``sacct`` works, jobs carry an account (``accounts`` maps each user
  to the default account made for it with ``sacctmgr``) and ``sacctmgr update job ...`` can set
  a finished job's ``AdminComment`` (Slurm 22.05 refuses ``scontrol update`` on finished jobs);
* ``SlurmUser``/``SlurmdUser``: the user running the tests (root in the sandbox and in CI; the
  daemons then run as root, as slurmd always does). Jobs may be submitted for another user with
  ``sbatch(..., user="nobody")`` when running as root.

Clients (``sbatch``, ``scontrol``...) find the cluster through ``SLURM_CONF``: use
``cluster.env`` or ``cluster.run(...)``. ``stop()`` cancels every job, ends the daemons and any
``slurmstepd`` and job process of this cluster (found by their ``SLURM_CONF``), stops munged and removes
the folder (``keep=True``, or ``GRIDWATT_KEEP_SLURM=1``, keeps it, e.g. to read the logs).
Everything is skipped (``available()``) when the Slurm or munge binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gridwatt.demo_harness.influxdb import free_port

SLURMCTLD = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
SLURMD = shutil.which("slurmd") or "/usr/sbin/slurmd"
SLURMDBD = shutil.which("slurmdbd") or "/usr/sbin/slurmdbd"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
MUNGED = shutil.which("munged") or "/usr/sbin/munged"
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
}


def available(accounting: bool = False) -> str:
    """'' when a test cluster can start here, else why not."""
    needed = [SLURMCTLD, SLURMD, MUNGED] + ([SLURMDBD, MARIADBD, MARIADB_INSTALL_DB] if accounting else [])
    for binary in needed:
        if not os.access(binary, os.X_OK):
            return (f"{binary} is missing (apt-get install slurm-wlm munge slurmdbd mariadb-server; "
                    "scripts/setup.sh does)")
    for client in ("sbatch", "scontrol", "scancel"):
        if shutil.which(client) is None:
            return f"{client} is missing (Debian package slurm-client)"
    return ""


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output (one line of Key=Value) as a dict.

    Values may hold spaces only in the last fields Slurm prints that way (``Command``,
    ``WorkDir``, ``StdOut`` ... paths with spaces are not used in tests).
    """
    out: dict[str, str] = {}
    for m in re.finditer(r"(\S+?)=(\S*)", text):
        out.setdefault(m.group(1), m.group(2))
    return out


class SlurmCluster:
    """See the module docstring."""

    def __init__(
        self,
        *,
        node: str = "gw1",
        gpus: int = 4,
        cpus: int = 8,
        prolog: Path | None = None,
        epilog: Path | None = None,
        extra_conf: str = "",
        env: dict[str, str] | None = None,
        keep: bool | None = None,
        accounting: bool = False,
        accounts: dict[str, str] | None = None,
    ) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="gridwatt-slurm-"))
        self.keep = keep if keep is not None else os.environ.get("GRIDWATT_KEEP_SLURM") == "1"
        self.accounting = accounting
        self.accounts = accounts or {_current_user(): "ops"}
        self.node = node
        self.gpus = gpus
        self.cpus = cpus
        self.prolog = prolog
        self.epilog = epilog
        self.extra_conf = extra_conf
        self.daemon_env = env or {}
        self.conf = self.base / "etc" / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.sock"
        self.device_files = [self.base / "dev" / f"nvidia{i}" for i in range(gpus)]
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}

    # -- set-up -------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment for client commands (sbatch, scontrol...)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_files(self) -> None:
        b = self.base
        for sub in ("etc", "state", "spool", "log", "run", "dev", "munge", "munge-key", "jobs"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        # munged insists on a socket folder everyone can traverse and a key only it can read.
        b.chmod(0o755)
        (b / "munge").chmod(0o755)
        (b / "munge-key").chmod(0o700)
        (b / "jobs").chmod(0o1777)  # job output of any user (sticky, like /tmp)
        key = b / "munge-key" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(1024))
        for dev in self.device_files:  # Slurm wants character devices: make them like /dev/null (1, 3)
            os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        user = _current_user()
        host = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port = free_port(), free_port()
        lines = [
            "ClusterName=gwtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool' / '%n'}",
            f"SlurmctldPidFile={b / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            *self._accounting_lines(),
            "JobCompType=jobcomp/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",  # heterogeneous jobs need it
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MinJobAge=600",
            "KillWait=5",
            "MessageTimeout=10",
            "PrologEpilogTimeout=60",  # a prolog or epilog running longer drains the node
            "GresTypes=gpu",
            f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} "
            f"RealMemory=1000 Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=gpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        if self.prolog is not None:
            lines.append(f"Prolog={self.prolog}")
        if self.epilog is not None:
            lines.append(f"Epilog={self.epilog}")
        self.conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        last = self.gpus - 1
        gres = f"AutoDetect=off\nNodeName={self.node} Name=gpu File={b / 'dev'}/nvidia[0-{last}]\n"
        (b / "etc" / "gres.conf").write_text(gres)

    def _accounting_lines(self) -> list[str]:
        if not self.accounting:
            return ["AccountingStorageType=accounting_storage/none"]
        self.dbd_port = free_port()
        return [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.dbd_port}",
            f"AccountingStoragePass={self.munge_socket}",  # for slurmdbd: the munge socket
            "AccountingStorageEnforce=associations",
        ]

    def _start_accounting(self, deadline: float) -> None:
        """MariaDB, slurmdbd, and the cluster, accounts and users in it."""
        b = self.base
        db = b / "mariadb"
        db.mkdir(mode=0o755)
        subprocess.run(
            [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={db / 'data'}", "--skip-test-db",
             "--auth-root-authentication-method=normal", f"--user={_current_user()}"],
            check=True, capture_output=True, timeout=120,
        )
        db_port = free_port()
        self._spawn("mariadbd", [
            MARIADBD, "--no-defaults", f"--datadir={db / 'data'}", f"--socket={db / 'mysql.sock'}",
            f"--port={db_port}", "--bind-address=127.0.0.1", f"--user={_current_user()}",
            f"--pid-file={db / 'mariadbd.pid'}", "--skip-name-resolve", "--innodb-buffer-pool-size=16M",
        ], dict(os.environ))
        conf = b / "etc" / "slurmdbd.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # slurmdbd insists on 0600
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join([
                "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
                "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={self.dbd_port}",
                f"SlurmUser={_current_user()}", f"PidFile={b / 'run' / 'slurmdbd.pid'}",
                f"LogFile={b / 'log' / 'slurmdbd.log'}", "DebugLevel=info",
                "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1",
                f"StoragePort={db_port}", "StorageUser=root", "StorageLoc=slurm_acct_db",
            ]) + "\n")
        self._wait_port(db_port, deadline, "mariadbd")
        self._spawn("slurmdbd", [SLURMDBD, "-D"], {**self.env, "SLURM_CONF": str(self.conf)})
        self._wait_port(self.dbd_port, deadline, "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", "gwtest")
        for user, account in sorted(self.accounts.items()):
            self.run("sacctmgr", "-i", "add", "account", account, "Cluster=gwtest", check=False)
            self.run("sacctmgr", "-i", "add", "user", user, f"Account={account}", f"DefaultAccount={account}")

    def _wait_port(self, port: int, deadline: float, name: str) -> None:
        while time.monotonic() < deadline:
            if self._procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self._procs[name].returncode}:\n{self.log_tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not listen on port {port} in time:\n{self.log_tail()}")

    def start(self, timeout_s: float = 30.0) -> SlurmCluster:
        """Start munged (and the accounting), slurmctld and slurmd; return once the node is idle."""
        deadline = time.monotonic() + timeout_s
        self._write_files()
        b = self.base
        munge_log = b / "log" / "munged.log"
        subprocess.run(
            [MUNGED, f"--key-file={b / 'munge-key' / 'munge.key'}", f"--socket={self.munge_socket}",
             f"--pid-file={b / 'munge' / 'munged.pid'}", f"--seed-file={b / 'munge-key' / 'seed'}",
             f"--log-file={munge_log}"],
            check=True, capture_output=True, timeout=30,
        )
        if self.accounting:
            self._start_accounting(deadline)
        daemon_env = {**self.env, **self.daemon_env}
        self._spawn("slurmctld", [SLURMCTLD, "-D", "-c", "-i", "-f", str(self.conf)], daemon_env)
        self._spawn("slurmd", [SLURMD, "-D", "-N", self.node, "-f", str(self.conf)], daemon_env)
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail()}")
            res = subprocess.run(["scontrol", "show", "node", self.node, "-o"], env=self.env,
                                 capture_output=True, text=True, timeout=30)
            state = parse_scontrol(res.stdout).get("State", "")
            if res.returncode == 0 and state.startswith("IDLE"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"node {self.node} not idle after {timeout_s} s (state {state!r}):\n"
                           f"{self.log_tail()}")

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = self.base / "log" / f"{name}.out"
        self._logs[name] = log
        with log.open("ab") as fh:
            self._procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, chars: int = 3000) -> str:
        """The ends of the daemons' logs, for error messages."""
        out = []
        for path in sorted((self.base / "log").glob("*")):
            text = path.read_text(errors="replace")
            out.append(f"--- {path.name}\n{text[-chars:]}")
        return "\n".join(out)

    # -- use ----------------------------------------------------------------------------------
    def run(
        self, *args: str, check: bool = True, timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        res = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def sbatch(self, script: str, *args: str, user: str | None = None, name: str = "job") -> str:
        """Submit a batch script (text); its output goes to jobs/<name>-%j.out. Returns the job id
        as sbatch prints it (``1234`` or, for an array, the array's job id)."""
        path = self.base / "jobs" / f"{name}.sh"
        path.write_text(script)
        path.chmod(0o755)
        cmd = ["sbatch", "--parsable", f"--chdir={self.base / 'jobs'}",
               f"--output={self.base / 'jobs' / (name + '-%j.out')}"]
        if user is not None:
            cmd.append(f"--uid={user}")
        res = self.run(*cmd, *args, str(path))
        return res.stdout.strip().split(";")[0]

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o JOB`` as a dict (the first record)."""
        res = self.run("scontrol", "show", "job", "-o", "-d", job_id)
        return parse_scontrol(res.stdout.splitlines()[0])

    def show_jobs(self, job_id: str) -> list[dict[str, str]]:
        """Every record of ``scontrol show job -o JOB`` (array tasks, het components)."""
        res = self.run("scontrol", "show", "job", "-o", "-d", job_id)
        return [parse_scontrol(line) for line in res.stdout.splitlines() if line.strip()]

    def wait_state(self, job_id: str, states: set[str], timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until every record of the job is in one of ``states``; returns the first record."""
        deadline = time.monotonic() + timeout_s
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.show_jobs(job_id)
            if records and all(r.get("JobState") in states for r in records):
                return records[0]
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {sorted(states)} after {timeout_s} s: "
                             f"{[r.get('JobState') for r in records]}\n{self.log_tail()}")

    def wait_done(self, job_id: str, timeout_s: float = 90.0) -> dict[str, str]:
        """Wait until the job (every task) has ended and its epilog finished (not COMPLETING)."""
        deadline = time.monotonic() + timeout_s
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.show_jobs(job_id)
            if records and all(r.get("JobState") in TERMINAL_STATES for r in records):
                node = parse_scontrol(self.run("scontrol", "show", "node", self.node, "-o").stdout)
                if "COMPLETING" not in node.get("State", "") or not self._completing(job_id):
                    return records[0]
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not done after {timeout_s} s: "
                             f"{[r.get('JobState') for r in records]}\n{self.log_tail()}")

    def _completing(self, job_id: str) -> bool:
        res = self.run("squeue", "-h", "-t", "CG", "-o", "%i", check=False)
        ids = res.stdout.split()
        return any(i == job_id or i.startswith(job_id + "_") for i in ids)

    # -- tear-down ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel all jobs, stop the daemons and this cluster's slurmstepds, stop munged."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            for user in sorted({_current_user(), *self.accounts}):
                subprocess.run(["scancel", "--full", "--user", user], env=self.env,
                               capture_output=True, timeout=30, check=False)
            deadline = time.monotonic() + 15  # let slurmstepd end the jobs' processes itself
            while self._own_processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd"):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        ended = self._own_processes()  # what is left: slurmstepds and job processes
        for pid in ended:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pid_file = self.base / "munge" / "munged.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                munged = int(pid_file.read_text().strip())
                os.kill(munged, signal.SIGTERM)
                ended.append(munged)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def _own_stepds(self) -> list[int]:
        """This cluster's slurmstepd processes."""
        return [pid for pid in self._own_processes() if _comm(pid) == "slurmstepd"]

    def _own_processes(self) -> list[int]:
        """Processes of this cluster's jobs (slurmstepd, the job's script and its children), found by
        their environment's SLURM_CONF; the daemons this object started are not included."""
        mine = f"SLURM_CONF={self.conf}".encode()
        daemons = {p.pid for p in self._procs.values()}
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemons or int(entry.name) == os.getpid():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in env and _running(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
