"""A simulated source: plays a Trace as NVML would report it.

Each GPU exposes what NVML gives: a cumulative energy counter (mJ, exact
integral of the trace's power), power (mW) at the read time, and the mean
utilisation since the previous read. The source keeps its own clock: every
``read()`` advances it by one interval, so a replay runs as fast as the agent
can take samples while every sample keeps the trace's own timestamps.
"""

from __future__ import annotations

import itertools
import time
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field

from pydantic import Field

from gridwatt.agent.sources.base import GpuReading, GpuSource, JobHint, SourceContext
from gridwatt.agent.sources.registry import SOURCES
from gridwatt.agent.sources.sim.trace import Trace, TraceStep, load_trace_csv, synthetic_trace
from gridwatt.configfile import ConfigPath, StrictModel
from gridwatt.timeutil import parse_time_ns


class SimConfig(StrictModel):
    """``[source.sim]``: simulated GPUs: a trace file, or a synthetic constant profile."""

    trace: ConfigPath | None = None
    gpus: int = Field(8, ge=1, le=64)
    power_w: float = Field(400.0, ge=0, le=2000)
    util_pct: float = Field(95.0, ge=0, le=100)
    duration_s: float = Field(3600.0, gt=0)
    #: Start of the synthetic profile (ISO 8601 UTC); default: when the agent starts.
    start: str | None = None
    job_id: str = ""
    gpu_name: str = "NVIDIA A100-SXM4-80GB (simulated)"
    #: False makes the simulated GPUs lack the energy counter (pre-Volta): power is integrated.
    energy_counter: bool = True


@dataclass
class _SimGpu:
    index: int
    uuid: str
    steps: list[TraceStep]
    step_times: list[int]
    cum_energy_j: list[float]  # energy from trace start to each step's start
    counter_offset_mj: int
    #: Each step's jobs as a reading names them for an interval inside that one step.
    step_hints: list[tuple[JobHint, ...]] = field(default_factory=list)


def _gpu_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.gpu{index}.sim.gridwatt"))


class SimSource:
    """Simulated GPUs playing a trace; see the module docstring."""

    def __init__(
        self,
        trace: Trace,
        node: str,
        interval_s: float,
        gpu_name: str = "NVIDIA A100-SXM4-80GB (simulated)",
        shift_to_ns: int | None = None,
        energy_counter: bool = True,
        mem_total_bytes: int = 80 * 2**30,
    ) -> None:
        shift = 0 if shift_to_ns is None else shift_to_ns - trace.start_ns
        self.start_ns = trace.start_ns + shift
        self.end_ns = trace.end_ns + shift
        self.interval_ns = round(interval_s * 1e9)
        if self.interval_ns <= 0:
            raise ValueError("interval_s must be positive")
        self.gpu_name = gpu_name
        self.energy_counter = energy_counter
        self.mem_total_bytes = mem_total_bytes
        self._gpus: list[_SimGpu] = []
        for index in sorted(trace.gpus):
            steps = [
                TraceStep(s.t_ns + shift, s.power_w, s.util_pct, s.mem_util_pct, s.mem_used_bytes,
                          s.temp_c, s.job_id, s.user, s.absent, s.account, s.partition, s.namespace,
                          s.job_name)
                for s in trace.gpus[index]
            ]
            if steps[0].t_ns > self.start_ns:  # GPU not yet in the trace: absent until then
                steps.insert(0, TraceStep(self.start_ns, 0.0, 0.0, absent=True))
            cum = [0.0]
            for a, b in itertools.pairwise(steps):
                cum.append(cum[-1] + a.power_w * (b.t_ns - a.t_ns) / 1e9)
            hints: list[tuple[JobHint, ...]] = [
                (JobHint(s.job_id, 1.0, *s.who[1:]),) if s.job_id else () for s in steps
            ]
            self._gpus.append(
                _SimGpu(index, _gpu_uuid(node, index), steps, [s.t_ns for s in steps], cum,
                        counter_offset_mj=1_000_000 * (index + 1), step_hints=hints)
            )
        self._now_ns: int | None = None
        self._first_read_ns = self.start_ns

    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    @property
    def now_ns(self) -> int | None:
        """The time of the last read (None before the first)."""
        return self._now_ns

    def resume_from(self, t_ns: int) -> None:
        """Make the next read the one at ``t_ns`` (a read time of an earlier run of the same trace):
        the sampler takes it as its baseline, so the samples go on from ``t_ns`` without a gap."""
        if self._now_ns is not None:
            raise RuntimeError("resume_from() must come before the first read()")
        self._first_read_ns = min(max(t_ns, self.start_ns), self.end_ns)

    @property
    def samples_estimate(self) -> int:
        """Samples a full replay yields: one per GPU per interval."""
        return len(self._gpus) * -(-(self.end_ns - self.start_ns) // self.interval_ns)

    # -- trace arithmetic -------------------------------------------------
    @staticmethod
    def _step_index(gpu: _SimGpu, t_ns: int) -> int:
        return max(bisect_right(gpu.step_times, t_ns) - 1, 0)

    def _energy_j(self, gpu: _SimGpu, t_ns: int) -> float:
        i = self._step_index(gpu, t_ns)
        return gpu.cum_energy_j[i] + gpu.steps[i].power_w * (t_ns - gpu.step_times[i]) / 1e9

    def _means(self, gpu: _SimGpu, t0: int, t1: int) -> tuple[float, float, dict[tuple[str, ...], float]]:
        """Time-weighted mean util and mem util over [t0, t1), and each job's share of time."""
        if t1 <= t0:
            s = gpu.steps[self._step_index(gpu, t1)]
            return s.util_pct, s.mem_util_pct, ({s.who: 1.0} if s.job_id else {})
        util = mem = 0.0
        jobs: dict[tuple[str, ...], float] = {}
        i = self._step_index(gpu, t0)
        t = t0
        while t < t1:
            nxt = gpu.step_times[i + 1] if i + 1 < len(gpu.steps) else t1
            piece_end = min(max(nxt, t), t1)
            w = (piece_end - t) / (t1 - t0)
            s = gpu.steps[i]
            util += s.util_pct * w
            mem += s.mem_util_pct * w
            if s.job_id and w > 0:
                key = s.who
                jobs[key] = jobs.get(key, 0.0) + w
            t = piece_end
            i += 1
        return util, mem, jobs

    # -- GpuSource --------------------------------------------------------
    def read(self) -> list[GpuReading]:
        prev = self._now_ns
        now = self._first_read_ns if prev is None else min(prev + self.interval_ns, self.end_ns)
        self._now_ns = now
        t0 = prev if prev is not None else now
        readings = []
        for gpu in self._gpus:
            times = gpu.step_times
            i = max(bisect_right(times, now) - 1, 0)
            step = gpu.steps[i]
            # Absent at ``now`` and just before it: no reading. A GPU that leaves at ``now`` still ends
            # its last interval here, and one that comes back at ``now`` starts its first one here.
            if now > self.start_ns and times[i] >= now and i > 0:  # a step starts at ``now``
                before = gpu.steps[self._step_index(gpu, now - 1)]
            else:
                before = step
            if step.absent and before.absent:
                readings.append(GpuReading(index=gpu.index, uuid=gpu.uuid, name=self.gpu_name, t_ns=now,
                                           energy_mj=None, power_mw=None,
                                           fault="absent in the trace (switched off)"))
                continue
            if t0 < now and times[i] <= t0:
                # The interval lies inside one step: _means' single piece of weight 1.0.
                util, mem_util, hints = step.util_pct + 0.0, step.mem_util_pct + 0.0, gpu.step_hints[i]
            elif t0 >= now:
                util, mem_util, hints = step.util_pct, step.mem_util_pct, gpu.step_hints[i]
            else:
                util, mem_util, jobs = self._means(gpu, t0, now)
                hints = tuple(JobHint(who[0], share, *who[1:]) for who, share in sorted(jobs.items()))
            energy_j = gpu.cum_energy_j[i] + step.power_w * (now - times[i]) / 1e9
            energy_mj = gpu.counter_offset_mj + round(energy_j * 1000)
            readings.append(
                GpuReading(
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=self.gpu_name,
                    t_ns=now,
                    energy_mj=energy_mj if self.energy_counter else None,
                    power_mw=round(step.power_w * 1000),
                    power_is_average=True,
                    util_pct=util,
                    mem_util_pct=mem_util,
                    mem_used_bytes=step.mem_used_bytes,
                    mem_total_bytes=self.mem_total_bytes,
                    temp_c=step.temp_c,
                    power_limit_mw=400_000 if step.power_w <= 400 else 700_000,
                    jobs=hints,
                    unsupported=() if self.energy_counter else ("energy_counter",),
                )
            )
        return readings

    @property
    def finished(self) -> bool:
        return self._now_ns is not None and self._now_ns >= self.end_ns

    def progress(self) -> float:
        if self._now_ns is None:
            return 0.0
        return (self._now_ns - self.start_ns) / max(self.end_ns - self.start_ns, 1)

    def close(self) -> None:
        pass


@SOURCES.register("sim", SimConfig)
def sim_source(sim: SimConfig, ctx: SourceContext) -> GpuSource:
    """``source.kind = "sim"``: simulated GPUs playing a trace file or a synthetic profile.

    A replay plays the samples' own times; a live run shifts them to start now (a synthetic profile
    without a start always starts now).
    """
    if sim.trace is not None:
        trace = load_trace_csv(sim.trace, node=ctx.node)
        shift = None if ctx.replay else time.time_ns()
    else:
        start = parse_time_ns(sim.start) if sim.start else time.time_ns()
        trace = synthetic_trace(sim.gpus, start, sim.duration_s, sim.power_w, sim.util_pct, sim.job_id)
        shift = None if ctx.replay or sim.start is None else time.time_ns()
    return SimSource(trace, ctx.node, ctx.interval_s, sim.gpu_name, shift_to_ns=shift,
                     energy_counter=sim.energy_counter)
