"""HostSampler: psutil fields on a fixture /proc, RAPL on a fixture powercap tree, wrap arithmetic."""

from __future__ import annotations

import itertools
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from gridwatt.agent.sources.host import HostReading, HostSampler, rapl_delta_uj

MAX_UJ = 262_143_328_850  # a real max_energy_range_uj (Intel Xeon)

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         2000000 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
Cached:          5000000 kB
SwapCached:            0 kB
Active:          6000000 kB
Inactive:        4000000 kB
Shmem:            200000 kB
Slab:             300000 kB
SReclaimable:     200000 kB
"""


def write_stat(proc: Path, user: int, system: int, idle: int, iowait: int, guest: int = 0) -> None:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (in clock ticks)
    proc.joinpath("stat").write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 {guest} 0\n")


def make_zone(root: Path, zone: str, name: str, energy_uj: int | None, max_uj: int = MAX_UJ) -> Path:
    d = root / zone
    d.mkdir()
    (d / "name").write_text(name + "\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    if energy_uj is not None:
        (d / "energy_uj").write_text(f"{energy_uj}\n")
    return d


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)  # restored after the test
    p = tmp_path / "proc"
    p.mkdir()
    p.joinpath("meminfo").write_text(MEMINFO)
    write_stat(p, user=1000, system=500, idle=8000, iowait=500)
    return p


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    root = tmp_path / "powercap"
    root.mkdir()
    return root


def sampler(proc: Path, powercap: Path) -> HostSampler:
    clock = itertools.count(1_000_000_000, 1_000_000_000)
    return HostSampler(proc_root=proc, powercap_root=powercap, clock_ns=lambda: next(clock))


@pytest.mark.parametrize(
    ("prev", "cur", "max_range", "expected"),
    [
        (1_000, 4_500, MAX_UJ, 3_500),
        (MAX_UJ - 1_000, 2_500, MAX_UJ, 3_500),  # wrapped: 1_000 to the top, 2_500 after
        (262_143_000_000, 328_850, MAX_UJ, 657_700),
        (5_000, 5_000, MAX_UJ, 0),
        (5_000, 100, None, 0),  # backwards with no range: new baseline, never negative
        (2 * MAX_UJ - 300, 120, MAX_UJ, 420),  # sum of two packages, both wrapped: 300 + 120
    ],
)
def test_rapl_delta_uj(prev: int, cur: int, max_range: int | None, expected: int) -> None:
    assert rapl_delta_uj(prev, cur, max_range) == expected


def test_psutil_fields_from_proc(proc: Path, powercap: Path) -> None:
    s = sampler(proc, powercap)
    # ticks since construction: busy 300+100 = 400, idle 1400 + iowait 200 -> 400 / 2000 = 20 %
    write_stat(proc, user=1300, system=600, idle=9400, iowait=700)
    r = s.read()
    assert r.t_ns == 1_000_000_000
    assert r.cpu_util_pct == pytest.approx(20.0, abs=1e-9)
    assert r.mem_total_bytes == 16_000_000 * 1024
    assert r.mem_used_bytes == (16_000_000 - 12_000_000) * 1024  # total - available, like free(1)
    # guest time is counted inside user time, so it is not added to the total again
    write_stat(proc, user=1900, system=600, idle=9800, iowait=700, guest=500)
    assert s.read().cpu_util_pct == pytest.approx(60.0, abs=1e-9)  # 600 / (600 + 400)
    assert s.read().cpu_util_pct is None  # no CPU time passed


def test_real_host_fields_present(powercap: Path) -> None:
    r = HostSampler(powercap_root=powercap).read()
    assert r.mem_total_bytes == psutil.virtual_memory().total
    assert 0 < r.mem_used_bytes <= r.mem_total_bytes
    assert r.cpu_util_pct is None or 0.0 <= r.cpu_util_pct <= 100.0
    assert r.cpu_energy_uj is None and r.cpu_energy_max_uj is None  # empty powercap tree


def test_rapl_sums_packages_and_skips_subzones(proc: Path, powercap: Path) -> None:
    p0 = make_zone(powercap, "intel-rapl:0", "package-0", 1_000_000)
    p1 = make_zone(powercap, "intel-rapl:1", "package-1", 2_000_000)
    make_zone(powercap, "intel-rapl:0:0", "core", 700_000)
    make_zone(powercap, "intel-rapl:0:1", "dram", 300_000)
    make_zone(powercap, "intel-rapl:2", "psys", 9_000_000)
    make_zone(powercap, "intel-rapl-mmio:0", "package-0", 1_000_000)
    (powercap / "intel-rapl").mkdir()  # the control type itself
    s = sampler(proc, powercap)
    assert [z.name for z in s.rapl_zones] == ["intel-rapl:0", "intel-rapl:1"]

    r1 = s.read()
    assert (r1.cpu_energy_uj, r1.cpu_energy_max_uj) == (3_000_000, MAX_UJ)

    # package 0 wraps: 1_000 µJ to the top, then 4_000; package 1 gains 6_000
    (p0 / "energy_uj").write_text(f"{MAX_UJ - 1_000}\n")
    (p1 / "energy_uj").write_text("2006000\n")
    r2 = s.read()
    (p0 / "energy_uj").write_text("4000\n")
    (p1 / "energy_uj").write_text("2012000\n")
    r3 = s.read()
    assert r2.cpu_energy_uj == MAX_UJ - 1_000 + 2_006_000
    assert r3.cpu_energy_uj == 2_016_000
    assert rapl_delta_uj(r2.cpu_energy_uj, r3.cpu_energy_uj, r3.cpu_energy_max_uj) == 5_000 + 6_000


def test_two_packages_wrapping_in_one_interval(proc: Path, powercap: Path) -> None:
    p0 = make_zone(powercap, "intel-rapl:0", "package-0", MAX_UJ - 100)
    p1 = make_zone(powercap, "intel-rapl:1", "package-1", MAX_UJ - 200)
    s = sampler(proc, powercap)
    r1 = s.read()
    (p0 / "energy_uj").write_text("50\n")
    (p1 / "energy_uj").write_text("70\n")
    r2 = s.read()
    assert r1.cpu_energy_uj is not None and r2.cpu_energy_uj == 120
    assert rapl_delta_uj(r1.cpu_energy_uj, r2.cpu_energy_uj, r2.cpu_energy_max_uj) == (100 + 50) + (200 + 70)


def test_packages_with_different_ranges_give_no_max(proc: Path, powercap: Path) -> None:
    make_zone(powercap, "intel-rapl:0", "package-0", 10, max_uj=MAX_UJ)
    make_zone(powercap, "intel-rapl:1", "package-1", 20, max_uj=65_532_610_987)
    r = sampler(proc, powercap).read()
    assert (r.cpu_energy_uj, r.cpu_energy_max_uj) == (30, None)


def test_unreadable_rapl_is_none(proc: Path, powercap: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_zone(powercap, "intel-rapl:0", "package-0", None)  # energy_uj missing
    s = sampler(proc, powercap)
    for _ in range(3):
        r = s.read()
        assert r.cpu_energy_uj is None and r.cpu_energy_max_uj is None
    assert len([x for x in caplog.records if "cannot read RAPL" in x.getMessage()]) == 1


def test_permission_denied_rapl_is_none(proc: Path, powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_zone(powercap, "intel-rapl:0", "package-0", 123)
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":  # root-only since Linux 5.10 (PLATYPUS, CVE-2020-8694)
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    r = sampler(proc, powercap).read()
    assert (r.cpu_energy_uj, r.cpu_energy_max_uj) == (None, None)
    assert r.mem_total_bytes == 16_000_000 * 1024


def test_missing_powercap_root(proc: Path, tmp_path: Path) -> None:
    r = sampler(proc, tmp_path / "absent").read()
    assert isinstance(r, HostReading) and r.cpu_energy_uj is None
