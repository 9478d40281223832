"""Host interval samples from consecutive HostReadings (pure; no I/O).

Host samples share the spool with GPU samples; their payload is marked with a
leading zero byte (``HOST_PAYLOAD_PREFIX``), which no serialized GpuSample can
start with (a protobuf field tag is never 0).
"""

from __future__ import annotations

from gridwatt.agent.sources.host import HostReading, rapl_delta_uj
from gridwatt.v1 import telemetry_pb2 as pb

HOST_PAYLOAD_PREFIX = b"\x00"


class HostMeter:
    """Keeps the previous host reading and makes one HostSample per interval."""

    def __init__(self) -> None:
        self._prev: HostReading | None = None

    def take(self, cur: HostReading) -> pb.HostSample | None:
        """The sample for the interval ending at ``cur`` (None for the first reading)."""
        prev, self._prev = self._prev, cur
        if prev is None or cur.t_ns <= prev.t_ns:
            return None
        sample = pb.HostSample(
            start_ns=prev.t_ns,
            end_ns=cur.t_ns,
            cpu_util_pct=cur.cpu_util_pct or 0.0,
            mem_used_bytes=cur.mem_used_bytes,
            mem_total_bytes=cur.mem_total_bytes,
        )
        if prev.cpu_energy_uj is not None and cur.cpu_energy_uj is not None:
            delta_uj = rapl_delta_uj(prev.cpu_energy_uj, cur.cpu_energy_uj, cur.cpu_energy_max_uj)
            sample.cpu_energy_j = delta_uj / 1e6
            sample.has_cpu_energy = True
        return sample


def host_spool_row(sample: pb.HostSample) -> tuple[int, float, bytes]:
    """A spool row: (start_ns, GPU energy 0 J, marked payload)."""
    return sample.start_ns, 0.0, HOST_PAYLOAD_PREFIX + sample.SerializeToString()
