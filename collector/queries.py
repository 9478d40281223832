"""Every InfluxQL query the collector runs, as pure functions returning the query text.

Measurement names come from collector/schema.py; string literals are quoted with
:func:`quote_string`. A function returning several statements (``;``-separated) says so, and
its caller unpacks one result per statement (``InfluxStore.query``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gridwatt.collector.schema import GPU, JOB, JOB_WINDOW, NODE, RACK, WHO_FIELDS, WINDOW_WRITER

#: A measurement's name → its quoted InfluxQL name for FROM, qualified with its retention policy
#: where it has one (``InfluxStore.measurement``; :func:`plain` for none).
Measurement = Callable[[str], str]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plain(name: str) -> str:
    """A measurement without a retention policy: its quoted name."""
    return quote_ident(name)


def _any_rack(racks: Iterable[str]) -> str:
    return " OR ".join(f'"rack" = {quote_string(r)}' for r in racks)


# -- windows (rollup.py) ------------------------------------------------------------------------

def node_window_sums(m: Measurement, node: str, lo_ns: int, hi_ns: int, res_s: int) -> str:
    """Sums of ``node``'s job points per window, job and GPU in [lo_ns, hi_ns)."""
    return (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        'sum("estimated_co2e_g") AS ce, sum("gpu_s") AS d, sum("util_pct_s") AS u, sum("idle_s") AS i, '
        f'sum("idle_energy_j") AS ie, max("end_ns") AS end_ns, {_last_who()} '
        f'FROM {m(JOB)} WHERE "node" = {quote_string(node)} AND time >= {lo_ns} AND time < {hi_ns} '
        f'GROUP BY time({res_s}s), "job_id", "gpu" fill(none)'
    )


def nodes_window_sums(m: Measurement, nodes: list[str], lo_ns: int, hi_ns: int, res_s: int) -> str:
    """``node_window_sums`` of several nodes in one query: per window, node, job and GPU."""
    any_node = " OR ".join(f'"node" = {quote_string(n)}' for n in nodes)
    return (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        'sum("estimated_co2e_g") AS ce, sum("gpu_s") AS d, sum("util_pct_s") AS u, sum("idle_s") AS i, '
        f'sum("idle_energy_j") AS ie, max("end_ns") AS end_ns, {_last_who()} '
        f'FROM {m(JOB)} WHERE ({any_node}) AND time >= {lo_ns} AND time < {hi_ns} '
        f'GROUP BY time({res_s}s), "node", "job_id", "gpu" fill(none)'
    )


def nodes_stored_windows(m: Measurement, nodes: list[str], rack: str, lo_ns: int, hi_ns: int,
                         node_fields: Iterable[str], job_window_fields: Iterable[str]) -> str:
    """Two statements: the stored ``node`` points (per node and zone) and ``job_window`` points (per
    node and job) of these nodes in ``rack`` in [lo_ns, hi_ns), raw, with the fields named."""
    any_node = " OR ".join(f'"node" = {quote_string(n)}' for n in nodes)
    where = f'WHERE ({any_node}) AND "rack" = {quote_string(rack)} AND time >= {lo_ns} AND time < {hi_ns}'
    return (
        f'SELECT {", ".join(map(quote_ident, node_fields))} FROM {m(NODE)} {where} GROUP BY "node", "zone"; '
        f'SELECT {", ".join(map(quote_ident, job_window_fields))} FROM {m(JOB_WINDOW)} {where} '
        'GROUP BY "node", "job_id"'
    )


def window_writers(m: Measurement, nodes: list[str], lo_ns: int, hi_ns: int) -> str:
    """The writer marks (collector/writer_marks.py) of these nodes in [lo_ns, hi_ns), raw, per node."""
    any_node = " OR ".join(f'"node" = {quote_string(n)}' for n in nodes)
    return (f'SELECT "w" FROM {m(WINDOW_WRITER)} WHERE ({any_node}) AND time >= {lo_ns} AND time < {hi_ns} '
            'GROUP BY "node"')


def _last_who() -> str:
    """The latest non-empty value of each who-ran-what field, named after it."""
    return ", ".join(f'last("{name}") AS "{name}"' for name in WHO_FIELDS)


# -- listings, usage, the job index, reports (listings.py, job_index.py, report.py) -------------

_JOB_WINDOW_SUMS = (
    'sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
    'sum("estimated_co2e_g") AS ce, sum("gpu_s") AS g, sum("util_pct_s") AS u, sum("idle_s") AS i, '
    'sum("idle_energy_j") AS ie'
)


def _time_range(lo_ns: int | None, hi_ns: int | None) -> str:
    parts = [f"time >= {lo_ns}"] if lo_ns is not None else []
    parts += [f"time < {hi_ns}"] if hi_ns is not None else []
    return (" WHERE " + " AND ".join(parts)) if parts else ""


def job_sums_in_range(m: Measurement, lo_ns: int | None, hi_ns: int | None) -> str:
    """Three statements over the job windows in [lo_ns, hi_ns) (None: unbounded): sums and latest end
    per job, node and rack; who ran each job; each job's first window."""
    where = _time_range(lo_ns, hi_ns)
    return (
        f'SELECT {_JOB_WINDOW_SUMS}, max("end_ns") AS end_ns FROM {m(JOB_WINDOW)}{where} '
        'GROUP BY "job_id", "node", "rack"; '
        f'SELECT {_last_who()} FROM {m(JOB_WINDOW)}{where} GROUP BY "job_id"; '
        f'SELECT first("gpu_s") FROM {m(JOB_WINDOW)}{where} GROUP BY "job_id"'
    )


def job_hours_in_range(m: Measurement, lo_ns: int | None, hi_ns: int | None) -> str:
    """Four statements over the job windows in [lo_ns, hi_ns): sums and latest end per hour, job and
    rack; who ran each job; each job's first window; each job's nodes."""
    where = _time_range(lo_ns, hi_ns)
    return (
        f'SELECT {_JOB_WINDOW_SUMS}, max("end_ns") AS end_ns FROM {m(JOB_WINDOW)}{where} '
        'GROUP BY time(1h), "job_id", "rack" fill(none); '
        f'SELECT {_last_who()} FROM {m(JOB_WINDOW)}{where} GROUP BY "job_id"; '
        f'SELECT first("gpu_s") FROM {m(JOB_WINDOW)}{where} GROUP BY "job_id"; '
        f'SELECT last("gpu_count") FROM {m(JOB_WINDOW)}{where} GROUP BY "job_id", "node"'
    )


def job_owner(m: Measurement, job_id: str) -> str:
    """Two statements: the latest user and the latest account of a job's points (column ``v``)."""
    job = quote_string(job_id)
    return (f'SELECT last("user") AS v FROM {m(JOB)} WHERE "job_id" = {job}; '
            f'SELECT last("account") AS v FROM {m(JOB)} WHERE "job_id" = {job}')


def rack_window_points(m: Measurement, rack: str, lo_ns: int, hi_ns: int) -> str:
    """``rack``'s node points in [lo_ns, hi_ns), raw, one series per node (collector/rack_state.py adds
    them up in its own order)."""
    return (
        'SELECT "it_energy_kwh", "facility_energy_kwh", "co2e_g", "estimated_co2e_g", "gpu_seconds", '
        '"util_pct_s", "idle_s", "idle_energy_kwh", "gpu_count" '
        f'FROM {m(NODE)} WHERE "rack" = {quote_string(rack)} AND time >= {lo_ns} AND time < {hi_ns} '
        'GROUP BY "node", "zone"'
    )


def rack_stored_points(m: Measurement, rack: str, zone: str, lo_ns: int, hi_ns: int,
                       fields: Iterable[str]) -> str:
    """The ``rack`` points of ``rack`` in ``zone`` in [lo_ns, hi_ns), raw, with the fields named."""
    return (f'SELECT {", ".join(map(quote_ident, fields))} FROM {m(RACK)} '
            f'WHERE "rack" = {quote_string(rack)} AND "zone" = {quote_string(zone)} '
            f'AND time >= {lo_ns} AND time < {hi_ns}')


# -- reports (jobs.py, racks.py, web/pages.py) ---------------------------------------------------

def job_report(m: Measurement, job_id: str) -> str:
    """Five statements: the job's window sums, its job series, its first and its last job point, and
    its user and (Slurm) account."""
    job = quote_string(job_id)
    return (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        'sum("estimated_co2e_g") AS ce, sum("gpu_s") AS g, sum("util_pct_s") AS u, sum("idle_s") AS i, '
        'sum("idle_energy_j") AS ie, '
        f'max("end_ns") AS end_ns FROM {m(JOB_WINDOW)} WHERE "job_id" = {job}; '
        f'SHOW SERIES FROM {m(JOB)} WHERE "job_id" = {job}; '
        f'SELECT first("gpu_s") FROM {m(JOB)} WHERE "job_id" = {job}; '
        f'SELECT last("ef") FROM {m(JOB)} WHERE "job_id" = {job}; '
        'SELECT last("user") AS job_user, last("account") AS job_account '
        f'FROM {m(JOB)} WHERE "job_id" = {job}'
    )


def job_ids_of_alias(m: Measurement, alias: str) -> str:
    """The job ids whose points carry the ``alias`` tag (Slurm's ``1234_7`` or ``1234+1``): by the index."""
    return f'SHOW TAG VALUES FROM {m(JOB)} WITH KEY = "job_id" WHERE "alias" = {quote_string(alias)}'


def job_hourly(m: Measurement, job_id: str, lo_ns: int, hi_ns: int) -> str:
    """The job's window sums per hour in [lo_ns, hi_ns]."""
    return (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        f'sum("gpu_s") AS g, sum("util_pct_s") AS u FROM {m(JOB_WINDOW)} '
        f'WHERE "job_id" = {quote_string(job_id)} AND time >= {lo_ns} AND time <= {hi_ns} '
        "GROUP BY time(1h) fill(none)"
    )


def jobs_list(m: Measurement) -> str:
    """Every job's energy, emissions, GPU seconds and last end."""
    return ('SELECT sum("energy_j") AS e, sum("co2e_g") AS c, sum("gpu_s") AS g, max("end_ns") AS end_ns '
            f'FROM {m(JOB_WINDOW)} GROUP BY "job_id"')


def rack_totals(m: Measurement, since_ns: int | None = None, until_ns: int | None = None) -> str:
    """Per rack and zone: energy, emissions, GPU seconds and util over [since_ns, until_ns)."""
    conds = []
    if since_ns is not None:
        conds.append(f"time >= {since_ns}")
    if until_ns is not None:
        conds.append(f"time < {until_ns}")
    where = f"WHERE {' AND '.join(conds)} " if conds else ""
    return (
        'SELECT sum("it_energy_kwh") AS it, sum("facility_energy_kwh") AS fac, sum("co2e_kg") AS co2, '
        'sum("estimated_co2e_g") AS est, sum("gpu_seconds") AS gs, sum("util_pct_s") AS us, '
        'sum("idle_energy_kwh") AS idle, '
        f'max("gpu_count") AS gpus FROM {m(RACK)} {where}GROUP BY "rack", "zone"'
    )


# -- feed-derived PUE (pue_feed.py) ---------------------------------------------------------------

def site_it_energy(m: Measurement, racks: Iterable[str], look_lo_ns: int, hi_ns: int, res_s: int) -> str:
    """Two statements: each node's latest window since look_lo_ns, and the racks' IT kWh per window."""
    where = f'FROM {m(NODE)} WHERE ({_any_rack(racks)})'
    return (
        f'SELECT last("it_energy_kwh") {where} AND time >= {look_lo_ns} GROUP BY "node"; '
        f'SELECT sum("it_energy_kwh") {where} AND time >= {look_lo_ns} AND time < {hi_ns} '
        f"GROUP BY time({res_s}s) fill(none)"
    )


# -- alerts (alerts/monitor.py) -------------------------------------------------------------------

def alert_job_windows(m: Measurement, lo_ns: int, hi_ns: int, res_s: int, slurm: bool = False) -> str:
    """Job points (``unattributed`` excluded) per window, job, node and GPU in [lo_ns, hi_ns); with
    ``slurm``, also each job's user, account and attribution, and its alias tag."""
    return (
        'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
        'sum("gpu_s") AS g, sum("util_pct_s") AS u'
        + (', last("user") AS job_user, last("account") AS job_account, last("attribution") AS how'
           if slurm else "")
        + f" FROM {m(JOB)} "
        f"WHERE \"job_id\" != 'unattributed' AND time >= {lo_ns} AND time < {hi_ns} "
        f'GROUP BY time({res_s}s), "job_id", "node", "gpu"' + (', "alias"' if slurm else "") + " fill(none)"
    )


def alert_rack_windows(m: Measurement, rack: str, lo_ns: int, hi_ns: int, res_s: int) -> str:
    """Two statements: the rack's window points, and its GPUs that reported per window."""
    where = f'WHERE "rack" = {quote_string(rack)} AND time >= {lo_ns} AND time < {hi_ns}'
    return (
        'SELECT "it_energy_kwh", "facility_energy_kwh", "co2e_kg", "mean_util_pct", "gpu_count" '
        f'FROM {m(RACK)} {where}; '
        f'SELECT count("energy_j") FROM {m(GPU)} {where} GROUP BY time({res_s}s), "node", "gpu" fill(none)'
    )


# -- re-accounting of estimated intensity (revisit.py) ------------------------------------------

def estimated_hours(m: Measurement, lookback_s: int) -> str:
    """Hours (per zone) of the last ``lookback_s`` with GPU points carrying estimated emissions."""
    return (
        f'SELECT count("estimated_co2e_g") FROM {m(GPU)} WHERE "estimated_co2e_g" > 0 '
        f'AND time > now() - {lookback_s}s GROUP BY time(1h), "zone" fill(none)'
    )


def estimated_gpu_points(m: Measurement, zone: str, lo_ns: int, hi_ns: int) -> str:
    """The zone's GPU points with estimated emissions starting in [lo_ns, hi_ns), by series."""
    return (
        f'SELECT "energy_j", "end_ns", "co2e_g", "estimated_co2e_g" FROM {m(GPU)} '
        f'WHERE "zone" = {quote_string(zone)} AND "estimated_co2e_g" > 0 '
        f'AND time >= {lo_ns} AND time < {hi_ns} GROUP BY "node", "rack", "gpu", "uuid"'
    )


def estimated_job_fractions(m: Measurement, racks: Iterable[str], lo_ns: int, hi_ns: int) -> str:
    """The racks' job points with estimated emissions in [lo_ns, hi_ns): their fractions, by series
    (``fraction`` null where the point leaves it out: a whole GPU, ``gpu_point_fields = "accounting"``)."""
    return (
        f'SELECT "fraction", "estimated_co2e_g" FROM {m(JOB)} WHERE (' + _any_rack(racks)
        + f') AND "estimated_co2e_g" > 0 AND time >= {lo_ns} AND time < {hi_ns} '
        'GROUP BY "job_id", "node", "rack", "gpu", "alias"'
    )


# -- one GPU-second accounted once (intervals.py) -----------------------------------------------

def gpu_intervals(m: Measurement, node: str, lo_ns: int, hi_ns: int, lookback_ns: int) -> str:
    """Two statements: ``node``'s gpu points starting in [lo_ns, hi_ns) (end, digest, energy) per GPU,
    and per GPU the latest end of those starting in [lo_ns - lookback_ns, lo_ns)."""
    n = quote_string(node)
    return (f'SELECT "end_ns", "digest", "energy_j" FROM {m(GPU)} WHERE "node" = {n} AND time >= {lo_ns} '
            f'AND time < {hi_ns} GROUP BY "gpu"; '
            f'SELECT max("end_ns") FROM {m(GPU)} WHERE "node" = {n} AND time >= {lo_ns - lookback_ns} '
            f'AND time < {lo_ns} GROUP BY "gpu"')


def held_node_fill(m: Measurement, node: str, known_from_ns: int, horizon_ns: int, far_ns: int) -> str:
    """Two statements for held node state (node_state.py): the latest ``job`` point of ``node`` at or
    after known_from_ns (its time), and per GPU the latest end of its ``gpu`` points from horizon_ns."""
    n = quote_string(node)
    return (f'SELECT last("end_ns") FROM {m(JOB)} WHERE "node" = {n} AND time >= {known_from_ns} '
            f'AND time < {far_ns}; '
            f'SELECT max("end_ns") FROM {m(GPU)} WHERE "node" = {n} AND time >= {horizon_ns} '
            f'AND time < {far_ns} GROUP BY "gpu"')
