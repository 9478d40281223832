"""``node_windows_from_series`` (sums added field by field with ``map``) gives exactly, to the bit and
in key order, what its first version (one dict entry at a time, kept here verbatim as the reference)
gives, for random series with -0.0, tiny and huge values, repeated jobs and who-fields."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatt.collector.node_state import SUM_KEYS, Series, SeriesSums, node_windows_from_series
from gridwatt.collector.schema import WHO_FIELDS


def reference(
    series: Iterable[Series],
) -> tuple[dict[int, dict[str, float]], dict[tuple[int, str], dict[str, Any]]]:
    windows: dict[int, dict[str, float]] = {}
    jobs: dict[tuple[int, str], dict[str, Any]] = {}
    gpus: dict[int, set[str]] = defaultdict(set)
    for t, gpu, job_id, s in series:
        w = windows.setdefault(t, dict.fromkeys((*SUM_KEYS, "n"), 0.0))
        j = jobs.setdefault((t, job_id), dict.fromkeys((*SUM_KEYS, "n", "end_ns"), 0.0))
        for key, value in zip(SUM_KEYS, s.sums, strict=True):
            w[key] += value
            j[key] += value
        j["n"] += 1
        j["end_ns"] = max(j["end_ns"], float(s.end_ns))
        for name in WHO_FIELDS:
            if s.who.get(name):
                j[name] = s.who[name]
        gpus[t].add(gpu)
    for t, w in windows.items():
        w["n"] = len(gpus[t])
    return windows, jobs


_value = st.sampled_from([0.0, -0.0, 0.1, 0.2, 0.3, 1e-320, 1.7e308, 3512.345678901234, 1 / 3])
_who = st.dictionaries(st.sampled_from(WHO_FIELDS), st.sampled_from(["", "alice", "bob"]), max_size=3)
_series = st.tuples(st.sampled_from([0, 60, 120]), st.sampled_from(["0", "1", "10"]),
                    st.sampled_from(["a", "b", "unattributed"]), st.lists(_value, min_size=8, max_size=8),
                    st.integers(0, 10**12), _who)


def _key(value: Any) -> Any:
    """A value as compared here: floats by their bits (-0.0 is not 0.0), with their type."""
    if isinstance(value, float):
        return (type(value).__name__, math.copysign(1.0, value), repr(value))
    return value


def _exact(d: dict[Any, dict[str, Any]]) -> list[Any]:
    return [(k, [(name, _key(v)) for name, v in inner.items()]) for k, inner in d.items()]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(_series, max_size=12))
def test_node_windows_equal_the_first_version_bit_for_bit(
    rows: list[tuple[int, str, str, list[float], int, dict[str, str]]],
) -> None:
    series = [(t, gpu, job, SeriesSums(list(sums), end, dict(who))) for t, gpu, job, sums, end, who in rows]
    got, want = node_windows_from_series(series), reference(series)
    assert _exact(got[0]) == _exact(want[0])
    assert _exact(got[1]) == _exact(want[1])
