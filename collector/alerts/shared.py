"""What collector replicas share through InfluxDB for alerts: heartbeats, node progress, the
evaluator's state and the log of delivered alert events.

| measurement | tags | fields | timestamp |
| --- | --- | --- | --- |
| ``gridwatt_replica`` | replica | incarnation, beat, leader, leaving, mode | wall-clock hour |
| ``alert_progress`` | node, replica | rack, end_ns, first_ns, seen_unix_s | wall-clock hour |
| ``alert_state`` | part | seq, snap, parts, json | wall-clock hour |
| ``alert_event`` | rule, scope_kind, scope, kind | event_id, at_ns, replica, json | the stretch's start |

(wall-clock hour: the writer's clock floored to the hour)

Heartbeats, progress and state overwrite one point per series and hour, so they do not grow with
the write rate. An alert event's key (rule, scope, kind, stretch start) is its ``event_id``: the
same change evaluated twice (by two leaders, or after a restart) writes the same point.
Line rendering and row parsing are pure; the reads and writes take an ``InfluxStore``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gridwatt.collector import schema
from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.queries import quote_string
from gridwatt.collector.schema import string_field, tag
from gridwatt.collector.store import WriteResult, series_rows
from gridwatt.timeutil import NS_PER_S

REPLICA, PROGRESS = schema.REPLICA, schema.ALERT_PROGRESS
STATE, EVENT = schema.ALERT_STATE, schema.ALERT_EVENT
HOUR_NS = 3600 * NS_PER_S
#: Characters of (ASCII) state JSON per ``alert_state`` point: under 64 KiB even if all are escaped.
STATE_PART_CHARS = 30_000


class Store(Protocol):
    """The part of ``InfluxStore`` used here."""

    async def write_lines(self, lines: list[str]) -> WriteResult: ...

    async def query(self, q: str, method: str = "GET") -> list[dict[str, Any]]: ...

    def measurement(self, name: str) -> str: ...


def hour_ns(unix_s: float) -> int:
    """The wall-clock hour (ns) a point of the overwritten series is written at."""
    t = int(unix_s * NS_PER_S)
    return t - t % HOUR_NS


@dataclass(frozen=True)
class Beat:
    """One replica's last heartbeat: it is alive while (incarnation, beat) keeps changing."""

    replica: str
    incarnation: str
    beat: int
    leader: bool
    leaving: bool = False  # its last heartbeat: it stopped (gracefully) and takes no part any more


@dataclass(frozen=True)
class NodeProgress:
    """How far a node has reported to some replica: samples end at ``end_ns``; its first window
    starts at ``first_ns``; the replica last heard from it at ``seen_unix_s`` (wall clock)."""

    node: str
    rack: str
    end_ns: int
    first_ns: int
    seen_unix_s: float


def beat_line(b: Beat, mode: str, now_unix_s: float) -> str:
    return (f"{REPLICA},replica={tag(b.replica)} incarnation={string_field(b.incarnation)},"
            f"beat={b.beat}i,leader={'true' if b.leader else 'false'},"
            f"leaving={'true' if b.leaving else 'false'},mode={string_field(mode)} "
            f"{hour_ns(now_unix_s)}")


def progress_lines(replica: str, progress: list[NodeProgress], now_unix_s: float) -> list[str]:
    t = hour_ns(now_unix_s)
    return [
        f"{PROGRESS},node={tag(p.node)},replica={tag(replica)} rack={string_field(p.rack)},"
        f"end_ns={p.end_ns}i,first_ns={p.first_ns}i,seen_unix_s={p.seen_unix_s!r} {t}"
        for p in progress
    ]


def state_lines(seq: int, state: dict[str, Any], now_unix_s: float, snap: str = "") -> list[str]:
    """The state JSON cut into parts of one snapshot (same seq, same random ``snap``, same timestamp:
    two writers of one seq, in the failure window, never mix their parts)."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    parts = [text[i:i + STATE_PART_CHARS] for i in range(0, len(text), STATE_PART_CHARS)] or [""]
    t = hour_ns(now_unix_s)
    snap = snap or secrets.token_hex(6)
    return [
        f"{STATE},part={k:05d} seq={seq}i,snap={string_field(snap)},parts={len(parts)}i,"
        f"json={string_field(part)} {t}"
        for k, part in enumerate(parts)
    ]


def event_line(ev: AlertEvent, replica: str) -> str:
    return (f"{EVENT},rule={tag(ev.rule)},scope_kind={tag(ev.scope_kind)},scope={tag(ev.scope_name)},"
            f"kind={tag(ev.kind)} event_id={string_field(ev.event_id)},at_ns={ev.at_ns}i,"
            f"replica={string_field(replica)},json={string_field(json.dumps(ev.to_dict(), sort_keys=True))} "
            f"{ev.started_at_ns}")


def parse_beats(result: dict[str, Any]) -> list[Beat]:
    """The newest heartbeat per replica from :func:`read_beats`' statement."""
    return [
        Beat(tags.get("replica", ""), str(row.get("incarnation") or ""), int(row.get("beat") or 0),
             bool(row.get("leader")), bool(row.get("leaving")))
        for tags, row in series_rows(result)
    ]


def parse_progress(result: dict[str, Any]) -> dict[str, NodeProgress]:
    """Per node, the furthest progress over every replica that heard from it."""
    out: dict[str, NodeProgress] = {}
    for tags, row in series_rows(result):
        node = tags.get("node", "")
        p = NodeProgress(node, str(row.get("rack") or ""), int(row.get("end_ns") or 0),
                         int(row.get("first_ns") or 0), float(row.get("seen_unix_s") or 0.0))
        old = out.get(node)
        if old is not None:
            p = NodeProgress(node, p.rack if p.seen_unix_s >= old.seen_unix_s else old.rack,
                             max(p.end_ns, old.end_ns), min(p.first_ns, old.first_ns),
                             max(p.seen_unix_s, old.seen_unix_s))
        out[node] = p
    return out


def assemble_state(rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    """The newest complete snapshot among ``alert_state`` rows (seq, state), or None."""
    by_snap: dict[tuple[int, str], dict[int, tuple[int, str]]] = {}
    for row in rows:
        key = (int(row.get("seq") or 0), str(row.get("snap") or ""))
        by_snap.setdefault(key, {})[int(row.get("part") or 0)] = (int(row.get("parts") or 0),
                                                                  str(row.get("json") or ""))
    for key in sorted(by_snap, reverse=True):
        parts = by_snap[key]
        count = {n for n, _ in parts.values()}
        if len(count) == 1 and set(parts) == set(range(count.pop())):
            return key[0], json.loads("".join(parts[k][1] for k in sorted(parts)))
    return None


# -- I/O ------------------------------------------------------------------------------------------

async def write_beat(store: Store, beat: Beat, mode: str) -> None:
    await _write(store, [beat_line(beat, mode, time.time())])


async def read_beats(store: Store, within_s: float) -> list[Beat]:
    q = (f"SELECT * FROM {store.measurement(REPLICA)} WHERE time > now() - {int(within_s) + 7200}s "
         'GROUP BY "replica" ORDER BY time DESC LIMIT 1')
    (result,) = await store.query(q)
    return parse_beats(result)


async def write_progress(store: Store, replica: str, progress: list[NodeProgress]) -> None:
    if progress:
        await _write(store, progress_lines(replica, progress, time.time()))


async def read_progress(store: Store, within_s: float) -> dict[str, NodeProgress]:
    """Every node heard from by some replica within ``within_s`` (plus the hour of slack)."""
    q = (f"SELECT * FROM {store.measurement(PROGRESS)} WHERE time > now() - {int(within_s) + 7200}s "
         'GROUP BY "node", "replica" ORDER BY time DESC LIMIT 1')
    (result,) = await store.query(q)
    return parse_progress(result)


async def write_state(store: Store, seq: int, state: dict[str, Any]) -> None:
    await _write(store, state_lines(seq, state, time.time()))


async def read_state_seq(store: Store) -> int | None:
    """The newest snapshot's seq (a cheap check before reading a whole snapshot)."""
    (result,) = await store.query(f'SELECT last("seq") FROM {store.measurement(STATE)}')
    rows = series_rows(result)
    return int(rows[0][1]["last"]) if rows else None


async def read_state(store: Store) -> tuple[int, dict[str, Any]] | None:
    """The newest complete snapshot (seq, state) from the newest hour holding one, or None."""
    (last,) = await store.query(f'SELECT last("seq") FROM {store.measurement(STATE)}')
    rows = series_rows(last)
    if not rows:
        return None
    t = int(rows[0][1]["time"])
    (result,) = await store.query(f"SELECT * FROM {store.measurement(STATE)} WHERE time = {t}")
    return assemble_state([row for _tags, row in series_rows(result)])


async def write_events(store: Store, events: list[AlertEvent], replica: str) -> None:
    if events:
        await _write(store, [event_line(ev, replica) for ev in events])


async def delivered_ids(store: Store, events: list[AlertEvent]) -> set[str]:
    """The ``event_id`` of each of ``events`` already in the event log (delivered before)."""
    if not events:
        return set()
    starts = {ev.started_at_ns for ev in events}
    rules = " OR ".join(f'"rule" = {quote_string(r)}' for r in sorted({ev.rule for ev in events}))
    q = (f'SELECT "event_id" FROM {store.measurement(EVENT)} WHERE ({rules}) '
         f"AND time >= {min(starts)} AND time <= {max(starts)}")
    (result,) = await store.query(q)
    return {str(row["event_id"]) for _tags, row in series_rows(result)}


async def _write(store: Store, lines: list[str]) -> None:
    result = await store.write_lines(lines)
    if result.rejected:
        k, why = next(iter(result.rejected.items()))
        raise ValueError(f"InfluxDB refused {len(result.rejected)} alert coordination line(s): {why} "
                         f"({lines[k][:120]})")
