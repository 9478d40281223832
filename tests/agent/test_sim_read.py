"""SimSource.read against hand-computed readings. An interval inside one step takes a shortcut, so
readings across step changes, jobs that change mid-interval, absences and the trace's end are
checked value by value, and every reading of a finer replay against the general time-weighted means."""

from __future__ import annotations

from pathlib import Path

from gridwatt.agent.sources.base import JobHint
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import load_trace_csv

S = 10**9
T0 = 1_640_995_200 * S  # 2022-01-01T00:00:00Z
TRACE = (
    "time,gpu,power_w,util_pct,mem_util_pct,job_id,user\n"
    "2022-01-01T00:00:00Z,0,300,90,40,jobA,ann\n"
    "2022-01-01T00:00:25Z,0,100,10,5,jobB,bob\n"  # inside the 2nd interval: jobs split by time
    "2022-01-01T00:00:40Z,0,200,50,20,,\n"  # exactly at a read
    "2022-01-01T00:00:50Z,0,,,,,\n"  # absent from 50 s until 70 s
    "2022-01-01T00:01:10Z,0,400,80,30,jobC,\n"
    "2022-01-01T00:01:40Z,0,0,0,0,,\n"  # the trace ends at 100 s
)


def test_readings_inside_and_across_steps(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(TRACE)
    src = SimSource(load_trace_csv(tmp_path / "t.csv"), "n1", interval_s=20)
    got: list[tuple[object, ...]] = []
    while not src.finished:
        (r,) = src.read()
        t_s = (r.t_ns - T0) // S
        got.append((t_s, r.fault) if r.fault else (t_s, r.energy_mj, r.power_mw, r.util_pct,
                                                     r.mem_util_pct, r.jobs))
    base = 1_000_000  # GPU 0's counter offset (mJ)
    ann, bob, c = "ann", "bob", ""
    assert got == [
        (0, base, 300_000, 90.0, 40.0, (JobHint("jobA", 1.0, ann),)),
        (20, base + 6_000_000, 300_000, 90.0, 40.0, (JobHint("jobA", 1.0, ann),)),  # 300 W x 20 s
        # 5 s of jobA (300 W, 90 %, 40 %) and 15 s of jobB (100 W, 10 %, 5 %)
        (40, base + 9_000_000, 200_000, 30.0, 13.75,
         (JobHint("jobA", 0.25, ann), JobHint("jobB", 0.75, bob))),
        (60, "absent in the trace (switched off)"),  # absent at 60 s and just before it
        # 40-50 s at 200 W, absent (0 W, 0 %) 50-70 s, 70-80 s at 400 W; util over 60-80 s
        (80, base + 15_000_000, 400_000, 40.0, 15.0, (JobHint("jobC", 0.5, c),)),
        (100, base + 23_000_000, 0, 80.0, 30.0, (JobHint("jobC", 1.0, c),)),
    ]


def test_every_reading_equals_the_general_time_weighted_means(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(TRACE)
    src = SimSource(load_trace_csv(tmp_path / "t.csv"), "n1", interval_s=7)  # steps fall inside intervals
    gpu = src._gpus[0]
    prev: int | None = None
    checked = 0
    while not src.finished:
        (r,) = src.read()
        if not r.fault:
            util, mem, jobs = src._means(gpu, prev if prev is not None else r.t_ns, r.t_ns)
            hints = tuple(JobHint(who[0], share, *who[1:]) for who, share in sorted(jobs.items()))
            assert (r.util_pct, r.mem_util_pct, r.jobs) == (util, mem, hints), r.t_ns
            assert r.energy_mj == gpu.counter_offset_mj + round(src._energy_j(gpu, r.t_ns) * 1000)
            checked += 1
        prev = r.t_ns
    assert checked == 14  # 16 reads (0, 7, ..., 98 s and the end at 100 s), 2 absent (56 and 63 s)
