"""The InfluxDB schema: measurement names, the tag set of each measurement, and line rendering.

Every point the collector writes is rendered with a series key from here, so a measurement's
name and tags are spelled in one place (README "Data model in InfluxDB" lists the fields):

| measurement | tags (in key order) | written by |
| --- | --- | --- |
| ``gpu`` | node, rack, zone, gpu, uuid | points.py (ingest), revisit.py (re-accounting) |
| ``job`` | job_id, [alias], node, rack, gpu | points.py, revisit.py |
| ``host`` | node, rack | points.py |
| ``node`` | node, rack, zone | rollup.py |
| ``rack`` | rack, zone | rollup.py |
| ``job_window`` | job_id, node, rack | rollup.py |
| ``agent_ledger`` | node, rack | ledger.py |
| ``window_writer`` | node | writer_marks.py (with every write of ``job`` points; ``job``'s retention) |
| ``gridwatt_replica``, ``alert_*`` (progress, state, event) | see alerts/shared.py | alerts/shared.py |

Keys are deterministic (same sample, same key and timestamp), so a resent batch overwrites itself.
``alias`` (Slurm's ``1234_7`` / ``1234+1``) is only present where the agent sent one; it depends on
the job alone, so it adds no series, and every rewrite of a job point (revisit.py) must keep it.
"""

from __future__ import annotations

GPU = "gpu"
JOB = "job"
HOST = "host"
NODE = "node"
RACK = "rack"
JOB_WINDOW = "job_window"
AGENT_LEDGER = "agent_ledger"
#: Writer marks (collector/writer_marks.py): which collector instances wrote job points of a node in a
#: window. Kept in the retention policy of ``job`` (the points they speak for), never configured apart.
WINDOW_WRITER = "window_writer"
#: What collector replicas share for alerts (alerts/shared.py): heartbeats, node progress, the
#: evaluator's state, the log of delivered alert events.
REPLICA = "gridwatt_replica"
ALERT_PROGRESS = "alert_progress"
ALERT_STATE = "alert_state"
ALERT_EVENT = "alert_event"
#: Who ran a job: string fields (never tags) of ``job`` and ``job_window`` points, where known.
WHO_FIELDS = ("user", "account", "partition", "namespace", "job_name")

_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "\\\\", "\n": " "})


def tag(value: str) -> str:
    """Escape a tag key or value (commas, spaces, equals signs, backslashes)."""
    if not value:
        return "none"
    # most values need no escape: five substring tests cost a fifth of the translation
    if "," in value or " " in value or "=" in value or "\\" in value or "\n" in value:
        return value.translate(_TAG_ESCAPES)
    return value


def string_field(value: str) -> str:
    """A quoted string field value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


# Series keys. ``*_head``/``*_tail`` take escaped values and leave the GPU index to the caller
# (the ingest hot path renders it per sample); the others escape their arguments.

def gpu_key_head(node_t: str, rack_t: str, zone_t: str) -> str:
    """``gpu,node=…,rack=…,zone=…,gpu=`` (escaped values); the caller appends ``{index},uuid={uuid}``."""
    return f"{GPU},node={node_t},rack={rack_t},zone={zone_t},gpu="


def gpu_key(node: str, rack: str, zone: str, gpu: str, uuid: str) -> str:
    return f"{gpu_key_head(tag(node), tag(rack), tag(zone))}{tag(gpu)},uuid={tag(uuid)}"


def job_key_head(job_t: str, alias_t: str = "") -> str:
    """``job,job_id=…[,alias=…]`` (escaped); the caller appends :func:`job_key_tail` and the GPU index."""
    return f"{JOB},job_id={job_t},alias={alias_t}" if alias_t else f"{JOB},job_id={job_t}"


def job_key_tail(node_t: str, rack_t: str) -> str:
    """``,node=…,rack=…,gpu=`` (escaped values) after :func:`job_key_head`."""
    return f",node={node_t},rack={rack_t},gpu="


def job_key(job_id: str, node: str, rack: str, gpu: str, alias: str = "") -> str:
    alias_t = tag(alias) if alias else ""
    return f"{job_key_head(tag(job_id), alias_t)}{job_key_tail(tag(node), tag(rack))}{tag(gpu)}"


def host_key(node: str, rack: str) -> str:
    return f"{HOST},node={tag(node)},rack={tag(rack)}"


def node_key(node: str, rack: str, zone: str) -> str:
    return f"{NODE},node={tag(node)},rack={tag(rack)},zone={tag(zone)}"


def rack_key(rack: str, zone: str) -> str:
    return f"{RACK},rack={tag(rack)},zone={tag(zone)}"


def job_window_key(job_id: str, node: str, rack: str) -> str:
    return f"{JOB_WINDOW},job_id={tag(job_id)},node={tag(node)},rack={tag(rack)}"


def writer_mark_key(node: str) -> str:
    return f"{WINDOW_WRITER},node={tag(node)}"


def ledger_key(node: str, rack: str) -> str:
    return f"{AGENT_LEDGER},node={tag(node)},rack={tag(rack)}"


def series_tags(key: str) -> dict[str, str]:
    """Tags of a series key such as ``job,gpu=0,job_id=a\\,b,node=n1,rack=r1`` (escapes undone)."""
    parts: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in key:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return dict(p.split("=", 1) for p in parts[1:] if "=" in p)
