"""RangeCache and Retry-After parsing: the pieces under every API provider."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intensity.cache import Point, RangeCache
from gridwatt.collector.intensity.coverage import IntensityGap
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
    assert (s.times_ns, s.values, s.estimated) == ((H + 10, 2 * H), (200.0, 300.0), (False, False))
    # beyond the last point's end: the value holds, marked estimated
    s = c.series(2 * H + 10, 4 * H, "t", max_hold_ns=3 * H)
    assert (s.times_ns, s.values, s.estimated) == ((2 * H + 10, 3 * H), (300.0, 300.0), (False, True))
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


def test_gap_inside_the_data_is_held_marked_estimated_and_never_past_max_hold() -> None:
    """Issue #15, reproduction 1: a 4-hour hole between two hourly points, hold limit 3 h."""
    c = RangeCache()
    c.add([Point(0, 100.0, False, H), Point(5 * H, 200.0, False, 6 * H)], (0, 6 * H))
    with pytest.raises(IntensityGap) as err:
        c.series(0, 6 * H, "t", 3 * H)
    gap = err.value
    # hour 0 measured; hours 1-4 held (estimated); hour 4-5 not covered; hour 5 measured
    assert [(s.start_ns, s.end_ns, s.g_per_kwh, s.estimated) for s in gap.segments] == [
        (0, H, 100.0, False), (H, 4 * H, 100.0, True), (5 * H, 6 * H, 200.0, False)
    ]
    assert gap.missing == [(4 * H, 5 * H)]
    # with a hold limit that covers the hole, the held stretch is still marked estimated
    s = c.series(0, 6 * H, "t", 4 * H)
    assert (s.times_ns, s.values, s.estimated) == ((0, H, 5 * H), (100.0, 100.0, 200.0), (False, True, False))
    # a range wholly inside the hold: covered, all estimated
    s = c.series(2 * H, 3 * H, "t", 3 * H)
    assert (s.times_ns, s.values, s.estimated) == ((2 * H,), (100.0,), (True,))
    # 22 hours missing (the Electricity Maps null-hour case): held 3 h, the other 19 h uncovered
    c22 = RangeCache()
    c22.add([Point(0, 100.0, False, H), Point(23 * H, 50.0, False, 24 * H)], (0, 24 * H))
    with pytest.raises(IntensityGap) as err:
        c22.series(0, 24 * H, "t", 3 * H)
    assert err.value.missing == [(4 * H, 23 * H)]


def test_hold_at_the_end_of_the_range_is_bounded() -> None:
    """Issue #15, reproduction 2: newest value 19:00-20:00, clock 06:30 next day, hold limit 3 h."""
    c = RangeCache()
    t19 = 19 * H
    c.add([Point(t19 - H, 300.0, False, t19), Point(t19, 310.0, False, t19 + H)], (t19 - H, t19 + H))
    now = 30 * H + H // 2  # 06:30 the next day
    with pytest.raises(IntensityUnavailable, match="older"):  # the last hour's batch: nothing held to it
        c.series(now - H, now, "t", 3 * H)
    # a range that runs from the data into the lag: held to 23:00 (estimated), refused after
    with pytest.raises(IntensityGap) as err:
        c.series(t19, now, "t", 3 * H)
    assert [(s.start_ns, s.end_ns, s.estimated) for s in err.value.segments] == [
        (t19, t19 + H, False), (t19 + H, t19 + 4 * H, True)
    ]
    assert err.value.missing == [(t19 + 4 * H, now)]


def test_forget_makes_a_range_missing_again() -> None:
    c = RangeCache()
    c.add([], (0, 10 * H))
    c.forget(2 * H, 3 * H)
    assert c.missing(0, 10 * H) == [(2 * H, 3 * H)]
    c.forget(0, 20 * H)
    assert c.missing(0, 10 * H) == [(0, 10 * H)]


def test_retry_after_forms() -> None:
    now = datetime(2024, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after_s("7") == 7.0
    assert parse_retry_after_s("Sun, 01 Dec 2024 12:00:45 GMT", now) == 45.0
    assert parse_retry_after_s("Sun, 01 Dec 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after_s("soon") is None
    assert parse_retry_after_s(None) is None


def test_scrub() -> None:
    assert scrub("key abc123 and abc123", ["abc123", ""]) == "key *** and ***"
