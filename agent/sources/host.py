"""Host sampler: CPU utilisation and memory (psutil) and CPU package energy (Linux RAPL powercap).

RAPL: ``<powercap_root>/intel-rapl:N/energy_uj`` is a per-package counter in µJ that wraps at
``max_energy_range_uj``. Sub-zones (``intel-rapl:N:M``: core, uncore, dram) lie inside their
package and are left out, as are ``psys`` zones (the whole platform, packages included) and
``intel-rapl-mmio:N`` (a second view of a package), so nothing is counted twice. Since
Linux 5.10 ``energy_uj`` is readable by root only; unreadable RAPL gives None, never an error.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")


@dataclass(frozen=True, slots=True)
class HostReading:
    """The host at one instant."""

    t_ns: int
    #: Busy share of all CPUs since the previous read (the first read: since construction).
    #: Units: percent 0-100. None when no CPU time passed in between.
    cpu_util_pct: float | None
    mem_used_bytes: int
    mem_total_bytes: int
    #: Sum of the RAPL package counters. Units: µJ. None where RAPL is absent or unreadable.
    cpu_energy_uj: int | None
    #: Wrap range of each package counter (max_energy_range_uj, the same for all packages).
    #: Units: µJ. None where unknown or where the packages differ (then wraps are not undone).
    cpu_energy_max_uj: int | None


def rapl_delta_uj(prev_uj: int, cur_uj: int, max_range_uj: int | None) -> int:
    """Energy between two readings of a RAPL counter that wraps at max_range_uj. Units: µJ.

    A value below the previous one means a wrap: the delta is (cur - prev) mod max_range,
    i.e. (max_range - prev) + cur for one counter. The same holds for the sum of several
    packages sharing one range, however many of them wrapped, as long as less than
    max_range (about 262 kJ on Intel servers) was used in the interval. Without a range the
    result is 0 (a new baseline); it is never negative.
    """
    if cur_uj >= prev_uj:
        return cur_uj - prev_uj
    if max_range_uj is None or max_range_uj <= 0:
        return 0
    return (cur_uj - prev_uj) % max_range_uj


@dataclass(frozen=True, slots=True)
class _Zone:
    path: Path
    max_range_uj: int


class HostSampler:
    """Samples CPU utilisation, memory and RAPL package energy of this host.

    ``proc_root`` other than /proc (e.g. the host's /proc mounted into a container) is handed
    to psutil through ``psutil.PROCFS_PATH``, which is process-wide in psutil.
    """

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        powercap_root: Path = Path("/sys/class/powercap"),
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if Path(proc_root) != Path(psutil.PROCFS_PATH):
            psutil.PROCFS_PATH = str(proc_root)
        self._clock_ns = clock_ns
        self._powercap_root = Path(powercap_root)
        self._zones = self._find_zones()
        ranges = sorted({z.max_range_uj for z in self._zones})
        self._max_range_uj = ranges[0] if len(ranges) == 1 else None
        if len(ranges) > 1:
            log.warning("RAPL packages have different max_energy_range_uj; counter wraps not undone")
        self._rapl_warned = False
        self._prev_busy_s, self._prev_total_s = _cpu_busy_total_s()

    def read(self) -> HostReading:
        """Sample the host now."""
        t_ns = self._clock_ns()
        busy_s, total_s = _cpu_busy_total_s()
        d_total = total_s - self._prev_total_s
        d_busy = busy_s - self._prev_busy_s
        self._prev_busy_s, self._prev_total_s = busy_s, total_s
        util = None if d_total <= 0 else min(100.0, max(0.0, 100.0 * d_busy / d_total))
        mem = psutil.virtual_memory()
        packages = self._read_packages()
        return HostReading(
            t_ns=t_ns,
            cpu_util_pct=util,
            mem_used_bytes=int(mem.used),
            mem_total_bytes=int(mem.total),
            cpu_energy_uj=sum(packages) if packages is not None else None,
            cpu_energy_max_uj=self._max_range_uj if packages is not None else None,
        )

    @property
    def rapl_zones(self) -> list[Path]:
        """The package zones found (empty when RAPL is absent or unreadable)."""
        return [z.path for z in self._zones]

    def _find_zones(self) -> list[_Zone]:
        try:
            entries = list(self._powercap_root.iterdir())
        except OSError:
            return []
        zones: list[tuple[int, _Zone]] = []
        for entry in entries:
            m = _PACKAGE_ZONE.match(entry.name)
            if not m:
                continue
            try:
                name = (entry / "name").read_text().strip()
            except OSError:
                name = ""
            if name.startswith("psys"):
                continue
            try:
                max_range = int((entry / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as e:
                log.warning("RAPL zone %s unusable (%s); CPU energy will not be measured", entry, e)
                return []
            zones.append((int(m.group(1)), _Zone(entry, max_range)))
        return [z for _, z in sorted(zones, key=lambda t: t[0])]

    def _read_packages(self) -> tuple[int, ...] | None:
        if not self._zones:
            return None
        try:
            return tuple(int((z.path / "energy_uj").read_text()) for z in self._zones)
        except (OSError, ValueError) as e:
            if not self._rapl_warned:
                self._rapl_warned = True
                log.warning(
                    "cannot read RAPL energy (%s); CPU energy not measured. energy_uj is "
                    "root-only since Linux 5.10: run the agent as root or grant read access",
                    e,
                )
            return None


def _cpu_busy_total_s() -> tuple[float, float]:
    """(busy, total) CPU seconds since boot over all CPUs; guest time is inside user time."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total
