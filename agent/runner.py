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

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.attribution.podresources import KubeletGpuMap
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.host_meter import HostMeter, host_spool_row
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sdnotify import Notifier
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.sources.base import GpuSource
from gridwatt.agent.sources.host import HostSampler
from gridwatt.agent.spool import Ledger, Spool
from gridwatt.timeutil import format_time_ns, parse_time_ns

log = logging.getLogger("gridwatt.agent")

#: After a stop (SIGTERM/SIGINT): seconds to keep delivering what is spooled, then seconds the
#: shipper has to report the final ledger and close. Together well under 10 s.
DRAIN_S = 6.0
SHIPPER_STOP_S = 2.0


def build_source(config: AgentConfig, replay: bool) -> GpuSource:
    """The configured GPU source (NVML, or simulated GPUs)."""
    if config.source.kind == "nvml":
        from gridwatt.agent.sources.nvml.source import NvmlSource

        return NvmlSource()
    from gridwatt.agent.sources.sim.source import SimSource
    from gridwatt.agent.sources.sim.trace import load_trace_csv, synthetic_trace

    sim = config.source.sim
    if sim.trace is not None:
        trace = load_trace_csv(sim.trace, node=config.node)
        shift = None if replay else time.time_ns()
    else:
        start = parse_time_ns(sim.start) if sim.start else time.time_ns()
        trace = synthetic_trace(sim.gpus, start, sim.duration_s, sim.power_w, sim.util_pct, sim.job_id)
        shift = None if replay or sim.start is None else time.time_ns()
    return SimSource(trace, config.node, config.interval_s, sim.gpu_name, shift_to_ns=shift,
                     energy_counter=sim.energy_counter)


def kubelet_gpu_map(config: AgentConfig) -> KubeletGpuMap | None:
    """The kubelet pod-resources watcher, when Kubernetes attribution and a socket are configured."""
    att = config.attribution
    if not att.kubernetes or att.kubelet_socket is None or str(att.kubelet_socket) in ("", "."):
        return None
    return KubeletGpuMap(att.kubelet_socket, att.kubelet_refresh_s,
                         resource_prefixes=att.kubelet_resource_prefixes)


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


async def run_agent(
    config: AgentConfig,
    replay: bool = False,
    source: GpuSource | None = None,
    progress: ProgressFn | None = _stderr_progress,
    progress_every_s: float = 2.0,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run until stopped (SIGINT/SIGTERM), or in replay mode until the trace is played and acknowledged."""
    source = source or build_source(config, replay)
    static_job = config.attribution.job_id or os.environ.get("GRIDWATT_JOB_ID", "")
    kubelet = kubelet_gpu_map(config)
    sampler = Sampler(
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
    host_on = config.host.enabled if config.host.enabled is not None else config.source.kind == "nvml"
    host = HostSampler(config.host.proc_root, config.host.powercap_root) if host_on else None
    host_meter = HostMeter()
    spool = Spool(config.spool_path, config.spool_max_samples)
    shipper = Shipper(config.node, spool, config.collector, ledger_report_s=config.ledger_report_s)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    shipping_stop = asyncio.Event()
    ship_task = asyncio.create_task(shipper.run(shipping_stop))
    kubelet_task = None
    if kubelet is not None:  # the first samples already know which pods hold the GPUs
        await kubelet.refresh()
        kubelet_task = asyncio.create_task(kubelet.run(shipping_stop))
    high_water = config.collector.batch_max_samples * config.collector.max_in_flight * 4
    last_progress = 0.0
    last_ledger_log = time.monotonic()

    def log_ledger_now_and_then() -> None:
        nonlocal last_ledger_log
        if time.monotonic() - last_ledger_log >= config.ledger_report_s:
            last_ledger_log = time.monotonic()
            log.info("ledger: %s; shipper: %s", spool.ledger().line(), shipper.stats.line())

    last_reported: tuple[int, int] | None = None

    def report(final: bool = False, draining: bool = False) -> None:
        nonlocal last_reported
        if progress is None:
            return
        ledger = spool.ledger()
        if draining and last_reported == (ledger.acknowledged, ledger.pending):
            return  # waiting for acknowledgements: say something only when they move
        last_reported = (ledger.acknowledged, ledger.pending)
        state = "done" if final else "delivering" if draining else f"{source.progress() * 100:5.1f}%"
        progress(
            f"[{config.node}] replay {state} sampled={ledger.sampled} acknowledged={ledger.acknowledged} "
            f"pending={ledger.pending} rejected={ledger.rejected}"
            + (f" (collector: {shipper.stats.last_error})" if shipper.stats.last_error and not final else "")
        )

    mark_name = _replay_start(config, source, spool, progress) if replay else None
    notifier = Notifier()  # a no-op unless NOTIFY_SOCKET is set (systemd Type=notify)
    notifier.ready(f"sampling {config.source.kind}, shipping to {config.collector.address}")
    try:
        next_tick = time.monotonic()
        nothing_to_play = replay and getattr(source, "gpu_count", 1) == 0
        while not stop.is_set() and not nothing_to_play:
            notifier.watchdog()
            samples = sampler.take(source.read())
            rows = [(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples]
            if host is not None:
                host_sample = host_meter.take(host.read())
                if host_sample is not None:
                    rows.append(host_spool_row(host_sample))
            if mark_name is not None:  # how far the replay got, with its samples (a restart resumes there)
                spool.append(rows, marks={mark_name: getattr(source, "now_ns", 0) or 0})
            elif rows:
                spool.append(rows)
            if rows:
                shipper.new_data.set()
            if source.finished:
                break
            log_ledger_now_and_then()
            if replay:
                # Backpressure: a replay never outruns the collector so far that the spool evicts.
                while spool.pending > high_water and not stop.is_set():
                    shipper.acked.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(shipper.acked.wait(), timeout=1.0)
                await asyncio.sleep(0)
                if time.monotonic() - last_progress >= progress_every_s:
                    last_progress = time.monotonic()
                    report()
            else:
                next_tick += config.interval_s
                delay = next_tick - time.monotonic()
                if delay < 0:
                    next_tick = time.monotonic()
                    delay = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        # Drain: a replay waits for everything to be acknowledged; a stopped agent flushes for up to
        # DRAIN_S, then the shipper gets SHIPPER_STOP_S to send the final ledger and close: a SIGTERM
        # ends the process within 10 s (systemd's default stop timeout is 90 s).
        deadline = None if replay and not stop.is_set() else time.monotonic() + DRAIN_S
        while spool.pending > 0 and (deadline is None or time.monotonic() < deadline):
            shipper.acked.clear()
            wait_s = 1.0 if deadline is None else max(min(1.0, deadline - time.monotonic()), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shipper.acked.wait(), timeout=wait_s)
            if replay and time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                report(draining=True)
            log_ledger_now_and_then()
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + DRAIN_S
    finally:
        shipping_stop.set()
        if kubelet_task is not None:
            kubelet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kubelet_task
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(ship_task, timeout=SHIPPER_STOP_S)
        source.close()
        if replay:
            report(final=True)
        ledger = spool.ledger()
        spool.close()
    if ledger.pending:
        log.warning("stopping with %d samples still spooled at %s; they are sent on the next start",
                    ledger.pending, config.spool_path)
    log.info("ledger: %s; shipper: %s", ledger.line(), shipper.stats.line())
    return RunResult(ledger, list(shipper.stats.rejections))
