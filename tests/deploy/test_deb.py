"""The Debian packages: scripts/build_deb.sh builds them from this tree, lintian finds no error or
warning that is not overridden with its reason, and they install for real into a throwaway root
(tests/deploy/deb_root.sh: a private mount namespace), where `gridwatt-agent --help` and `check`
run as the packages' system user against a real collector, then remove and purge leave nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml

ROOT = Path(__file__).resolve().parents[2]
DEB_ROOT = Path(__file__).resolve().parent / "deb_root.sh"
VERSION = "0.1.0-1"
PACKAGES = ("gridwatt-common", "gridwatt-agent", "gridwatt-collector")
RACKS = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["n1"]\n'

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("dpkg-deb", "dpkg", "unshare", "chroot"))
    or not Path("/usr/bin/python3").exists(),
    reason="needs root, dpkg, unshare, chroot and Debian's /usr/bin/python3",
)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_deb.sh"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert sorted(built) == sorted(PACKAGES)
    yield built


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def deb_files(deb: Path) -> list[str]:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return [line.split(None, 5)[5] for line in listing.splitlines()]


def test_packages_and_their_contents(debs: dict[str, Path]) -> None:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert debs["gridwatt-common"].name == f"gridwatt-common_{VERSION}_{arch}.deb"
    assert debs["gridwatt-agent"].name == f"gridwatt-agent_{VERSION}_all.deb"
    assert deb_field(debs["gridwatt-agent"], "Depends") == f"gridwatt-common (= {VERSION})"
    assert deb_field(debs["gridwatt-collector"], "Depends") == f"gridwatt-common (= {VERSION})"
    assert deb_field(debs["gridwatt-common"], "Depends").startswith("python3.")
    common = deb_files(debs["gridwatt-common"])
    assert "./opt/gridwatt/bin/gridwatt-agent" in common and "./opt/gridwatt/pyvenv.cfg" in common
    assert not [f for f in common if "__pycache__" in f or f.endswith(".pyc")]  # compiled by postinst
    agent = deb_files(debs["gridwatt-agent"])
    assert "./etc/gridwatt/agent.toml" in agent and "./lib/systemd/system/gridwatt-agent.service" in agent
    assert "./usr/bin/gridwatt-agent -> /opt/gridwatt/bin/gridwatt-agent" in agent
    # The build path does not leak into the virtualenv's scripts or config.
    extract = subprocess.run(
        f"dpkg-deb --fsys-tarfile {debs['gridwatt-common']} | tar -xO ./opt/gridwatt/pyvenv.cfg "
        "./opt/gridwatt/bin/gridwatt-agent", shell=True, capture_output=True, text=True, check=True).stdout
    assert "#!/opt/gridwatt/bin/python" in extract and "/tmp/" not in extract and str(ROOT) not in extract


def test_lintian_clean_and_every_override_explained(debs: dict[str, Path]) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (scripts/setup.sh installs it)")
    files = [str(p) for p in debs.values()]
    # --show-overrides lists the overridden tags as "O:" (and makes lintian's exit code count them,
    # so the verdict is read from the lines: no error, no warning that is not overridden).
    shown = subprocess.run(["lintian", "--tag-display-limit", "0", "--show-overrides", *files],
                           capture_output=True, text=True, timeout=900)
    lines = shown.stdout.splitlines()
    assert lines and not [ln for ln in shown.stderr.splitlines() if "running with root" not in ln]
    assert [ln for ln in lines if ln.startswith(("E:", "W:"))] == []
    overridden = {tuple(ln.split()[1:3]) for ln in lines if ln.startswith("O:")}
    assert overridden == {
        ("gridwatt-common:", "dir-or-file-in-opt"),
        ("gridwatt-common:", "unusual-interpreter"),
        ("gridwatt-common:", "script-not-executable"),
        ("gridwatt-common:", "embedded-library"),
        ("gridwatt-common:", "initial-upload-closes-no-bugs"),
        ("gridwatt-agent:", "initial-upload-closes-no-bugs"),
        ("gridwatt-collector:", "initial-upload-closes-no-bugs"),
    }
    # Each override in the packages carries a comment saying why.
    for pkg in PACKAGES:
        text = (ROOT / "deploy" / "debian" / pkg / "lintian-overrides").read_text()
        blocks = [b for b in text.split("\n\n") if b.strip()]
        assert blocks and all(b.lstrip().startswith("#") for b in blocks), pkg


def sections(output: str) -> dict[str, tuple[int, str]]:
    """deb_root.sh's output: step name -> (exit code, output)."""
    found: dict[str, tuple[int, str]] = {}
    for m in re.finditer(r"^=== STEP (\S+)\n(.*?)^=== RC \1 (\d+)$", output, re.S | re.M):
        found[m.group(1)] = (int(m.group(3)), m.group(2))
    return found


async def test_install_check_remove_purge_in_a_throwaway_root(
    debs: dict[str, Path], tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        proc = await asyncio.create_subprocess_exec(
            str(DEB_ROOT), str(c.grpc_port), *map(str, debs.values()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out_b, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    out = out_b.decode()
    assert proc.returncode == 0, out[-4000:]
    s = sections(out)
    assert list(s) == ["install", "installed", "conffiles", "agent-help", "agent-version",
                       "collector-check-config", "check-example", "check-configured", "remove", "removed",
                       "purge", "purged"], out[-4000:]
    assert s["install"][0] == 0, s["install"][1]

    rc, installed = s["installed"]
    for pkg in PACKAGES:
        assert f"{pkg} install ok installed {VERSION}" in installed
    assert "user: gridwatt:/var/lib/gridwatt:/usr/sbin/nologin" in installed
    assert "exists /var/lib/gridwatt gridwatt:gridwatt 750" in installed
    assert "exists /usr/bin/gridwatt-agent root:root 777" in installed  # the symlink
    assert "enabled: \n" in installed  # nothing enabled (nor started) until configured
    assert re.search(r"^gridwatt-agent: /etc/gridwatt/agent.toml [0-9a-f]{32}$", s["conffiles"][1], re.M)
    assert re.search(r"^gridwatt-collector: /etc/gridwatt/collector.toml [0-9a-f]{32}$",
                     s["conffiles"][1], re.M)

    assert s["agent-help"][0] == 0 and "usage: gridwatt-agent" in s["agent-help"][1]
    assert s["agent-version"] == (0, "gridwatt-agent 0.1.0\n")
    assert s["collector-check-config"][0] == 0, s["collector-check-config"][1]

    rc, text = s["check-example"]  # the shipped example on a machine without NVIDIA's driver
    assert rc == 1
    # the example leaves node unset, so the agent takes the host's name
    assert text.splitlines()[0] == f"✓ config /etc/gridwatt/agent.toml: valid (node {socket.gethostname()!r})"
    assert "✗ GPU source nvml: NVML cannot be used" in text and "Traceback" not in text

    rc, text = s["check-configured"]  # configured, run as the gridwatt user against the real collector
    assert rc == 0, text
    lines = text.splitlines()
    assert lines[0] == "✓ config /etc/gridwatt/agent.toml: valid (node 'n1')"
    assert f"✓ collector 127.0.0.1:{c.grpc_port}: reachable, gridwatt 0.1.0" in lines
    assert "✓ node 'n1': known to the collector (rack r1, zone Z)" in lines
    assert lines[-1] == "all checks passed"

    assert s["remove"][0] == 0, s["remove"][1]
    removed = s["removed"][1]
    for pkg in PACKAGES:
        assert f"{pkg} deinstall ok config-files {VERSION}" in removed
    assert "exists /etc/gridwatt/agent.toml" in removed  # the operator's config survives a remove
    for gone in ("/opt/gridwatt", "/usr/bin/gridwatt-agent", "/lib/systemd/system/gridwatt-agent.service"):
        assert f"absent {gone}\n" in removed

    assert s["purge"][0] == 0, s["purge"][1]
    purged = s["purged"][1]
    assert "dpkg-query: no packages found matching gridwatt-*" in purged
    for gone in ("/var/lib/gridwatt", "/etc/gridwatt", "/opt/gridwatt"):
        assert f"absent {gone}\n" in purged
    assert "leftovers: \n" in purged
    # Debian keeps system users on purge; so do these packages (documented in deploy/debian/README.md).
    assert "user: gridwatt:" in purged
