"""The agent's main loop: poll the source, spool samples, ship them; show progress on replays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridwatt.agent.acked import AckedThrough
from gridwatt.agent.attribution import Attributor
from gridwatt.agent.attribution.podresources import KubeletGpuMap
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.host_meter import HostMeter, host_spool_row
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sdnotify import Notifier
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.sources.base import GpuSource, SourceContext
from gridwatt.agent.sources.host import HostSampler
from gridwatt.agent.sources.plugins import SOURCES
from gridwatt.agent.spool import Ledger, Spool
from gridwatt.timeutil import format_time_ns

log = logging.getLogger("gridwatt.agent")

#: After a stop (SIGTERM/SIGINT): seconds to keep delivering what is spooled, then seconds the
#: shipper has to report the final ledger and close. Together well under 10 s.
DRAIN_S = 6.0
SHIPPER_STOP_S = 2.0


def build_source(config: AgentConfig, replay: bool) -> GpuSource:
    """The configured GPU source (``source.kind``: a name in agent/sources/plugins.py), built from
    its own table (``[source.NAME]``)."""
    context = SourceContext(node=config.node, interval_s=config.interval_s, replay=replay)
    return SOURCES.get(config.source.kind)(config.source.settings(), context)


def _replay_start(config: AgentConfig, source: GpuSource, spool: Spool,
                  progress: ProgressFn | None) -> str | None:
    """Say what a replay will do, and resume after what the spool already took; returns the mark's name.

    The mark (the last read time whose samples are spooled) is keyed by the trace's span, interval
    and GPU count, so another trace or interval starts from its beginning.
    """
    if not hasattr(source, "resume_from"):
        return None
    sim: Any = source
    say = progress or (lambda line: None)
    node = config.node
    if sim.gpu_count == 0:
        say(f"[{node}] the trace has no rows for node {node!r}: nothing to replay")
        return None
    estimate = sim.samples_estimate
    hours = (sim.end_ns - sim.start_ns) / 3.6e12
    say(f"[{node}] replaying {sim.gpu_count} GPUs over {hours:g} h at interval_s {config.interval_s:g}: "
        f"about {estimate:,} samples"
        + (" (a larger interval_s replays faster; line it up with the trace's steps)"
           if estimate > 1_000_000 else ""))
    name = f"replay {sim.start_ns}-{sim.end_ns} every {sim.interval_ns} ns, {sim.gpu_count} GPUs"
    done_to = spool.mark(name)
    if done_to is not None:
        sim.resume_from(done_to)
        where = "the end: nothing left" if done_to >= sim.end_ns else format_time_ns(done_to)
        say(f"[{node}] resuming after what the spool already took: from {where} "
            f"(remove {config.spool_path} to replay from the start)")
    return name


@dataclass
class RunResult:
    ledger: Ledger
    rejections: list[str]


ProgressFn = Callable[[str], None]


def _stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def kubelet_gpu_map(config: AgentConfig) -> KubeletGpuMap | None:
    """The kubelet pod-resources watcher, when Kubernetes attribution and a socket are configured."""
    att = config.attribution
    if not att.kubernetes or att.kubelet_socket is None or str(att.kubelet_socket) in ("", "."):
        return None
    return KubeletGpuMap(att.kubelet_socket, att.kubelet_refresh_s,
                         resource_prefixes=att.kubelet_resource_prefixes)


def build_sampler(config: AgentConfig, kubelet: KubeletGpuMap | None = None) -> Sampler:
    """The sampler with the configured attribution (static job id, Slurm, Kubernetes, mapping files)."""
    static_job = config.attribution.job_id or os.environ.get("GRIDWATT_JOB_ID", "")
    return Sampler(
        Attributor(
            static_job,
            config.attribution.proc_root,
            config.attribution.slurm,
            kubernetes=config.attribution.kubernetes,
            job_mapping_dir=config.attribution.job_mapping_dir,
            gpu_pods=kubelet.current if kubelet is not None else None,
        ),
        config.idle_below_pct,
    )


async def run_agent(
    config: AgentConfig,
    replay: bool = False,
    source: GpuSource | None = None,
    progress: ProgressFn | None = _stderr_progress,
    progress_every_s: float = 2.0,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run until stopped (SIGINT/SIGTERM), or in replay mode until the trace is played and acknowledged."""
    agent = _AgentLoop(config, replay, source or build_source(config, replay), progress, progress_every_s,
                       stop or asyncio.Event())
    return await agent.run()


class AgentTaskDied(Exception):
    """A task the agent cannot work without (the shipper) ended while the agent was running."""


class _AgentLoop:
    """One run of the agent: sample → spool → ship, then drain; see :func:`run_agent`."""

    def __init__(self, config: AgentConfig, replay: bool, source: GpuSource, progress: ProgressFn | None,
                 progress_every_s: float, stop: asyncio.Event) -> None:
        self.config = config
        self.replay = replay
        self.source = source
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.stop = stop
        self.kubelet = kubelet_gpu_map(config)
        self.sampler = build_sampler(config, self.kubelet)
        host_on = config.host.enabled if config.host.enabled is not None else config.source.kind == "nvml"
        self.host = HostSampler(config.host.proc_root, config.host.powercap_root) if host_on else None
        self.host_meter = HostMeter()
        self.spool = Spool(config.spool_path, config.spool_max_samples)
        #: How far the collector stored what was read (a live agent only: a replay has no epilog).
        self.acked_through = AckedThrough(self.spool, None if replay else config.acked_file())
        self.shipper = Shipper(config.node, self.spool, config.collector,
                               ledger_report_s=config.ledger_report_s)
        self.notifier = Notifier()  # a no-op unless NOTIFY_SOCKET is set (systemd Type=notify)
        self.high_water = config.collector.batch_max_samples * config.collector.max_in_flight * 4
        self.last_progress = 0.0
        self.last_ledger_log = time.monotonic()
        self.stopping_sent = False
        self.last_reported: tuple[int, int] | None = None
        self.mark_name: str | None = None
        self.ship_task: asyncio.Task[None] | None = None
        self.shipping_stop = asyncio.Event()

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop.set)
        shipping_stop = self.shipping_stop
        ship_task = self.ship_task = asyncio.create_task(self.shipper.run(shipping_stop))
        kubelet_task = None
        if self.kubelet is not None:  # the first samples already know which pods hold the GPUs
            await self.kubelet.refresh()
            kubelet_task = asyncio.create_task(self.kubelet.run(shipping_stop))
        config = self.config
        if self.replay:
            self.mark_name = _replay_start(config, self.source, self.spool, self.progress)
        targets = ", ".join(config.collector.targets())
        self.notifier.ready(f"sampling {config.source.kind}, shipping to {targets}")
        try:
            await self._sample_until_done()
            await self._drain()
        finally:
            died = ship_task.done() and not shipping_stop.is_set()
            shipping_stop.set()
            if kubelet_task is not None:
                kubelet_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kubelet_task
            if died:
                if not ship_task.cancelled():
                    ship_task.exception()  # retrieved: _check_tasks reported it
            else:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(ship_task, timeout=SHIPPER_STOP_S)
            self.source.close()
            if self.replay:
                self._report(final=True)
            ledger = self.spool.ledger()
            self.spool.close()
        if ledger.pending:
            log.warning("stopping with %d samples still spooled at %s; they are sent on the next start",
                        ledger.pending, self.config.spool_path)
        log.info("ledger: %s; shipper: %s", ledger.line(), self.shipper.stats.line())
        return RunResult(ledger, list(self.shipper.stats.rejections))

    async def _sample_until_done(self) -> None:
        """Sample every interval (a replay: as fast as the collector takes it) until stopped or finished."""
        next_tick = time.monotonic()
        nothing_to_play = self.replay and getattr(self.source, "gpu_count", 1) == 0
        while not self.stop.is_set() and not nothing_to_play:
            self._check_tasks()
            self.notifier.watchdog()
            self._sample_once()
            if self.source.finished:
                break
            self._log_ledger_now_and_then()
            if self.replay:
                await self._hold_back()
                self._progress_now_and_then()
            else:
                next_tick = await self._wait_for_tick(next_tick)

    def _sample_once(self) -> None:
        """Read the source (and the host), spool what it gives and wake the shipper."""
        tick_ns = time.time_ns()  # before the GPUs are read and their jobs looked up
        samples = self.sampler.take(self.source.read())
        rows = [(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples]
        if self.host is not None:
            host_sample = self.host_meter.take(self.host.read())
            if host_sample is not None:
                rows.append(host_spool_row(host_sample))
        if self.mark_name is not None:  # how far the replay got, with its samples (a restart resumes there)
            self.spool.append(rows, marks={self.mark_name: getattr(self.source, "now_ns", 0) or 0})
        elif rows:
            self.spool.append(rows)
        if rows:
            self.shipper.new_data.set()
        if not self.replay:
            self.acked_through.tick(tick_ns)

    async def _hold_back(self) -> None:
        """Backpressure: a replay never outruns the collector so far that the spool evicts."""
        while self.spool.pending > self.high_water and not self.stop.is_set():
            self._check_tasks()
            self.shipper.acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shipper.acked.wait(), timeout=1.0)
        await asyncio.sleep(0)

    async def _wait_for_tick(self, next_tick: float) -> float:
        """Sleep until the next interval (or a stop); returns the tick after it."""
        next_tick += self.config.interval_s
        delay = next_tick - time.monotonic()
        if delay < 0:
            next_tick = time.monotonic()
            delay = 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=delay)
        return next_tick

    async def _drain(self) -> None:
        """Deliver what is spooled: a replay waits for everything to be acknowledged; a stopped agent
        flushes for up to DRAIN_S, then the shipper gets SHIPPER_STOP_S to send the final ledger and
        close: a SIGTERM ends the process within 10 s (systemd's default stop timeout is 90 s)."""
        self._notice_stop()
        self.shipper.flush.set()  # nothing more will join a batch: stop lingering
        self.shipper.new_data.set()
        deadline = None if self.replay and not self.stop.is_set() else time.monotonic() + DRAIN_S
        while self.spool.pending > 0 and (deadline is None or time.monotonic() < deadline):
            self._check_tasks()
            self.shipper.acked.clear()
            wait_s = 1.0 if deadline is None else max(min(1.0, deadline - time.monotonic()), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shipper.acked.wait(), timeout=wait_s)
            if self.replay:
                self._progress_now_and_then(draining=True)
            self._log_ledger_now_and_then()
            if self.stop.is_set() and deadline is None:
                self._notice_stop()
                deadline = time.monotonic() + DRAIN_S

    def _check_tasks(self) -> None:
        """Stop (no more watchdog pings, a non-zero exit) if the shipper died: systemd restarts us."""
        task = self.ship_task
        if task is None or not task.done() or self.shipping_stop.is_set():
            return
        why = "it returned"
        if task.cancelled():
            why = "it was cancelled"
        elif task.exception() is not None:
            exc = task.exception()
            why = f"{type(exc).__name__}: {exc}"
        log.critical("the shipper stopped unexpectedly (%s); %d samples stay spooled; exiting",
                     why, self.spool.pending)
        raise AgentTaskDied(f"the shipper stopped unexpectedly ({why}); samples stay spooled at "
                            f"{self.config.spool_path}")

    def _notice_stop(self) -> None:
        """Tell systemd (STOPPING=1) once, when a stop was asked (SIGTERM, SIGINT or ``stop``)."""
        if self.stop.is_set() and not self.stopping_sent:
            self.stopping_sent = True
            self.notifier.stopping()

    def _log_ledger_now_and_then(self) -> None:
        if time.monotonic() - self.last_ledger_log >= self.config.ledger_report_s:
            self.last_ledger_log = time.monotonic()
            log.info("ledger: %s; shipper: %s", self.spool.ledger().line(), self.shipper.stats.line())

    def _progress_now_and_then(self, draining: bool = False) -> None:
        if time.monotonic() - self.last_progress >= self.progress_every_s:
            self.last_progress = time.monotonic()
            self._report(draining=draining)

    def _report(self, final: bool = False, draining: bool = False) -> None:
        if self.progress is None:
            return
        ledger = self.spool.ledger()
        if draining and self.last_reported == (ledger.acknowledged, ledger.pending):
            return  # waiting for acknowledgements: say something only when they move
        self.last_reported = (ledger.acknowledged, ledger.pending)
        state = "done" if final else "delivering" if draining else f"{self.source.progress() * 100:5.1f}%"
        error = self.shipper.stats.last_error
        node = self.config.node
        self.progress(
            f"[{node}] replay {state} sampled={ledger.sampled} acknowledged={ledger.acknowledged} "
            f"pending={ledger.pending} rejected={ledger.rejected}"
            + (f" (collector: {error})" if error and not final else "")
        )
