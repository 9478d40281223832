"""Issue 16, defects 9, 11 and parts of 3 and 8: replaying traces, and files that are not UTF-8 CSV."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.config import AgentConfig, CollectorConnection, SourceConfig
from gridwatt.agent.runner import run_agent
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.sim.source import SimConfig, SimSource
from gridwatt.agent.sources.sim.trace import TraceError, load_trace_csv
from gridwatt.agent.spool import peek_ledger
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.intensity.csv_file import IntensityFileError, load_intensity_csv
from gridwatt.collector.pue import PueFileError, load_pue_csv
from gridwatt.collector.pue_feed import load_facility_feed
from gridwatt.configfile import ConfigError, load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from gridwatt.timeutil import parse_time_ns
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml, first_row, influx_query

T0 = "2024-05-01T00:00:00Z"
H = 3600 * 10**9
AGENT = [sys.executable, "-m", "gridwatt.agent.cli"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- files that are not what they should be (defect 3) -------------------------------------------

def test_a_short_trace_row_names_its_line(tmp_path: Path) -> None:
    trace = _write(tmp_path / "t.csv", f"time,gpu,power_w,util_pct\n{T0},0,300,90\n2024-05-01T01:00:00Z,0\n")
    with pytest.raises(TraceError) as err:
        load_trace_csv(trace)
    assert str(err.value) == f"{trace}:3: fewer fields than the header's 4 (time, gpu, power_w, util_pct)"


@pytest.mark.parametrize("kind", ["trace", "intensity", "pue", "feed"])
@pytest.mark.parametrize("encoding", ["utf-16", "binary"])
def test_utf16_or_binary_csv_is_one_clear_error(tmp_path: Path, kind: str, encoding: str) -> None:
    header = {"trace": "time,gpu,power_w,util_pct", "intensity": "time,intensity_g_per_kwh",
              "pue": "time,pue", "feed": "time,facility_power_w"}[kind]
    text = f"{header}\n{T0},0,300,90\n" if kind == "trace" else f"{header}\n{T0},1.2\n"
    path = tmp_path / f"{kind}.csv"
    path.write_bytes(text.encode("utf-16") if encoding == "utf-16" else b"\x00\x01\x02\xff\xfe" * 40)
    load = {"trace": load_trace_csv, "intensity": load_intensity_csv, "pue": load_pue_csv,
            "feed": load_facility_feed}[kind]
    error = {"trace": TraceError, "intensity": IntensityFileError, "pue": PueFileError,
             "feed": PueFileError}[kind]
    with pytest.raises(error) as err:
        load(path)  # type: ignore[operator]
    message = str(err.value)
    assert message.startswith(f"{path}:1: ")
    assert message.endswith("save it as UTF-8 CSV")
    assert "not UTF-8 text" in message or "contains NUL bytes" in message


def test_intensity_bounds_and_duplicate_times_name_lines(tmp_path: Path) -> None:
    csv = _write(tmp_path / "i.csv", f"time,intensity_g_per_kwh\n{T0},350\n2024-05-01T01:00:00Z,1e9\n")
    with pytest.raises(IntensityFileError) as err:
        load_intensity_csv(csv)
    assert str(err.value) == f"{csv}:3: intensity '1e9' outside [0, 3000] gCO2e/kWh"
    csv.write_text(f"time,intensity_g_per_kwh\n{T0},350\n2024-05-01T01:00:00Z,300\n2024-05-01T00:00:00+00:00,310\n")
    with pytest.raises(IntensityFileError) as err:
        load_intensity_csv(csv)
    assert str(err.value) == f"{csv}:4: time 2024-05-01T00:00:00Z is already on line 2"
    cfg = _write(tmp_path / "c.toml",
                 '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 1e9 }\n')
    with pytest.raises(ConfigError) as cerr:
        load_config(cfg, CollectorConfig, environ={})
    assert ("field zones.0.intensity.constant.g_per_kwh: Input should be less than or equal to 3000"
            in str(cerr.value))


def test_influxdb_url_without_scheme_fails_check_config(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.toml", collector_toml("127.0.0.1:8086", "d"))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig, environ={})
    assert "field influxdb.url: Value error, must start with http:// or https://" in str(err.value)


# ---- cluster traces (defect 9) ---------------------------------------------------------------------

CLUSTER = (
    "time,node,gpu,power_w,util_pct,job_id\n"
    f"{T0},a1,0,300,90,j1\n"
    "2024-05-01T01:00:00Z,a1,0,,,\n"          # a1's GPU switched off at 01:00 ...
    "2024-05-01T02:00:00Z,a1,0,200,80,j1\n"   # ... and on again at 02:00
    f"{T0},b1,0,100,50,j2\n"
    "2024-05-01T04:00:00Z,b1,0,0,0,\n"        # the file's latest time: the end for every node
)


def _play(trace_path: Path, node: str, interval_s: float = 60.0) -> tuple[int, float, float, int, int]:
    trace = load_trace_csv(trace_path, node=node)
    src = SimSource(trace, node, interval_s)
    sampler = Sampler(Attributor(""), idle_below_pct=5)
    samples = []
    while not src.finished:
        samples += sampler.take(src.read())
    return (len(samples), sum(s.energy_j for s in samples), sum(s.idle_s for s in samples),
            min(s.start_ns for s in samples), max(s.end_ns for s in samples))


def test_every_node_ends_at_the_files_latest_time_and_absent_time_makes_no_samples(tmp_path: Path) -> None:
    path = _write(tmp_path / "cluster.csv", CLUSTER)
    t0 = parse_time_ns(T0)
    # a1: 300 W for 1 h, absent 1 h, 200 W for 2 h (to the file's end at 04:00): 3 h of samples
    n, energy_j, idle_s, first, last = _play(path, "a1")
    assert (n, first, last) == (180, t0, t0 + 4 * H)
    assert energy_j == pytest.approx(300 * 3600 + 200 * 7200, rel=1e-12)
    assert idle_s == 0.0  # the switched-off hour is not idle GPU time
    n, energy_j, _, first, last = _play(path, "b1")
    assert (n, last) == (240, t0 + 4 * H) and energy_j == pytest.approx(100 * 4 * 3600, rel=1e-12)


def test_a_node_without_rows_replays_nothing_and_exits_0(tmp_path: Path) -> None:
    path = _write(tmp_path / "cluster.csv", CLUSTER)
    assert load_trace_csv(path, node="c9").gpus == {}
    cfg = _write(tmp_path / "agent.toml", f'node = "c9"\ninterval_s = 60\nspool_path = "spool.db"\n'
                 f'[source]\nkind = "sim"\nsim = {{ trace = "cluster.csv" }}\n'
                 f'[collector]\naddress = "127.0.0.1:{free_port()}"\n')
    proc = subprocess.run([*AGENT, "run", "--replay", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[c9] the trace has no rows for node 'c9': nothing to replay" in proc.stderr


def test_replay_says_how_many_samples_and_is_quiet_at_warning(tmp_path: Path) -> None:
    path = _write(tmp_path / "cluster.csv", CLUSTER)
    lines: list[str] = []
    src = SimSource(load_trace_csv(path, node="b1"), "b1", 1.0)
    assert src.samples_estimate == 4 * 3600
    cfg = AgentConfig(node="b1", interval_s=1.0, spool_path=tmp_path / "s.db",
                      source=SourceConfig(kind="sim", sim=SimConfig(trace=path)),
                      collector=CollectorConnection(address=f"127.0.0.1:{free_port()}"))
    stop = asyncio.Event()
    stop.set()  # stop at once: only the start-up lines matter here
    asyncio.run(run_agent(cfg, replay=True, progress=lines.append, stop=stop))
    assert lines[0] == "[b1] replaying 1 GPUs over 4 h at interval_s 1: about 14,400 samples"
    quiet = _write(tmp_path / "a.toml", 'node = "c9"\nspool_path = "s2.db"\n'
                   '[source]\nkind = "sim"\nsim = { trace = "cluster.csv" }\n')
    proc = subprocess.run([*AGENT, "run", "--replay", "--log-level", "WARNING", "--config", str(quiet)],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")


# ---- a restarted replay resumes (defect 11) ---------------------------------------------------------

async def test_a_restarted_replay_resumes_after_what_its_spool_took(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    # 2 GPUs x 2 h at 60 s: 240 samples. Run 1 has no collector: it spools until its backpressure
    # bound (batch 10 x 1 in flight x 4 = 40 pending) and is stopped; run 2 delivers the rest.
    t0 = parse_time_ns(T0)
    trace = _write(tmp_path / "t.csv", f"time,gpu,power_w,util_pct,job_id\n{T0},0,300,90,j\n{T0},1,300,90,j\n"
                   "2024-05-01T02:00:00Z,0,0,0,\n")
    spool = tmp_path / "spool.db"

    def config(port: int) -> AgentConfig:
        return AgentConfig(node="n1", interval_s=60, spool_path=spool,
                           source=SourceConfig(kind="sim", sim=SimConfig(trace=trace)),
                           collector=CollectorConnection(address=f"127.0.0.1:{port}", batch_max_samples=10,
                                                         max_in_flight=1))

    stop = asyncio.Event()
    first = asyncio.create_task(run_agent(config(free_port()), replay=True, progress=None, stop=stop))
    while not spool.exists() or peek_ledger(spool).pending < 40:
        assert not first.done()
        await asyncio.sleep(0.05)
    stop.set()
    run1 = (await first).ledger
    assert run1.acknowledged == 0 and 40 <= run1.sampled < 240 and run1.pending == run1.sampled

    lines: list[str] = []
    racks = '[[racks]]\nname = "r"\nzone = "Z"\npue = 1.0\nnodes = ["n1"]\n'
    toml = collector_toml(influxdb.url, database, racks=racks)
    async with running_collector(tmp_path, toml) as c:
        run2 = (await run_agent(config(c.grpc_port), replay=True, progress=lines.append,
                                progress_every_s=0.0)).ledger
    assert (run2.sampled, run2.acknowledged, run2.pending) == (240, 240, 0)  # not 240 + run 1's
    assert any(line.startswith("[n1] resuming after what the spool already took: from 2024-05-01T")
               for line in lines)
    delivering = [line for line in lines if " replay delivering " in line]
    assert len(delivering) == len(set(delivering))  # waiting for acks: a line only when they move
    assert not any("100.0%" in line for line in lines[:-1] if " replay delivering " in line)
    (res,) = influx_query(influxdb.url, database, "SELECT count(energy_j), sum(energy_j) FROM gpu")
    row = first_row(res)
    assert (row["count"], row["sum"]) == (240, pytest.approx(2 * 300 * 7200, rel=1e-12))
    (res,) = influx_query(influxdb.url, database, "SELECT first(energy_j) FROM gpu")
    assert first_row(res)["time"] == t0
