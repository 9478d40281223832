"""Feeds the alert engine from stored windows, in sample time, and delivers its events.

The ingest path tells the monitor, after each stored batch, how far each node has
reported (the latest sample end). A rack window is *closed* once every active node
of the rack (one heard from within ``stale_after_s`` of wall time) has reported past
its end. Closed rack windows are read back from InfluxDB (the ``rack`` points for
energy and utilisation, the ``gpu`` series for the exact GPUs and nodes), turned into
ScopeWindows, and fed to the engine in time order; group and cluster windows are
combined from the racks' windows once every active member rack has closed them.
Events go to the sinks, to the recent-alerts store and to the state file.

With several replicas (``[alerts] evaluate = "elected"``, election.py) only the leader evaluates.
Every replica publishes how far its nodes have reported (``alert_progress``), so the leader closes
windows of nodes that ship to another replica; the leader writes its whole state (engine, recent
alerts, evaluation positions) to ``alert_state`` after every evaluation, and each delivered event
to ``alert_event`` (keyed by its ``event_id``). A new leader loads that state and drops events the
log already holds, so a firing alert neither fires again nor loses its resolve (shared.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.alerts import shared
from gridwatt.collector.alerts.election import build_role
from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.model import AlertEvent, ScopeWindow, combine_windows
from gridwatt.collector.alerts.rules import AlertsConfig
from gridwatt.collector.alerts.sinks import AlertDispatcher, build_sinks
from gridwatt.collector.alerts.state import load_state, save_state
from gridwatt.collector.alerts.store import AlertStore
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.timeutil import NS_PER_S

log = logging.getLogger("gridwatt.collector.alerts")
JOB_SCOPES = ("job", "slurm_job", "slurm_user")
#: Attribution methods that make a job a Slurm job (its processes' Slurm ids, or a prolog's mapping).
SLURM_METHODS = ("slurm", "job_mapping")


@dataclass
class _RackProgress:
    next_window_ns: int | None = None  # start of the first window not yet evaluated
    nodes: dict[str, tuple[int, float]] = field(default_factory=dict)  # node → (max end ns, wall time)


class AlertMonitor:
    """See the module docstring. ``note`` is cheap; evaluation runs in a background task."""

    def __init__(
        self,
        config: AlertsConfig,
        store: InfluxStore,
        resolution_s: int,
        stale_after_s: float = 600.0,
        expected_nodes: dict[str, str] | None = None,
        replica: str = "",
    ) -> None:
        self.config = config
        self.store = store
        self.replica = replica
        self.role = build_role(config.evaluate, replica, store, config.lease_s, config.heartbeat_s,
                               on_tick=self._share_progress, on_change=self._role_changed)
        self.elected = config.evaluate == "elected"
        self._own_progress: dict[str, shared.NodeProgress] = {}  # noted since the last heartbeat
        self._first_ns: dict[str, int] = {}  # rack → first window any replica reported for it
        self._takeover = False  # became leader: load the shared state before evaluating
        self._seq = 0  # the last shared state snapshot loaded or written
        self._view_at = 0.0  # monotonic time a follower last refreshed its view of the alerts
        self._shared_monitor: dict[str, Any] = {}  # positions in the last shared state loaded
        self.resolution_ns = resolution_s * NS_PER_S
        self.stale_after_s = stale_after_s
        if config.state_file:
            self.engine, self.alerts = load_state(config.state_file, config.rules, config.keep_resolved)
        else:
            self.engine, self.alerts = AlertEngine(config.rules), AlertStore(config.keep_resolved)
        self.dispatcher = AlertDispatcher(build_sinks(config.sinks))
        # Nodes that open alerts (from the state file) depend on: until each has reported again
        # (or stale_after_s has passed), cross-rack scopes (job, cluster, group) wait for them, so
        # a restart cannot mistake "not reported yet" for "stopped".
        self._started = time.monotonic()
        self._awaited_nodes = {
            n for ev in (*self.engine.active_alerts(), *self.engine.pending_alerts()) for n in ev.nodes
        }
        self.refresh_open_alerts()  # the state file's engine holds newer numbers than its store
        self._racks: dict[str, _RackProgress] = defaultdict(_RackProgress)
        # Configured nodes count as active but not yet reported (end 0) until they report or go
        # stale, so no window closes before every node that should report has had its chance.
        now = time.monotonic()
        for node, rack in (expected_nodes or {}).items():
            self._racks[rack].nodes[node] = (0, now)
        self._closed: dict[int, dict[str, ScopeWindow]] = defaultdict(dict)  # for group/cluster scopes
        self._jobs_next_ns: int | None = None  # first window not yet evaluated for job scopes
        self._job_rules = any(r.scope in JOB_SCOPES for r in config.rules)
        self._slurm_rules = any(r.scope in ("slurm_job", "slurm_user") for r in config.rules)
        self._jobs_started = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._state_error = ""  # the last state-file write failure, logged once
        #: Called with every evaluation's events (e.g. the live waste counters on /metrics).
        self.event_listeners: list[Callable[[list[AlertEvent]], None]] = []

    def refresh_open_alerts(self) -> None:
        """Give ``gridwatt alerts``/``/v1/alerts`` the current duration and waste of open alerts.

        Events carry the numbers of the moment they happened; a firing alert emits no event while
        it stays idle, so its record is replaced by the engine's snapshot after every evaluation.
        """
        self.alerts.apply([*self.engine.active_alerts(), *self.engine.pending_alerts()])

    def note(self, node: str, rack: str, first_window_ns: int, max_end_ns: int) -> None:
        """A batch of ``node`` was stored: its samples reach ``max_end_ns``."""
        self._awaited_nodes.discard(node)
        progress = self._racks[rack]
        prev = progress.nodes.get(node, (0, 0.0))[0]
        progress.nodes[node] = (max(prev, max_end_ns), time.monotonic())
        self._first_ns[rack] = min(self._first_ns.get(rack, first_window_ns), first_window_ns)
        if self.elected:
            old = self._own_progress.get(node)
            first = first_window_ns if old is None else min(old.first_ns, first_window_ns)
            self._own_progress[node] = shared.NodeProgress(node, rack, max(prev, max_end_ns), first,
                                                           time.time())
        if progress.next_window_ns is None:  # later, late samples of evaluated windows are not re-fed
            progress.next_window_ns = first_window_ns
        if not self._jobs_started:
            self._jobs_next_ns = min(self._jobs_next_ns or first_window_ns, first_window_ns)
        self._wake.set()

    def start(self) -> None:
        self.role.start()
        self._tasks.append(asyncio.create_task(self._loop()))
        for sink in self.dispatcher.alertmanager_sinks():
            resend = sink.run_resend_loop(self._resendable, self._stop)
            self._tasks.append(asyncio.create_task(resend))

    def _resendable(self) -> list[AlertEvent]:
        """Firing alerts to re-send to Alertmanager: the evaluating replica's only."""
        return self.engine.active_alerts() if self.role.evaluating() else []

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        await self.evaluate()
        await self.role.stop()
        await self.dispatcher.close()

    # -- several replicas (evaluate = "elected") ---------------------------------------------------

    def _role_changed(self, leading: bool) -> None:
        if leading:
            self._takeover = True
            self._wake.set()

    async def _share_progress(self) -> None:
        """After each heartbeat: publish our nodes' progress, read everyone's, and (a follower)
        refresh the view of alerts now and then from the leader's state."""
        mine, self._own_progress = list(self._own_progress.values()), {}
        try:
            await shared.write_progress(self.store, self.replica, mine)
        except Exception:
            for p in mine:  # published with the next heartbeat
                self._own_progress.setdefault(p.node, p)
            raise
        progress = await shared.read_progress(self.store, self.stale_after_s)
        if self._merge_progress(progress):
            self._wake.set()
        if not self.role.evaluating() and time.monotonic() - self._view_at >= max(10.0, self.config.lease_s):
            self._view_at = time.monotonic()
            seq = await shared.read_state_seq(self.store)
            if seq is not None and seq != self._seq:
                async with self._lock:
                    if not self.role.evaluating():
                        await self._load_shared()

    def _merge_progress(self, progress: dict[str, shared.NodeProgress]) -> bool:
        """Take other replicas' node progress into the racks' watermarks; True if a node advanced."""
        advanced = False
        now_mono, now_unix = time.monotonic(), time.time()
        for p in progress.values():
            if not p.rack:
                continue
            self._awaited_nodes.discard(p.node)
            rack = self._racks[p.rack]
            end, seen = rack.nodes.get(p.node, (0, 0.0))
            seen_shared = now_mono - max(0.0, now_unix - p.seen_unix_s)
            if p.end_ns > end:
                advanced = True
            rack.nodes[p.node] = (max(end, p.end_ns), max(seen, seen_shared))
            self._first_ns[p.rack] = min(self._first_ns.get(p.rack, p.first_ns), p.first_ns)
            if rack.next_window_ns is None and self.role.evaluating() and not self._takeover:
                rack.next_window_ns = p.first_ns
            if not self._jobs_started:
                self._jobs_next_ns = min(self._jobs_next_ns or p.first_ns, p.first_ns)
        return advanced

    def _monitor_state(self) -> dict[str, Any]:
        return {
            "racks": {r: p.next_window_ns for r, p in self._racks.items() if p.next_window_ns is not None},
            "jobs_next_ns": self._jobs_next_ns,
            "jobs_started": self._jobs_started,
            "closed": {str(t): {r: dataclasses.asdict(w) for r, w in per_rack.items()}
                       for t, per_rack in self._closed.items()},
        }

    async def _load_shared(self) -> bool:
        """Engine and recent alerts from the leader's last snapshot (its evaluation positions kept
        in ``_shared_monitor`` for a takeover); False when there is none. Raises when InfluxDB
        cannot be read."""
        found = await shared.read_state(self.store)
        if found is None:
            return False
        seq, data = found
        self.engine = AlertEngine.from_dict(self.config.rules, data["engine"])
        self.alerts = AlertStore.from_dict(data.get("store", {}), self.config.keep_resolved)
        self._seq = seq
        self._shared_monitor = data.get("monitor", {})
        self.refresh_open_alerts()
        return True

    async def _take_over(self) -> bool:
        """Become the evaluator: continue from the shared state (else the state file's or a fresh
        engine), from the positions the last leader reached. False if InfluxDB cannot be read."""
        self._shared_monitor = {}
        try:
            loaded = await self._load_shared()
        except Exception as exc:
            log.error("alerts: replica %s leads but cannot read the shared alert state (%s); "
                      "not evaluating until it can", self.replica, str(exc) or type(exc).__name__)
            return False
        saved = self._shared_monitor
        racks = saved.get("racks", {})
        for rack, progress in self._racks.items():
            progress.next_window_ns = racks.get(rack, self._first_ns.get(rack))
        for rack, start in racks.items():
            self._racks[rack].next_window_ns = start
        self._closed = defaultdict(dict)
        for t, per_rack in saved.get("closed", {}).items():
            for rack, w in per_rack.items():
                self._closed[int(t)][rack] = ScopeWindow(**{
                    **w, "nodes": tuple(w["nodes"]), "gpus": tuple(w["gpus"]),
                    "labels": tuple((str(k), str(v)) for k, v in w.get("labels", ())),
                })
        if saved:
            self._jobs_next_ns = saved.get("jobs_next_ns")
            self._jobs_started = bool(saved.get("jobs_started"))
        elif self._first_ns:
            self._jobs_next_ns = min(self._first_ns.values())
        log.info("alerts: replica %s took over %s (%d firing, %d pending)", self.replica,
                 f"the shared alert state #{self._seq}" if loaded else "with no shared alert state yet",
                 len(self.engine.active_alerts()), len(self.engine.pending_alerts()))
        self._takeover = False
        return True

    async def _undelivered(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """``events`` less those the event log holds (delivered by an earlier leader)."""
        try:
            done = await shared.delivered_ids(self.store, events)
        except Exception as exc:
            log.warning("alerts: cannot read the alert event log (%s); delivering anyway",
                        str(exc) or type(exc).__name__)
            return events
        dropped = [ev for ev in events if ev.event_id in done]
        for ev in dropped:
            log.info("alerts: %s %s %s was delivered before (event log); not sent again",
                     ev.kind, ev.rule, ev.scope_name)
        return [ev for ev in events if ev.event_id not in done]

    async def _record(self, events: list[AlertEvent]) -> None:
        """After delivery: the events in the event log, and (elected) the state for a successor."""
        try:
            await shared.write_events(self.store, [e for e in events if e.kind != "still_firing"],
                                      self.replica)
            if self.elected:
                self._seq += 1
                await shared.write_state(self.store, self._seq, {
                    "engine": self.engine.to_dict(), "store": self.alerts.to_dict(),
                    "monitor": self._monitor_state(),
                })
        except Exception as exc:
            log.error("alerts: cannot record alert events%s in InfluxDB (%s)",
                      " and state (a successor would re-evaluate from the last recorded one)"
                      if self.elected else "", str(exc) or type(exc).__name__)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.evaluate()
            except Exception:
                log.exception("alert evaluation failed; retrying on the next batch")
            await asyncio.sleep(0.2)  # coalesce bursts of batches

    def _watermark(self, progress: _RackProgress) -> int | None:
        now = time.monotonic()
        active = [end for end, seen in progress.nodes.values() if now - seen <= self.stale_after_s]
        return min(active) if active else None

    async def evaluate(self) -> list[AlertEvent]:
        """Feed every newly closed window to the engine; deliver and persist the events."""
        async with self._lock:
            if not self.role.evaluating():
                return []
            if self._takeover and not await self._take_over():
                return []
            events: list[AlertEvent] = []
            observed = 0
            rack_marks: dict[str, int] = {}
            for rack, progress in list(self._racks.items()):
                mark = self._watermark(progress)
                if mark is None:  # no active node: the rack is off and holds nobody back
                    continue
                closed_to = mark - mark % self.resolution_ns  # windows starting before this are closed
                rack_marks[rack] = closed_to
                if progress.next_window_ns is None or closed_to <= progress.next_window_ns:
                    continue
                windows = await self._rack_windows(rack, progress.next_window_ns, closed_to)
                progress.next_window_ns = closed_to
                for w in windows:
                    self._closed[w.start_ns][rack] = w
                events += self.engine.observe_all(windows)
                observed += len(windows)
            awaiting = bool(self._awaited_nodes) and time.monotonic() - self._started < self.stale_after_s
            if awaiting:
                rack_marks = {}
            events += self._combined(rack_marks)
            if self._job_rules and rack_marks and self._jobs_next_ns is not None:
                self._jobs_started = True
                events += await self._job_scopes(min(rack_marks.values()))
            if events and self.elected:
                if not self.role.evaluating():  # lost the lease meanwhile: the successor re-evaluates
                    log.warning("alerts: lost the lead during an evaluation; %d event(s) left to the "
                                "next leader", len(events))
                    return []
                events = await self._undelivered(events)
            if events:
                self.alerts.apply(events)
                for listener in self.event_listeners:
                    listener(events)
                await self.dispatcher.dispatch(events)
            self.refresh_open_alerts()
            if events or observed:
                await self._record(events)
            if (events or observed) and self.config.state_file:
                # saved after every evaluation, so a restart resumes exactly where it left off
                self.save_state()
            return events

    def save_state(self) -> bool:
        """Write the state file; a failure is one error line (once until it changes), never a traceback,
        and evaluation goes on (a restart would then re-send the events since the last good save)."""
        assert self.config.state_file is not None
        try:
            save_state(self.config.state_file, self.engine, self.alerts)
        except OSError as exc:
            problem = f"{exc.strerror or exc}"
            if problem != self._state_error:
                self._state_error = problem
                log.error("alerts.state_file %s cannot be written (%s): alerts go on, but a restart "
                          "would re-send the events since the last good save", self.config.state_file,
                          problem)
            return False
        if self._state_error:
            log.info("alerts.state_file %s is written again", self.config.state_file)
            self._state_error = ""
        return True

    def _combined(self, rack_marks: dict[str, int]) -> list[AlertEvent]:
        """Group and cluster windows for spans every active rack has closed."""
        if not rack_marks or not self._closed:
            return []
        closed_all = min(rack_marks.values())
        events: list[AlertEvent] = []
        for start in sorted(t for t in self._closed if t < closed_all):
            per_rack = self._closed.pop(start)
            windows = list(per_rack.values())
            events += self.engine.observe(combine_windows("cluster", "cluster", windows))
            for rule in self.config.rules:
                if rule.scope != "group":
                    continue
                members = [
                    w for r, w in per_rack.items()
                    if r in rule.racks or any(n in rule.nodes for n in w.nodes)
                ]
                if members:
                    events += self.engine.observe(combine_windows("group", rule.group_name, members))
        return events

    async def _job_scopes(self, closed_to: int) -> list[AlertEvent]:
        """Job windows for the span closed cluster-wide (``unattributed`` is no job)."""
        lo = self._jobs_next_ns
        if lo is None or closed_to <= lo:
            return []
        self._jobs_next_ns = closed_to
        res_s = self.resolution_ns // NS_PER_S
        (result,) = await self.store.query(
            queries.alert_job_windows(self.store.measurement, lo, closed_to, res_s, slurm=self._slurm_rules)
        )
        acc: dict[tuple[int, str], dict[str, Any]] = {}
        for tags, row in series_rows(result):
            key = (int(row["time"]), tags.get("job_id", ""))
            a = acc.setdefault(key, {"e": 0.0, "f": 0.0, "c": 0.0, "g": 0.0, "u": 0.0, "gpus": set()})
            for k in ("e", "f", "c", "g", "u"):
                a[k] += row[k] or 0.0
            a["gpus"].add((tags.get("node", ""), tags.get("gpu", "")))
            for k, col in (("user", "job_user"), ("account", "job_account"), ("how", "how")):
                if row.get(col):
                    a[k] = str(row[col])
            if tags.get("alias"):
                a["alias"] = tags["alias"]
        windows = [
            ScopeWindow(
                scope_kind="job",
                scope_name=job,
                start_ns=t,
                end_ns=t + self.resolution_ns,
                gpu_count=len(a["gpus"]),
                nodes=tuple(sorted({n for n, _ in a["gpus"]})),
                gpus=tuple(sorted(f"{n}/{g}" for n, g in a["gpus"])),
                mean_util_pct=min(a["u"] / a["g"], 100.0) if a["g"] else 0.0,
                it_energy_kwh=a["e"] / J_PER_KWH,
                facility_energy_kwh=a["f"] / J_PER_KWH,
                co2e_kg=a["c"] / 1000.0,
            )
            for (t, job), a in sorted(acc.items())
        ]
        if self._slurm_rules:
            windows += slurm_windows(acc, self.resolution_ns)
        windows.sort(key=lambda w: (w.start_ns, w.scope_kind, w.scope_name))
        events = self.engine.observe_all(windows)
        # a job with no window up to closed_to has ended or paused: that is a gap for its alerts
        events += self.engine.advance_to(closed_to)
        return events

    async def _rack_windows(self, rack: str, lo_ns: int, hi_ns: int) -> list[ScopeWindow]:
        res_s = self.resolution_ns // NS_PER_S
        racks, gpus = await self.store.query(
            queries.alert_rack_windows(self.store.measurement, rack, lo_ns, hi_ns, res_s)
        )
        members: dict[int, set[tuple[str, str]]] = defaultdict(set)
        for tags, row in series_rows(gpus):
            members[int(row["time"])].add((tags.get("node", ""), tags.get("gpu", "")))
        out = []
        for _tags, row in series_rows(racks):
            t = int(row["time"])
            gpu_set = members.get(t, set())
            out.append(
                ScopeWindow(
                    scope_kind="rack",
                    scope_name=rack,
                    start_ns=t,
                    end_ns=t + self.resolution_ns,
                    gpu_count=int(row["gpu_count"] or 0),
                    nodes=tuple(sorted({n for n, _ in gpu_set})),
                    gpus=tuple(sorted(f"{n}/{g}" for n, g in gpu_set)),
                    mean_util_pct=min(float(row["mean_util_pct"] or 0.0), 100.0),
                    it_energy_kwh=float(row["it_energy_kwh"] or 0.0),
                    facility_energy_kwh=float(row["facility_energy_kwh"] or 0.0),
                    co2e_kg=float(row["co2e_kg"] or 0.0),
                )
            )
        return out

    def recent(self) -> list[dict[str, object]]:
        """Firing, pending and recent alerts, for GET /v1/alerts and ``gridwatt alerts``."""
        return list(self.alerts.recent_alerts())


def slurm_windows(acc: dict[tuple[int, str], dict[str, Any]], resolution_ns: int) -> list[ScopeWindow]:
    """Windows of Slurm jobs (named as people write them, ``1234_7``) and of their users, with the
    user and account as labels, from the per-(window, job) sums of ``_job_scopes`` (pure)."""
    windows: list[ScopeWindow] = []
    per_user: dict[tuple[int, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for (t, job), a in sorted(acc.items()):
        if a.get("how") not in SLURM_METHODS:
            continue
        name = a.get("alias") or job
        user, account = a.get("user", ""), a.get("account", "")
        windows.append(_window("slurm_job", name, t, resolution_ns, [a],
                               (("account", account), ("job_id", job), ("user", user))))
        if user:
            per_user[(t, user)].append((name, a))
    for (t, user), jobs in sorted(per_user.items()):
        accounts = ",".join(sorted({a.get("account", "") for _, a in jobs} - {""}))
        names = ",".join(sorted(n for n, _ in jobs))
        windows.append(_window("slurm_user", user, t, resolution_ns, [a for _, a in jobs],
                               (("account", accounts), ("jobs", names), ("user", user))))
    return windows


def _window(kind: str, name: str, t: int, resolution_ns: int, parts: list[dict[str, Any]],
            labels: tuple[tuple[str, str], ...]) -> ScopeWindow:
    gpus = {g for a in parts for g in a["gpus"]}
    g_s = sum(a["g"] for a in parts)
    return ScopeWindow(
        scope_kind=kind,
        scope_name=name,
        start_ns=t,
        end_ns=t + resolution_ns,
        gpu_count=len(gpus),
        nodes=tuple(sorted({n for n, _ in gpus})),
        gpus=tuple(sorted(f"{n}/{g}" for n, g in gpus)),
        mean_util_pct=min(sum(a["u"] for a in parts) / g_s, 100.0) if g_s else 0.0,
        it_energy_kwh=sum(a["e"] for a in parts) / J_PER_KWH,
        facility_energy_kwh=sum(a["f"] for a in parts) / J_PER_KWH,
        co2e_kg=sum(a["c"] for a in parts) / 1000.0,
        labels=tuple((k, v) for k, v in labels if v),
    )
