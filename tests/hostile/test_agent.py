"""Findings 8, 9 and 10 of issue #8: the agent's shipper is supervised, it does not trust files that
users control, and what it writes is private. Real agent processes against a real collector."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gridwatt.demo_harness.processes import toml_str
from tests.hostile.rig import AttackRig

#: Real collector and agent processes.
pytestmark = pytest.mark.e2e

START = "2022-04-15T05:20:00Z"


def _agent_toml(tmp: Path, address: str, node: str = "n1", extra: str = "", collector: str = "",
                interval_s: float = 60,
                sim: str = "gpus = 4, power_w = 300.0, duration_s = 600, start = \"" + START + "\"") -> Path:
    path = tmp / f"agent-{node}.toml"
    path.write_text(
        f'node = "{node}"\ninterval_s = {interval_s}\n'
        f'spool_path = {toml_str(tmp / "spool" / f"{node}.db")}\n{extra}\n'
        f'[source]\nkind = "sim"\nsim = {{ {sim} }}\n'
        f'[collector]\naddress = "{address}"\nreconnect_max_s = 0.5\n{collector}\n'
    )
    return path


def _run_agent(config: Path, timeout_s: float = 120, env: dict[str, str] | None = None,
               code: str = "") -> subprocess.CompletedProcess[str]:
    prog = code + "\nimport sys\nfrom gridwatt.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", prog, "run", "--config", str(config), "--replay"],
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **(env or {})})


def test_job_mapping_files_users_control_are_not_trusted(make_rig: Callable[..., AttackRig],
                                                         tmp_path: Path) -> None:
    """Finding 9: a FIFO, a symlink to /dev/zero, a symlink to a secret and a huge file in the
    job-mapping folder neither hang, exhaust nor leak; the regular file's job is used."""
    rig = make_rig()
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    os.mkfifo(jobmap / "0")
    (jobmap / "1").symlink_to("/dev/zero")
    secret = tmp_path / "secret"
    secret.write_text("hunter2-secret-token\n")
    (jobmap / "2").symlink_to(secret)
    (jobmap / "3").write_text("job-ok\n")
    (jobmap / "4").write_text("x\n" * 100_000)  # 200 KB: above the size cap
    config = _agent_toml(tmp_path, rig.address, sim="gpus = 5, power_w = 300.0, duration_s = 600, "
                         f'start = "{START}"', extra=f"[attribution]\njob_mapping_dir = {toml_str(jobmap)}\n")
    with rig.good_agent_during("job-mapping-files"):
        done = _run_agent(config)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = rig.query("SELECT count(energy_j) FROM job WHERE node = 'n1' AND job_id = 'job-ok'")
    assert rows["count"] == 10
    unattributed = rig.query("SELECT count(energy_j) FROM job WHERE node = 'n1' AND job_id = 'unattributed'")
    assert unattributed["count"] == 40
    tags = rig.query("SHOW TAG VALUES CARDINALITY FROM job WITH KEY = job_id")
    assert tags["count"] == 2 + 2  # job-ok, unattributed, and the good agent's two jobs
    assert "hunter2" not in str(rig.query("SHOW TAG VALUES FROM job WITH KEY = job_id"))
    for reason in ("symbolic link (not followed)", "not a regular file", "size: "):
        assert reason in done.stderr, done.stderr[-3000:]


def test_spool_and_token_files_are_private(make_rig: Callable[..., AttackRig], tmp_path: Path) -> None:
    """Finding 10: the spool (job ids, users) is 0600 in a 0700 folder whatever the umask; a token
    file readable by every user is refused (or only warned about, if configured so)."""
    rig = make_rig()
    config = _agent_toml(tmp_path, rig.address)
    done = _run_agent(config, code="import os; os.umask(0o022)")
    assert done.returncode == 0, done.stderr[-2000:]
    spool_dir = tmp_path / "spool"
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in spool_dir.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
    assert rig.stored("n1") == (40, 4 * 300.0 * 600)

    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    token.chmod(0o644)
    config = _agent_toml(tmp_path, rig.address, node="n2", collector=f"token_file = {toml_str(token)}\n")
    done = _run_agent(config)
    assert done.returncode == 2
    assert f"collector token: {token} is readable by every user (mode 0644); chmod 600 it" in done.stderr
    assert "t" * 32 not in done.stderr
    config = _agent_toml(tmp_path, rig.address, node="n2",
                         collector=f'token_file = {toml_str(token)}\ntoken_file_mode = "warn"\n')
    done = _run_agent(config)  # auth is off at this collector: the token is simply not needed
    assert done.returncode == 0 and "is readable by every user" in done.stderr


def test_a_dead_shipper_stops_the_agent_with_an_error(tmp_path: Path) -> None:
    """Finding 8: a shipper task that dies unexpectedly ends the agent non-zero (systemd restarts it)
    instead of sampling into a spool nobody ships; WATCHDOG pings stop."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    config = _agent_toml(tmp_path, "127.0.0.1:9", sim="gpus = 2, power_w = 100.0, duration_s = 3600",
                         interval_s=0.2)
    crash = textwrap.dedent("""
        import asyncio
        from gridwatt.agent.shipper import Shipper
        async def broken(self, stop):
            await asyncio.sleep(1.0)
            raise RuntimeError("simulated bug in the shipper")
        Shipper.run = broken
    """)
    prog = crash + "\nimport sys\nfrom gridwatt.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", prog, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": str(notify),
                                                      "WATCHDOG_USEC": "2000000"})
    messages = []
    sock.settimeout(0.1)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except OSError:
            break
    sock.close()
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "the shipper stopped unexpectedly (RuntimeError: simulated bug in the shipper)" in proc.stderr
    assert any("READY=1" in m for m in messages)


