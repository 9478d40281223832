"""The live view on ``/metrics``: accounted energy and carbon as Prometheus counters and gauges.

InfluxDB is the record (sample time, backfill, exact under resends). This module is a view of
what this collector replica has stored since it started: after every stored batch the ingest
path calls :meth:`LiveAccounts.observe`, which accounts the batch's samples once more with the
same pure function and the same intensity and PUE the stored points used, and adds them to
counters per GPU, job, alert rule; node, rack and zone counters are sums of the GPUs' at scrape
time, so every level agrees exactly.

* A GPU's samples are counted in time order: a sample that ends at or before the latest end
  counted for that GPU (a resend after a lost acknowledgement, a late sample) is not counted
  again (``gridwatt_live_samples_skipped_total``). Such a sample is in the record all the same.
* Units are base units (joules, grams, ratios); counters end in ``_total``; every family has
  ``# HELP`` and ``# TYPE``, and ``# UNIT`` in the OpenMetrics exposition.
* Job series expire ``job_series_ttl_s`` (wall seconds) after the job's last stored sample, and
  at most ``max_job_series`` are kept (the least recently seen go first).
* Replicas: each replica counts the batches it stored; a node's stream goes to one replica at a
  time, so ``sum without (instance)`` over replicas is the cluster's figure.

Rendering is plain string building (no per-sample objects) so a scrape of 1,000 GPUs and 200
jobs stays in the milliseconds.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gridwatt.collector.accounting import J_PER_KWH, facility_and_emissions, steady_over
from gridwatt.collector.batch_scan import BatchScan, scan_batch
from gridwatt.timeutil import NS_PER_S
from gridwatt.v1 import telemetry_pb2 as pb

if TYPE_CHECKING:
    from gridwatt.collector.alerts.model import AlertEvent
    from gridwatt.collector.alerts.monitor import AlertMonitor
    from gridwatt.collector.intensity.base import IntensitySeries
    from gridwatt.collector.metrics import CollectorMetrics
    from gridwatt.collector.stepseries import StepSeries
    from gridwatt.collector.topology import Placement

PREFIX = "gridwatt_"
UNATTRIBUTED = "unattributed"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class _Energy:
    """Counters of one series: IT, facility and idle energy (J), emissions (gCO2e)."""

    it_j: float = 0.0
    facility_j: float = 0.0
    co2e_g: float = 0.0
    idle_j: float = 0.0

    def add(self, other: _Energy) -> None:
        self.it_j += other.it_j
        self.facility_j += other.facility_j
        self.co2e_g += other.co2e_g
        self.idle_j += other.idle_j


@dataclass
class _Gpu:
    node: str
    gpu: str
    rack: str
    zone: str
    energy: _Energy = field(default_factory=_Energy)
    power_w: float = 0.0
    util_pct: float = 0.0
    last_end_ns: int = -1


@dataclass
class _Job:
    user: str
    account: str
    energy: _Energy = field(default_factory=_Energy)
    gpu_s: float = 0.0
    gpus: set[tuple[str, int]] = field(default_factory=set)
    last_seen: float = 0.0  # wall clock (the accounts' clock) of its last stored sample


@dataclass
class _Intensity:
    value_g_per_kwh: float
    source: str
    emission_factor: str
    at_ns: int


def escape_label(value: str) -> str:
    """A label value escaped for the text expositions (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _num(v: float) -> str:
    return repr(float(v))


class _Writer:
    """Collects metric families as text in either exposition (0.0.4 text or OpenMetrics 1.0)."""

    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.out: list[str] = []

    def family(self, name: str, kind: str, help_text: str, unit: str,
               samples: Iterable[tuple[str, float]]) -> None:
        """``name`` without ``_total``; ``samples``: (rendered label set ``{...}`` or "", value)."""
        out = self.out
        sample_name = name + "_total" if kind == "counter" else name
        family_name = name if self.openmetrics or kind != "counter" else sample_name
        out.append(f"# HELP {family_name} {help_text}\n# TYPE {family_name} {kind}\n")
        if self.openmetrics and unit:
            out.append(f"# UNIT {family_name} {unit}\n")
        out.extend(f"{sample_name}{labels} {_num(value)}\n" for labels, value in samples)

    def text(self) -> str:
        return "".join(self.out)


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in kv.items()) + "}"


ENERGY_FAMILIES = (
    ("it_energy_joules", "joules", "IT (GPU) energy stored since the collector started", "it_j"),
    ("facility_energy_joules", "joules", "Facility energy (IT energy x PUE in force)", "facility_j"),
    ("co2e_grams", "grams", "Emissions of the facility energy at the grid intensity in force, gCO2e",
     "co2e_g"),
    ("idle_energy_joules", "joules", "IT energy of GPU time below the idle threshold", "idle_j"),
)


class LiveAccounts:
    """Live counters of accounted energy and carbon (see the module docstring)."""

    def __init__(self, job_series_ttl_s: float = 900.0, max_job_series: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_series_ttl_s = job_series_ttl_s
        self.max_job_series = max_job_series
        self.clock = clock
        self.gpus: dict[tuple[str, int], _Gpu] = {}
        self.jobs: dict[str, _Job] = {}
        self.zone_intensity: dict[str, _Intensity] = {}
        self.rack_pue: dict[str, tuple[float, int, str]] = {}  # rack → (PUE, at ns, zone)
        self.samples_counted = 0
        self.samples_skipped = 0
        self.job_series_expired = 0
        self._next_expiry = 0.0
        self.monitor: AlertMonitor | None = None
        # waste of resolved alerts, (rule, scope_kind) → [J, g]; open alerts add theirs at scrape
        self._waste_done: dict[tuple[str, str], list[float]] = {}
        # highest waste exported, so the counters never step back while an evaluation is half done
        self._waste_shown: dict[tuple[str, str], list[float]] = {}

    # -- input ------------------------------------------------------------------------------------

    def observe(
        self,
        batch: pb.Batch,
        placement: Placement,
        intensity: IntensitySeries,
        pue: StepSeries,
        first_line: list[int] | None = None,
        refused_lines: Collection[int] = (),
        scan: BatchScan | None = None,
    ) -> None:
        """Count the stored samples of ``batch`` (those with no line in ``refused_lines``); ``scan``:
        the batch's scan (collector/batch_scan.py), default: scanned here."""
        refused: set[int] = set()
        if refused_lines and first_line:
            refused = {bisect.bisect_right(first_line, line) - 1 for line in refused_lines}
        now = self.clock()
        node, rack, zone = batch.node, placement.rack, placement.zone
        ci = intensity.series
        latest_end = -1
        if scan is None:
            scan = scan_batch(batch)
        rows = scan.rows
        all_shares = scan.shares
        # PUE and intensity constant over the batch (the real-time case): the same two
        # multiplications facility_and_emissions makes for each sample (accounting.steady_over)
        steady = steady_over(pue, ci, scan.lo_ns, scan.hi_ns) if rows else None
        gpus = self.gpus
        # this batch's GPUs by index, and its jobs by id (each job's sums still add in sample order)
        batch_gpus: dict[int, tuple[_Gpu, tuple[str, int]]] = {}
        batch_jobs: dict[str, _Job] = {}
        jobs = self.jobs
        counted = skipped = 0
        for i, (start_ns, end_ns, e, gpu_index, _, util_pct, _, idle_s, power_w, _, _, _) in enumerate(rows):
            if refused and i in refused:
                continue
            gk = batch_gpus.get(gpu_index)
            if gk is None:
                key = (node, gpu_index)
                g = gpus.get(key)
                if g is None:
                    g = gpus[key] = _Gpu(node, str(gpu_index), rack, zone)
                gk = batch_gpus[gpu_index] = (g, key)
            g, key = gk
            if end_ns <= g.last_end_ns:
                skipped += 1
                continue
            g.rack, g.zone = rack, zone
            g.last_end_ns = end_ns
            if steady is not None and end_ns > start_ns:
                fac = e * steady[0]
                co2 = fac / J_PER_KWH * steady[1]
            else:
                fac, co2 = facility_and_emissions(e, start_ns, end_ns, pue, ci)
            dur_s = (end_ns - start_ns) / NS_PER_S
            idle_e = e * idle_s / dur_s if idle_s and dur_s > 0 else 0.0
            ge = g.energy
            ge.it_j += e
            ge.facility_j += fac
            ge.co2e_g += co2
            ge.idle_j += idle_e
            g.power_w = power_w
            g.util_pct = util_pct
            counted += 1
            if end_ns > latest_end:
                latest_end = end_ns
            rest = 1.0
            for info, frac in all_shares[i]:
                job_id = info[0]
                user = info[3]
                job = batch_jobs.get(job_id)
                if job is None:
                    job = jobs.get(job_id)
                    if job is None:
                        job = jobs[job_id] = _Job(user, info[5])
                    job.last_seen = now
                    batch_jobs[job_id] = job
                if user and not job.user:
                    job.user = user
                je = job.energy
                je.it_j += e * frac
                je.facility_j += fac * frac
                je.co2e_g += co2 * frac
                je.idle_j += idle_e * frac
                job.gpu_s += dur_s * frac
                job.gpus.add(key)
                rest -= frac
            if rest > 1e-9:
                self._add_job(UNATTRIBUTED, "", "", rest, e, fac, co2, idle_e, dur_s, key, now)
        self.samples_counted += counted
        self.samples_skipped += skipped
        if latest_end >= 0:
            at = latest_end - 1  # the value in force over the last counted instant
            cur = self.zone_intensity.get(zone)
            if cur is None or at >= cur.at_ns:
                self.zone_intensity[zone] = _Intensity(ci.value_at(at), intensity.source,
                                                       intensity.emission_factor, at)
            pue_cur = self.rack_pue.get(rack)
            if pue_cur is None or at >= pue_cur[1]:
                self.rack_pue[rack] = (pue.value_at(at), at, zone)
        if now >= self._next_expiry or len(self.jobs) > self.max_job_series:
            self._expire_jobs(now)

    def _add_job(self, job_id: str, user: str, account: str, frac: float, e: float, fac: float,
                 co2: float, idle_e: float, dur_s: float, gpu: tuple[str, int], now: float) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = _Job(user, account)
        elif user and not job.user:
            job.user = user
        je = job.energy
        je.it_j += e * frac
        je.facility_j += fac * frac
        je.co2e_g += co2 * frac
        je.idle_j += idle_e * frac
        job.gpu_s += dur_s * frac
        job.gpus.add(gpu)
        job.last_seen = now

    def _expire_jobs(self, now: float) -> None:
        """Drop stale job series (a scan of all jobs: at most once a second from the ingest path)."""
        self._next_expiry = now + 1.0
        stale = [j for j, job in self.jobs.items() if now - job.last_seen > self.job_series_ttl_s]
        for j in stale:
            del self.jobs[j]
        over = len(self.jobs) - self.max_job_series
        if over > 0:
            for j, _ in sorted(self.jobs.items(), key=lambda kv: kv[1].last_seen)[:over]:
                del self.jobs[j]
            stale += [""] * over
        self.job_series_expired += len(stale)

    def attach_monitor(self, monitor: AlertMonitor) -> None:
        """Export the monitor's alert states and count the waste of its alerts."""
        self.monitor = monitor
        monitor.event_listeners.append(self.note_alert_events)

    def note_alert_events(self, events: Iterable[AlertEvent]) -> None:
        """Resolved alerts add their stretch's waste to the waste counters for good."""
        for ev in events:
            if ev.kind == "resolved" and ev.fired_at_ns is not None:
                done = self._waste_done.setdefault((ev.rule, ev.scope_kind), [0.0, 0.0])
                done[0] += ev.wasted_energy_kwh * 3_600_000.0
                done[1] += ev.wasted_co2e_kg * 1000.0

    # -- output -----------------------------------------------------------------------------------

    def render(self, openmetrics: bool = False) -> str:
        """The live families in the text exposition (0.0.4) or OpenMetrics (without ``# EOF``)."""
        self._expire_jobs(self.clock())
        w = _Writer(openmetrics)
        gpus = sorted(self.gpus.values(), key=lambda g: (g.node, int(g.gpu)))
        gpu_labels = [(_labels(node=g.node, gpu=g.gpu, rack=g.rack, zone=g.zone), g) for g in gpus]
        nodes: dict[tuple[str, str, str], list[_Gpu]] = {}
        racks: dict[tuple[str, str], list[_Gpu]] = {}
        zones: dict[str, list[_Gpu]] = {}
        for g in gpus:
            nodes.setdefault((g.node, g.rack, g.zone), []).append(g)
            racks.setdefault((g.rack, g.zone), []).append(g)
            zones.setdefault(g.zone, []).append(g)
        levels: list[tuple[str, str, list[tuple[str, list[_Gpu]]]]] = [
            ("gpu", "per GPU", [(lab, [g]) for lab, g in gpu_labels]),
            ("node", "per node", [(_labels(node=n, rack=r, zone=z), gs) for (n, r, z), gs in nodes.items()]),
            ("rack", "per rack", [(_labels(rack=r, zone=z), gs) for (r, z), gs in racks.items()]),
            ("zone", "per grid zone", [(_labels(zone=z), gs) for z, gs in zones.items()]),
        ]
        for level, what, groups in levels:
            sums = [(lab, _sum(gs)) for lab, gs in groups]
            for name, unit, help_text, attr in ENERGY_FAMILIES:
                w.family(f"{PREFIX}{level}_{name}", "counter", f"{help_text}, {what}.", unit,
                         ((lab, getattr(e, attr)) for lab, e in sums))
            w.family(f"{PREFIX}{level}_power_watts", "gauge",
                     f"Mean GPU power of the latest stored sample, summed {what}.", "watts",
                     ((lab, sum(g.power_w for g in gs)) for lab, gs in groups))
            w.family(f"{PREFIX}{level}_gpu_utilization_ratio", "gauge",
                     f"GPU utilisation (0-1) of the latest stored sample, mean {what}.", "ratio",
                     ((lab, sum(g.util_pct for g in gs) / len(gs) / 100.0) for lab, gs in groups))
        w.family(f"{PREFIX}rack_pue_ratio", "gauge",
                 "PUE in force for the rack at its latest stored sample.", "ratio",
                 ((_labels(rack=r, zone=z), p) for r, (p, _, z) in sorted(self.rack_pue.items())))
        w.family(f"{PREFIX}zone_carbon_intensity_grams_per_kilowatt_hour", "gauge",
                 "Grid carbon intensity in force for the zone at its latest stored sample (gCO2e/kWh), "
                 "with its source and emission factor type.", "grams_per_kilowatt_hour",
                 ((_labels(zone=z, source=i.source, emission_factor=i.emission_factor), i.value_g_per_kwh)
                  for z, i in sorted(self.zone_intensity.items())))
        self._render_jobs(w)
        self._render_alerts(w)
        w.family(f"{PREFIX}live_samples_counted", "counter",
                 "GPU samples counted in the live view (each GPU's samples in time order).", "",
                 [("", self.samples_counted)])
        w.family(f"{PREFIX}live_samples_skipped", "counter",
                 "Stored GPU samples not counted live: they end at or before the latest counted for "
                 "their GPU (resends, late samples); the record has them.", "",
                 [("", self.samples_skipped)])
        w.family(f"{PREFIX}live_job_series_expired", "counter",
                 "Job series dropped from the live view (no sample for job_series_ttl_s, or over "
                 "max_job_series).", "", [("", self.job_series_expired)])
        return w.text()

    def _render_jobs(self, w: _Writer) -> None:
        jobs = [(_labels(job_id=j, user=job.user, account=job.account), job)
                for j, job in sorted(self.jobs.items())]
        for name, unit, help_text, attr in ENERGY_FAMILIES:
            w.family(f"{PREFIX}job_{name}", "counter", f"{help_text}, per running job.", unit,
                     ((lab, getattr(job.energy, attr)) for lab, job in jobs))
        w.family(f"{PREFIX}job_gpu_seconds", "counter", "GPU time attributed to the running job.",
                 "seconds", ((lab, job.gpu_s) for lab, job in jobs))
        w.family(f"{PREFIX}job_gpus", "gauge", "GPUs that have reported the running job.", "",
                 ((lab, len(job.gpus)) for lab, job in jobs))

    def _render_alerts(self, w: _Writer) -> None:
        states: list[tuple[str, float]] = []
        waste = {k: list(v) for k, v in self._waste_done.items()}
        if self.monitor is not None:
            engine = self.monitor.engine
            for state, events in (("firing", engine.active_alerts()), ("pending", engine.pending_alerts())):
                for ev in events:
                    states.append((_labels(rule=ev.rule, severity=ev.severity, scope_kind=ev.scope_kind,
                                           scope=ev.scope_name, state=state), 1.0))
                    if state == "firing":
                        acc = waste.setdefault((ev.rule, ev.scope_kind), [0.0, 0.0])
                        acc[0] += ev.wasted_energy_kwh * 3_600_000.0
                        acc[1] += ev.wasted_co2e_kg * 1000.0
            for rule in self.monitor.config.rules:
                waste.setdefault((rule.name, rule.scope), [0.0, 0.0])
        if self.monitor is not None:
            role = self.monitor.role
            w.family(f"{PREFIX}alert_evaluator", "gauge",
                     "1 while this replica evaluates alerts (mode always, or the elected leader).", "",
                     [(_labels(replica=role.replica, mode=role.mode), 1.0 if role.evaluating() else 0.0)])
        w.family(f"{PREFIX}alert_active", "gauge",
                 "1 for each alert (rule x scope) that is firing or pending now.", "", states)
        for key, v in waste.items():
            shown = self._waste_shown.setdefault(key, [0.0, 0.0])
            shown[0] = v[0] = max(v[0], shown[0])
            shown[1] = v[1] = max(v[1], shown[1])
        ordered = sorted(waste.items())
        w.family(f"{PREFIX}alert_wasted_energy_joules", "counter",
                 "Facility energy of idle stretches that fired an alert (resolved and still firing).",
                 "joules", ((_labels(rule=r, scope_kind=k), v[0]) for (r, k), v in ordered))
        w.family(f"{PREFIX}alert_wasted_co2e_grams", "counter",
                 "Emissions (gCO2e) of idle stretches that fired an alert (resolved and still firing).",
                 "grams", ((_labels(rule=r, scope_kind=k), v[1]) for (r, k), v in ordered))


def _sum(gpus: list[_Gpu]) -> _Energy:
    total = _Energy()
    for g in gpus:
        total.add(g.energy)
    return total


def exposition(metrics: CollectorMetrics, accept: str) -> tuple[bytes, str]:
    """The body and content type of ``/metrics``: OpenMetrics when ``accept`` asks for it (as
    Prometheus does), else the text format 0.0.4; the collector's own metrics, then the live view."""
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from gridwatt.collector.metrics import CONTENT_TYPE, PROCESS_REGISTRY

    live = metrics.live
    if wants_openmetrics(accept):
        eof = b"# EOF\n"
        body = (om_latest(metrics.registry).removesuffix(eof) + om_latest(PROCESS_REGISTRY).removesuffix(eof)
                + (live.render(openmetrics=True).encode() if live else b"") + eof)
        return body, OPENMETRICS_CONTENT_TYPE
    body = metrics.render() + (live.render().encode() if live else b"")
    return body, CONTENT_TYPE


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept header asks for the OpenMetrics exposition (as Prometheus does)."""
    return "application/openmetrics-text" in accept


def iter_families(text: str) -> Iterator[str]:
    """Names of the families in an exposition (for tests and the benchmark)."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            yield line.split(" ")[2]
