"""Which collector replica evaluates alerts: ``always``, ``never``, or ``elected`` by a lease in InfluxDB.

Election (``[alerts] evaluate = "elected"``): every ``heartbeat_s`` each replica overwrites its
heartbeat point (a random incarnation, a counter, and whether it leads) and reads everyone's. A
replica is *live* while its (incarnation, counter) has changed within ``lease_s`` of the
reader's own monotonic clock, so clocks of different machines never meet; a replica just started
counts every heartbeat it sees as fresh, i.e. waits a full lease before calling anyone dead.

* A leader stays leader until it sees a live leader with a lower id, or until its own heartbeat
  write has not succeeded for ``lease_s / 2`` (it then steps down by itself).
* A replica that is not leader takes over only when no live replica claims to lead, it has
  watched for at least ``lease_s``, and its id is the lowest of the live ones. A dead leader's
  claim therefore lasts a full lease after its last heartbeat was seen. A replica stopped
  gracefully writes a last heartbeat saying it leaves, so the next one takes over at its next tick.

InfluxDB is no consensus store: the lease is only as good as "a replica that cannot write its
heartbeat for lease_s / 2 stops evaluating". A replica frozen longer than that (a stopped VM,
swap) while in the middle of an evaluation can finish it after its successor started: the
window for a duplicate notification. See README.md "Several replicas".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gridwatt.collector.alerts import shared

log = logging.getLogger("gridwatt.collector.alerts")


@dataclass
class _Seen:
    key: tuple[str, int]
    leader: bool
    changed_at: float  # monotonic time this key was first seen


@dataclass
class Lease:
    """The pure election rule (see the module docstring); times are the caller's monotonic seconds."""

    me: str
    lease_s: float
    started_at: float
    leader: bool = False
    last_write_ok: float | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, beats: list[shared.Beat], now: float) -> None:
        for b in beats:
            if b.replica == self.me:
                continue
            if b.leaving:  # stopped gracefully: no need to wait for its lease to run out
                self.seen.pop(b.replica, None)
                continue
            key = (b.incarnation, b.beat)
            old = self.seen.get(b.replica)
            if old is None or old.key != key:
                self.seen[b.replica] = _Seen(key, b.leader, now)

    def live(self, now: float) -> set[str]:
        """Other replicas whose heartbeat changed within the lease."""
        return {r for r, s in self.seen.items() if now - s.changed_at < self.lease_s}

    def holds(self, now: float) -> bool:
        """Leader, and its own heartbeat written within half a lease."""
        return (self.leader and self.last_write_ok is not None
                and now - self.last_write_ok < self.lease_s / 2)

    def decide(self, now: float) -> bool:
        """Update and return whether this replica leads."""
        if not (self.last_write_ok is not None and now - self.last_write_ok < self.lease_s / 2):
            self.leader = False
            return False
        live = self.live(now)
        claimants = {r for r in live if self.seen[r].leader}
        if self.leader:
            if any(c < self.me for c in claimants):
                self.leader = False
        elif not claimants and now - self.started_at >= self.lease_s and self.me <= min(live | {self.me}):
            self.leader = True
        return self.leader


class Role:
    """``evaluating()`` says whether this replica evaluates alerts now."""

    def __init__(self, mode: str, replica: str) -> None:
        self.mode = mode
        self.replica = replica

    def evaluating(self) -> bool:
        return self.mode == "always"

    def start(self) -> None:
        if self.mode == "never":
            log.info("alerts: replica %s does not evaluate alerts ([alerts] evaluate = \"never\")",
                     self.replica)

    async def stop(self) -> None:
        return None


class ElectedRole(Role):
    """Heartbeats and the lease through ``store``; ``on_tick`` runs after every heartbeat (the
    monitor publishes and reads node progress there), ``on_change(leading)`` when the role flips."""

    def __init__(
        self, replica: str, store: shared.Store, lease_s: float, heartbeat_s: float,
        on_tick: Callable[[], Awaitable[None]] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__("elected", replica)
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.lease = Lease(replica, lease_s, time.monotonic())
        self.incarnation = secrets.token_hex(8)
        self.beat = 0
        self.on_tick = on_tick
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._problem = ""

    def evaluating(self) -> bool:
        return self.lease.holds(time.monotonic())

    def start(self) -> None:
        log.info("alerts: replica %s takes part in the election (lease %g s, heartbeat %g s); "
                 "it evaluates only while it leads", self.replica, self.lease.lease_s, self.heartbeat_s)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)
        # a last heartbeat that says it leaves: the others need not wait for its lease to run out
        self.lease.leader = False
        with contextlib.suppress(Exception):
            await self._write_beat(leaving=True)

    async def _write_beat(self, leaving: bool = False) -> None:
        self.beat += 1
        beat = shared.Beat(self.replica, self.incarnation, self.beat, self.lease.leader, leaving)
        await shared.write_beat(self.store, beat, self.mode)

    async def tick(self) -> None:
        """One heartbeat: write ours, read theirs, decide."""
        was = self.lease.holds(time.monotonic())
        try:
            await self._write_beat()
            self.lease.last_write_ok = time.monotonic()
            beats = await shared.read_beats(self.store, self.lease.lease_s)
            for b in beats:
                if b.replica == self.replica and b.incarnation != self.incarnation:
                    log.error("alerts: another collector also calls itself replica %s; give every "
                              "replica its own [server] replica_id", self.replica)
            self.lease.observe(beats, time.monotonic())
            if self._problem:
                log.info("alerts: election heartbeats reach InfluxDB again")
                self._problem = ""
        except Exception as exc:  # InfluxDB down or refusing: the lease runs out by itself
            problem = str(exc) or type(exc).__name__
            if problem != self._problem:
                log.warning("alerts: election heartbeat failed (%s); a leader steps down after "
                            "lease_s / 2 without one", problem)
                self._problem = problem
        now = time.monotonic()
        leading = self.lease.decide(now)
        if leading != was:
            if leading:
                log.info("alerts: replica %s is now the leader and evaluates alerts (live peers: %s)",
                         self.replica, ", ".join(sorted(self.lease.live(now))) or "none")
            else:
                log.warning("alerts: replica %s is no longer the leader; it stops evaluating alerts",
                            self.replica)
            if self.on_change is not None:
                self.on_change(leading)
        if self.on_tick is not None:
            try:
                await self.on_tick()
            except Exception as exc:
                log.warning("alerts: sharing node progress failed (%s)", str(exc) or type(exc).__name__)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.heartbeat_s)


def build_role(
    mode: str, replica: str, store: shared.Store, lease_s: float, heartbeat_s: float,
    on_tick: Callable[[], Awaitable[None]] | None = None, on_change: Callable[[bool], None] | None = None,
) -> Role:
    if mode == "elected":
        return ElectedRole(replica, store, lease_s, heartbeat_s, on_tick, on_change)
    return Role(mode, replica)
