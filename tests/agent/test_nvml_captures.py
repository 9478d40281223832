"""The NVML source and the meter over every recorded NVML session in tests/fixtures/nvml/.

Each capture (agent/sources/nvml/CAPTURE.md) is replayed by the fake pynvml
(tests/fakes/replay_pynvml.py). What the source and the meter make of it is checked against
values read straight from the capture's lines: the counter, power, processes, NotSupported
fields and lost GPUs of each poll, and each interval's energy. Real captures dropped into the
folder are picked up by the same tests.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.base import GpuReading
from gridwatt.agent.sources.nvml import NvmlSource
from gridwatt.agent.sources.nvml.capture import (
    CLOCK_FN,
    POLL_FN,
    CaptureError,
    power_comparison,
    read_capture,
    record_session,
    write_capture,
)
from gridwatt.v1 import telemetry_pb2 as pb
from tests.fakes import fake_pynvml as fk
from tests.fakes.replay_pynvml import ReplayHandle, ReplayMismatch, ReplayNvml
from tests.fakes.synthetic_session import PATH as SYNTHETIC_PATH
from tests.fakes.synthetic_session import make_session

CAPTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures" / "nvml").glob("*.jsonl"))
LOST = {15, 16, 28, 999}
UNSUPPORTED = {3, 13}
#: The NVML call behind each GpuReading.unsupported name.
FIELD_OF_FN = {
    "nvmlDeviceGetTotalEnergyConsumption": "energy_counter",
    "nvmlDeviceGetPowerUsage": "power",
    "nvmlDeviceGetEnforcedPowerLimit": "power_limit",
    "nvmlDeviceGetUtilizationRates": "utilization",
    "nvmlDeviceGetMemoryInfo": "memory",
    "nvmlDeviceGetTemperature": "temperature",
    "nvmlDeviceGetClockInfo": "sm_clock",
    "nvmlDeviceGetComputeRunningProcesses": "processes",
    "nvmlDeviceGetGraphicsRunningProcesses": "processes",
    "nvmlDeviceGetProcessUtilization": "process_utilization",
}


@dataclass
class Expected:
    """One GPU in one poll, read from the capture's lines."""

    t_ns: int | None = None
    energy_mj: int | None = None
    power_mw: int | None = None
    lost: bool = False
    pids: set[int] = field(default_factory=set)
    unsupported_now: set[str] = field(default_factory=set)
    asked: set[str] = field(default_factory=set)


def expected_polls(rows: list[dict[str, Any]]) -> list[dict[str, Expected]]:
    """Per poll: GPU UUID -> what the capture says about it in that poll."""
    handle_uuid: dict[int, str] = {}
    polls: list[dict[str, Expected]] = []
    last_clock: int | None = None
    for row in rows:
        fn = row["fn"]
        if row.get("extra"):
            continue  # the capture's own power comparison calls, not the source's
        if fn == POLL_FN:
            polls.append(defaultdict(Expected))
            continue
        if fn == CLOCK_FN:
            last_clock = int(row["result"])
            continue
        args = row.get("args", [])
        handle = args[0]["handle"] if args and isinstance(args[0], dict) and "handle" in args[0] else None
        if fn == "nvmlDeviceGetUUID" and "result" in row:
            handle_uuid[handle] = row["result"]
        if fn == "nvmlDeviceGetHandleByUUID" and "error" in row and polls:
            polls[-1][args[0]].lost = True
        if not polls or handle is None or handle not in handle_uuid:
            continue
        gpu = polls[-1][handle_uuid[handle]]
        err = row.get("error", {}).get("code")
        if err in LOST:
            gpu.lost = True
        if gpu.t_ns is None and (fn in FIELD_OF_FN or fn == "nvmlDeviceGetFieldValues"):
            gpu.t_ns = last_clock  # the source reads its clock just before a poll's first value
        if fn in FIELD_OF_FN:
            gpu.asked.add(FIELD_OF_FN[fn])
            if err in UNSUPPORTED:
                gpu.unsupported_now.add(FIELD_OF_FN[fn])
        if fn == "nvmlDeviceGetTotalEnergyConsumption":
            gpu.energy_mj = row.get("result")
        elif fn == "nvmlDeviceGetFieldValues" and "result" in row:
            value = row["result"][0]["obj"]
            if value["nvmlReturn"] == 0:
                gpu.power_mw = value["value"]["obj"]["uiVal"]
        elif fn == "nvmlDeviceGetPowerUsage" and "result" in row:
            gpu.power_mw = row["result"]
        elif fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            gpu.pids |= {p["obj"]["pid"] for p in row.get("result") or []}
    return polls


def replay(path: Path) -> tuple[ReplayNvml, list[list[GpuReading]]]:
    nvml = ReplayNvml(path)
    source = NvmlSource(nvml_module=nvml, clock_ns=nvml.clock_ns)
    polls = [source.read() for _ in range(nvml.header["polls"])]
    source.close()
    return nvml, polls


@pytest.fixture(params=CAPTURES, ids=[p.stem for p in CAPTURES])
def capture(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


def test_there_is_a_capture_and_synthetic_ones_say_so() -> None:
    assert SYNTHETIC_PATH in CAPTURES
    for path in CAPTURES:
        head, _ = read_capture(path)
        assert isinstance(head["synthetic"], bool)
        if "synthetic" in path.stem:
            assert head["synthetic"] is True and "SYNTHETIC" in head["description"]
        else:  # a real capture names the driver it came from
            assert head["synthetic"] is False and head["driver_version"]


def test_replay_makes_exactly_the_recorded_calls(capture: Path) -> None:
    nvml, polls = replay(capture)
    assert nvml.unconsumed() == [] and nvml.clock_left() == 0
    assert len(polls) == nvml.header["polls"] == nvml.polls
    assert nvml.calls["nvmlShutdown"] == 1


def test_readings_equal_the_captured_answers(capture: Path) -> None:
    _, rows = read_capture(capture)
    _, polls = replay(capture)
    expected = expected_polls(rows)
    assert len(expected) == len(polls)
    for k, (want, got) in enumerate(zip(expected, polls, strict=True)):
        for r in got:
            exp = want[r.uuid]
            where = f"{capture.name} poll {k} GPU {r.index}"
            if exp.lost:
                assert r.fault == "gpu_lost", where
                assert (r.energy_mj, r.power_mw, r.pids) == (None, None, ()), where
                continue
            assert r.fault == "", where
            assert (r.t_ns, r.energy_mj, r.power_mw) == (exp.t_ns, exp.energy_mj, exp.power_mw), where
            assert set(r.pids) == exp.pids, where
            assert exp.unsupported_now <= set(r.unsupported), where
            assert not (set(r.unsupported) & (exp.asked - exp.unsupported_now)), where


def test_interval_energy_from_counter_else_power(capture: Path) -> None:
    """Each interval: the counter's difference, else (a reset, no counter) the trapezoid of power."""
    _, rows = read_capture(capture)
    _, polls = replay(capture)
    expected = expected_polls(rows)
    sampler = Sampler(Attributor(None, Path("/nonexistent"), slurm=False, kubernetes=False), 5.0)
    got: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
    for poll in polls:
        for s in sampler.take(poll):
            got[s.gpu_uuid].append((s.start_ns, s.energy_j, s.energy_method))
    want: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
    for prev_poll, cur_poll in itertools.pairwise(expected):
        for uuid, cur in cur_poll.items():
            prev = prev_poll.get(uuid)
            if prev is None or prev.lost or cur.lost or prev.t_ns is None or cur.t_ns is None:
                continue
            if prev.energy_mj is not None and cur.energy_mj is not None and cur.energy_mj >= prev.energy_mj:
                delta_j = (cur.energy_mj - prev.energy_mj) / 1000
                want[uuid].append((prev.t_ns, delta_j, pb.ENERGY_METHOD_COUNTER))
            elif prev.power_mw is not None and cur.power_mw is not None:
                dt_s = (cur.t_ns - prev.t_ns) / 1e9
                energy_j = (prev.power_mw + cur.power_mw) / 2 / 1000 * dt_s
                want[uuid].append((prev.t_ns, energy_j, -1))
    assert set(got) == set(want)
    for uuid, intervals in want.items():
        assert len(got[uuid]) == len(intervals), uuid
        for (t0, e, method), (g_t0, g_e, g_method) in zip(intervals, got[uuid], strict=True):
            assert g_t0 == t0 and math.isclose(g_e, e, rel_tol=1e-12), uuid
            assert g_method == method if method != -1 else g_method != pb.ENERGY_METHOD_COUNTER


def test_synthetic_session_in_numbers() -> None:
    """The synthetic session by hand: what each GPU's fake was set to do."""
    _, polls = replay(SYNTHETIC_PATH)
    h100, a100, p100, l4 = (list(p) for p in zip(*polls, strict=True))
    # H100: counter from 9_876_543_210 mJ, growing by each second's power; 1-s average power field.
    assert [r.energy_mj for r in h100] == [9_876_543_210, 9_877_155_210, 9_877_810_710, 9_878_500_960,
                                          9_879_201_960, 9_879_842_085]
    assert [r.power_mw for r in h100][:2] == [612_000, 655_500] and h100[0].power_is_average
    assert h100[0].pids == (4242, 4343) and dict(h100[0].process_util_pct) == {4242: 70.0, 4343: 20.0}
    # A100 with MIG on: one reading, whole-GPU energy; no utilisation; GA100 power is instantaneous.
    assert a100[0].util_pct is None and "utilization" in a100[0].unsupported
    assert a100[0].power_is_average is False and a100[1].energy_mj - a100[0].energy_mj == 250_000
    # P100: no energy counter, instantaneous power, no SM clock, processes unreadable (not fatal).
    assert all(r.energy_mj is None for r in p100) and p100[0].power_is_average is False
    assert set(p100[0].unsupported) == {"energy_counter", "sm_clock"} and p100[0].pids == ()
    # L4: counter restart at poll 3, lost at poll 4, back at poll 5.
    assert [r.energy_mj for r in l4] == [55_000_000, 55_070_000, 55_141_500, 1_500, None, 1_500 + 60_000 + 0]
    assert [r.fault for r in l4] == ["", "", "", "", "gpu_lost", ""]


def test_committed_synthetic_capture_is_what_the_generator_makes() -> None:
    made = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in make_session())
    assert SYNTHETIC_PATH.read_text(encoding="utf-8") == made, (
        "regenerate with: .venv/bin/python -m tests.fakes.synthetic_session")


def test_record_and_replay_round_trip(tmp_path: Path) -> None:
    """A fresh recording of the fake replays to the same readings the fake gave."""
    gpu = fk.FakeGpu("GPU-abc", power_mw=400_000, energy_mj=10_000, unsupported={"temperature"})
    now = [1_700_000_000_000_000_000]

    def clock() -> int:
        now[0] += 1_000
        return now[0]

    lines = record_session(fk.FakeNvml([gpu]), seconds=2, interval_s=1, clock_ns=clock,
                           sleep=lambda s: gpu.run(s))
    path = tmp_path / "c.jsonl"
    write_capture(path, lines)
    _, polls = replay(path)
    assert [p[0].energy_mj for p in polls] == [10_000, 410_000, 810_000]
    assert all(p[0].temp_c is None and p[0].unsupported == ("temperature",) for p in polls)
    # The source asking for something the capture lacks is a test failure, not a silent answer.
    nvml = ReplayNvml(path)
    with pytest.raises(ReplayMismatch):
        nvml.nvmlDeviceGetPowerUsage(ReplayHandle(7))


def test_bad_capture_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something-else"}\n')
    with pytest.raises(CaptureError, match=r"bad.jsonl:1: not a gridwatt-nvml-capture file"):
        read_capture(bad)
    bad.write_text('{"format": "gridwatt-nvml-capture", "version": 1}\n{oops\n')
    with pytest.raises(CaptureError, match=r"bad.jsonl:2: not JSON"):
        read_capture(bad)
    with pytest.raises(CaptureError, match=r"--seconds must be in"):
        record_session(fk.FakeNvml([]), seconds=0, interval_s=1)


def test_capture_command_without_nvml_says_why(tmp_path: Path) -> None:
    """On a machine without an NVIDIA driver the command fails with one clear line and writes nothing."""
    out = tmp_path / "cap.jsonl"
    cmd = [sys.executable, "-m", "gridwatt.agent.cli", "capture", "--seconds", "2", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gridwatt-agent capture: NVML cannot be used")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_power_comparison_of_the_synthetic_session() -> None:
    """Counter vs integrated powers, from the capture's lines (what `capture` prints at its end)."""
    _, rows = read_capture(SYNTHETIC_PATH)
    h100, a100, p100, l4 = power_comparison(rows)
    assert (h100.index, h100.name) == (0, "NVIDIA H100 80GB HBM3")
    assert h100.counter_j == (9_879_842_085 - 9_876_543_210) / 1000 and h100.counter_resets == 0
    # The extra lines' times and the powers set for each poll, integrated by hand here.
    times = [r["t_ns"] for r in rows if r.get("extra") and r["args"][0] == {"handle": 0}]
    watts = [612.0, 655.5, 690.25, 701.0, 640.125, 598.0]
    assert len(times) == 6
    by_hand = sum((watts[i] + watts[i + 1]) / 2 * (times[i + 1] - times[i]) / 1e9 for i in range(5))
    assert math.isclose(h100.average_power_j or 0, by_hand, rel_tol=1e-12)
    assert h100.instant_power_j == h100.average_power_j  # the fake answers one power for both fields
    assert h100.usage_power_j is None  # the source read the average field, not nvmlDeviceGetPowerUsage
    # A100 (no power fields): its instantaneous nvmlDeviceGetPowerUsage, 250 W for the first second.
    assert a100.average_power_j is None and a100.usage_power_j is not None and a100.counter_j == 1348.75
    assert p100.counter_j is None and p100.usage_power_j is not None
    # L4: 70 J + 71.5 J, the reset interval skipped, 60 J after it (the lost poll has no counter).
    assert l4.counter_j == 201.5 and l4.counter_resets == 1
    assert "1 counter resets skipped" in l4.line() and "energy counter 3298.9 J" in h100.line()


def test_capture_command_records_a_pynvml_module(tmp_path: Path) -> None:
    """The command end to end, over a pynvml module that is the fake (put first on PYTHONPATH)."""
    (tmp_path / "pynvml.py").write_text(
        "from tests.fakes.fake_pynvml import *  # noqa: F403 - constants and error classes\n"
        "from tests.fakes.fake_pynvml import FakeGpu, FakeNvml\n"
        "_fake = FakeNvml([FakeGpu('GPU-cli-0', power_mw=250_000, energy_mj=1_000)])\n"
        "def __getattr__(name):\n    return getattr(_fake, name)\n")
    out = tmp_path / "cap.jsonl"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}
    cmd = [sys.executable, "-m", "gridwatt.agent.cli", "capture", "--seconds", "1", "--interval", "0.5",
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"wrote \d+ records \(3 polls of 1 GPUs, driver unknown\) to " + re.escape(str(out)),
                        lines[0])
    assert lines[1].startswith("GPU 0 NVIDIA H100 80GB HBM3 (GPU-cli-0): energy counter 0.0 J")
    head, _ = read_capture(out)
    assert head["synthetic"] is False and head["polls"] == 3 and head["interval_s"] == 0.5
    nvml, polls = replay(out)
    assert nvml.unconsumed() == [] and [p[0].power_mw for p in polls] == [250_000] * 3
