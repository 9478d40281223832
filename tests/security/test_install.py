"""``gridwatt-agent install/uninstall`` into a temporary root, with recording stubs for the tools."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gridwatt.agent.cli import main
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.install import packaged_file
from gridwatt.configfile import load_config
from gridwatt.resources import deploy_file

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "gridwatt-agent.service"
STUBS = ("useradd", "usermod", "userdel", "systemctl")


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH folder of fake useradd/usermod/userdel/systemctl that append their argv to a log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in STUBS:
        script = bin_dir / name
        script.write_text(
            '#!/bin/sh\nprintf "%s" "$(basename "$0")" >> "$STUB_LOG"\n'
            'for a in "$@"; do printf " [%s]" "$a" >> "$STUB_LOG"; done\necho >> "$STUB_LOG"\n'
            'if [ -n "$STUB_FAIL" ] && [ "$(basename "$0")" = "$STUB_FAIL" ]; then\n'
            '  echo "$STUB_FAIL: cannot lock /etc/passwd" >&2; exit 10\nfi\n'
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake system: /dev/nvidia* (mode 660) of group gpu, and /etc/group with video too."""
    r = tmp_path / "root"
    (r / "dev").mkdir(parents=True)
    (r / "etc").mkdir()
    gid = 4242 if os.geteuid() == 0 else os.getgid()  # root can give them any group
    for dev in ("nvidia0", "nvidia1", "nvidiactl"):
        (r / "dev" / dev).touch(mode=0o660)
        if os.geteuid() == 0:
            os.chown(r / "dev" / dev, -1, gid)
    (r / "etc" / "group").write_text(f"root:x:0:\nvideo:x:44:\ngpu:x:{gid}:\n")
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return r


def q(*args: str) -> str:
    return " ".join(f"[{a}]" for a in args)


def test_install_then_uninstall_into_a_root(
    root: Path, stubs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["install", "--root", str(root), "--node", "gpu-node-07", "--collector", "10.0.0.5:50051",
               "--exec", "/opt/venv/bin/gridwatt-agent"])
    assert rc == 0, capsys.readouterr().err
    assert calls(stubs) == [
        "useradd " + q("--prefix", str(root), "--system", "--user-group", "--no-create-home",
                       "--home-dir", "/var/lib/gridwatt", "--shell", "/usr/sbin/nologin",
                       "--comment", "gridwatt GPU energy agent", "--groups", "gpu", "gridwatt"),
        "systemctl " + q(f"--root={root}", "enable", "gridwatt-agent.service"),
    ]
    unit = (root / "etc/systemd/system/gridwatt-agent.service").read_text()
    assert "\nExecStart=/opt/venv/bin/gridwatt-agent run --config /etc/gridwatt/agent.toml\n" in unit
    assert "\nSupplementaryGroups=gpu\n" in unit and "\nType=notify\n" in unit
    assert unit == UNIT.read_text().replace("/opt/gridwatt/bin/", "/opt/venv/bin/").replace(
        "SupplementaryGroups=video", "SupplementaryGroups=gpu")
    config_path = root / "etc/gridwatt/agent.toml"
    config = load_config(config_path, AgentConfig)
    assert (config.node, config.collector.address) == ("gpu-node-07", "10.0.0.5:50051")
    assert config.spool_path == Path("/var/lib/gridwatt/spool.db")
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "var/lib/gridwatt").stat().st_mode) == 0o750

    # a second install keeps the edited config and adds the groups to the now existing user
    config_path.write_text(config_path.read_text().replace("interval_s = 1.0", "interval_s = 5.0"))
    with (root / "etc/passwd").open("a") as fh:
        fh.write("gridwatt:x:999:999::/var/lib/gridwatt:/usr/sbin/nologin\n")
    stubs.unlink()
    assert main(["install", "--root", str(root), "--exec", "/opt/venv/bin/gridwatt-agent"]) == 0
    assert calls(stubs) == [
        "usermod " + q("--prefix", str(root), "--append", "--groups", "gpu", "gridwatt"),
        "systemctl " + q(f"--root={root}", "enable", "gridwatt-agent.service"),
    ]
    assert load_config(config_path, AgentConfig).interval_s == 5.0
    assert "keep the existing" in capsys.readouterr().out

    # uninstall: the spool and config stay; the user install created goes
    (root / "var/lib/gridwatt/spool.db").write_bytes(b"spooled")
    stubs.unlink()
    assert main(["uninstall", "--root", str(root)]) == 0
    assert calls(stubs) == [
        "systemctl " + q(f"--root={root}", "disable", "gridwatt-agent.service"),
        "userdel " + q("--prefix", str(root), "gridwatt"),
    ]
    assert not (root / "etc/systemd/system/gridwatt-agent.service").exists()
    assert (root / "var/lib/gridwatt/spool.db").read_bytes() == b"spooled"
    assert config_path.exists()
    assert not (root / "etc/gridwatt/.agent-install.json").exists()
    out = capsys.readouterr().out
    assert "keep " + str(root / "var/lib/gridwatt") + " (the spool; --purge removes it)" in out


def test_uninstall_purge_removes_spool_and_config(root: Path, stubs: Path) -> None:
    assert main(["install", "--root", str(root), "--exec", "/usr/local/bin/gridwatt-agent"]) == 0
    (root / "var/lib/gridwatt/spool.db").write_bytes(b"spooled")
    assert main(["uninstall", "--root", str(root), "--purge"]) == 0
    assert not (root / "var/lib/gridwatt").exists()
    assert not (root / "etc/gridwatt").exists()
    assert not (root / "etc/systemd/system/gridwatt-agent.service").exists()


def test_user_not_created_by_install_is_kept(root: Path, stubs: Path) -> None:
    with (root / "etc/passwd").open("a") as fh:
        fh.write("gridwatt:x:999:999::/var/lib/gridwatt:/usr/sbin/nologin\n")
    assert main(["install", "--root", str(root), "--exec", "/usr/local/bin/gridwatt-agent"]) == 0
    stubs.unlink()
    assert main(["uninstall", "--root", str(root)]) == 0
    assert [c.split()[0] for c in calls(stubs)] == ["systemctl"]


def test_groups_fall_back_to_video_and_render_when_devices_are_root_owned(root: Path, stubs: Path) -> None:
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\nrender:x:105:\n")
    for dev in (root / "dev").iterdir():
        if os.getuid() == 0:
            os.chown(dev, 0, 0)
        else:
            pytest.skip("needs root to give the fake devices to group root")
    assert main(["install", "--root", str(root), "--exec", "/usr/local/bin/gridwatt-agent"]) == 0
    assert "[--groups] [video,render]" in calls(stubs)[0]
    unit = (root / "etc/systemd/system/gridwatt-agent.service").read_text()
    assert "\nSupplementaryGroups=video render\n" in unit


def test_failing_tool_is_reported_without_traceback(
    root: Path, stubs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STUB_FAIL", "useradd")
    assert main(["install", "--root", str(root), "--exec", "/usr/local/bin/gridwatt-agent"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gridwatt-agent install: `useradd --prefix ")
    assert err.rstrip().endswith("failed (10): useradd: cannot lock /etc/passwd")
    assert "Traceback" not in err
    assert not (root / "etc/systemd/system/gridwatt-agent.service").exists()


def test_dry_run_on_the_live_system_plans_reload_and_enable_now(
    stubs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--dry-run", "--exec", "/opt/gridwatt/bin/gridwatt-agent"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert calls(stubs) == []
    assert "would run: systemctl daemon-reload" in out
    assert "would run: systemctl enable --now gridwatt-agent.service" in out
    assert out.index("would run: systemctl daemon-reload") < out.index(
        "would run: systemctl enable --now gridwatt-agent.service")
    assert main(["uninstall", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would run: systemctl disable --now gridwatt-agent.service"
    assert calls(stubs) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root here")
def test_live_install_needs_root(stubs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install"]) == 1
    assert "install needs root: run it with sudo" in capsys.readouterr().err
    assert calls(stubs) == []


@pytest.mark.parametrize("parts", [("systemd", "gridwatt-agent.service"), ("agent.example.toml",)])
def test_installer_reads_the_deploy_files_themselves(parts: tuple[str, ...]) -> None:
    """One copy: the installer's package data is deploy/ itself (gridwatt.deploy), not a duplicate."""
    assert packaged_file(*parts) == REPO.joinpath("deploy", *parts).read_text()
    assert Path(str(deploy_file(*parts))).resolve() == REPO.joinpath("deploy", *parts).resolve()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_at_most_2() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for gridwatt-agent.service: (\d+\.\d)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= 2.0


def test_world_accessible_devices_need_no_group(root: Path, stubs: Path) -> None:
    """NVIDIA's default: /dev/nvidia* root:root mode 0666."""
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    for dev in (root / "dev").iterdir():
        dev.chmod(0o666)
        if os.geteuid() == 0:
            os.chown(dev, 0, 0)
        else:
            pytest.skip("needs root to give the fake devices to group root")
    assert main(["install", "--root", str(root), "--exec", "/usr/local/bin/gridwatt-agent"]) == 0
    assert "--groups" not in calls(stubs)[0]
    unit = (root / "etc/systemd/system/gridwatt-agent.service").read_text()
    assert "SupplementaryGroups" not in unit and "\nDeviceAllow=char-nvidia* rw\n" in unit
