"""RangeCache and Retry-After parsing: the pieces under every API provider."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.cache import Point, RangeCache
from gridwatt.collector.intensity.http import parse_retry_after_s, scrub

H = 3600


def test_missing_parts() -> None:
    c = RangeCache()
    assert c.missing(0, 10 * H) == [(0, 10 * H)]
    c.add([], (2 * H, 4 * H))
    c.add([], (6 * H, 8 * H))
    assert c.missing(0, 10 * H) == [(0, 2 * H), (4 * H, 6 * H), (8 * H, 10 * H)]
    assert c.missing(3 * H, 7 * H) == [(4 * H, 6 * H)]
    c.add([], (4 * H, 6 * H))
    assert c.missing(2 * H, 8 * H) == []
    assert c.missing(H, 9 * H) == [(H, 2 * H), (8 * H, 9 * H)]


def test_series_picks_the_step_before_start_and_marks_extrapolation() -> None:
    c = RangeCache()
    c.add([Point(0, 100.0, False, H), Point(H, 200.0, False, 2 * H), Point(2 * H, 300.0, False, 3 * H)])
    s = c.series(H + 10, 2 * H + 10, "t", max_hold_ns=3 * H)
    assert (s.times_ns, s.values, s.estimated) == ((H, 2 * H), (200.0, 300.0), (False, False))
    # beyond the last point's end: the value holds, marked estimated
    s = c.series(2 * H + 10, 4 * H, "t", max_hold_ns=3 * H)
    assert (s.times_ns, s.values, s.estimated) == ((2 * H, 3 * H), (300.0, 300.0), (False, True))
    # before the first point: extended back, marked estimated
    c2 = RangeCache()
    c2.add([Point(H, 50.0, False, 2 * H)])
    s = c2.series(H - 100, H + 100, "t", max_hold_ns=H)
    assert (s.times_ns, s.values, s.estimated) == ((H - 100, H), (50.0, 50.0), (True, False))


def test_series_refuses_stale_or_absent_data() -> None:
    c = RangeCache()
    with pytest.raises(IntensityUnavailable):
        c.series(0, H, "t", max_hold_ns=H)
    c.add([Point(0, 100.0, False, H)])
    with pytest.raises(IntensityUnavailable, match="older"):
        c.series(5 * H, 6 * H, "t", max_hold_ns=3 * H)
    c3 = RangeCache()
    c3.add([Point(10 * H, 1.0, False, 11 * H)])
    with pytest.raises(IntensityUnavailable):
        c3.series(0, H, "t", max_hold_ns=H)


def test_retry_after_forms() -> None:
    now = datetime(2024, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after_s("7") == 7.0
    assert parse_retry_after_s("Sun, 01 Dec 2024 12:00:45 GMT", now) == 45.0
    assert parse_retry_after_s("Sun, 01 Dec 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after_s("soon") is None
    assert parse_retry_after_s(None) is None


def test_scrub() -> None:
    assert scrub("key abc123 and abc123", ["abc123", ""]) == "key *** and ***"
