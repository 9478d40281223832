"""``gridwatt-agent check`` against an in-process collector, with the simulated and fake-NVML sources."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from pathlib import Path

import pytest

from gridwatt.agent.check import CheckReport, check_collector, check_source, check_spool
from gridwatt.agent.sources.nvml.source import NvmlSource
from gridwatt.collector.auth import hash_token
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from gridwatt.demo_harness.processes import toml_str
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml
from tests.security.helpers import agent_config

TOKEN = "n1-check-token-0123456789abcdef"
RACKS = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["n1"]\n'


def agent_toml(tmp_path: Path, port: int, node: str = "n1", token: str = TOKEN) -> Path:
    token_file = tmp_path / f"token-{node}"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    path = tmp_path / f"agent-{node}.toml"
    path.write_text(
        f'node = "{node}"\nspool_path = {toml_str(tmp_path / "spool" / "spool.db")}\n'
        '[source]\nkind = "sim"\n[source.sim]\ngpus = 2\nenergy_counter = true\n'
        f'[collector]\naddress = "127.0.0.1:{port}"\ntoken_file = {toml_str(token_file)}\n'
    )
    return path


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridwatt.agent.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def tokens_toml(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"n1 {hash_token(TOKEN)}\n")
    path.chmod(0o600)
    return RACKS + f"\n[auth]\ntokens_file = {toml_str(path)}\n"


async def test_check_passes_on_a_ready_node(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> None:
    toml = collector_toml(influxdb.url, database, racks=tokens_toml(tmp_path))
    async with running_collector(tmp_path, toml) as c:
        cfg = agent_toml(tmp_path, c.grpc_port)
        rc, out, err = await run_cli("check", "--config", str(cfg))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    gpu_line = ("✓   GPU {i} NVIDIA A100-SXM4-80GB (simulated) ({u}): energy by energy counter; fields "
                "energy_counter, power, utilization, memory, temperature, power_limit; unsupported sm_clock")
    assert lines[:3] == [
        f"✓ config {cfg}: valid (node 'n1')",
        "✓ GPU source sim: 2 GPUs",
        gpu_line.format(i=0, u=lines[2].split("(")[2].split(")")[0]),
    ]
    assert lines[3] == gpu_line.format(i=1, u=lines[3].split("(")[2].split(")")[0])
    assert lines[4:] == [
        f"✓ spool {tmp_path / 'spool' / 'spool.db'}: folder {tmp_path / 'spool'} does not exist "
        "(it will be created)",
        f"✓ collector 127.0.0.1:{c.grpc_port}: reachable, gridwatt 0.1.0",
        "✓ auth: accepted for node 'n1'",
        "! the token is sent without TLS: anyone on the path can read it; set collector.tls",
        "✓ node 'n1': known to the collector (rack r1, zone Z)",
        "all checks passed",
    ]
    assert TOKEN not in out


async def test_check_fails_on_a_wrong_token_without_showing_it(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    wrong = "n1-wrong-token-aaaaaaaaaaaaaaaa"
    toml = collector_toml(influxdb.url, database, racks=tokens_toml(tmp_path))
    async with running_collector(tmp_path, toml) as c:
        cfg = agent_toml(tmp_path, c.grpc_port, token=wrong)
        rc, out, err = await run_cli("check", "--config", str(cfg))
    assert rc == 1
    assert "✗ auth: refused: UNAUTHENTICATED: unknown bearer token" in out.splitlines()
    assert out.splitlines()[-1] == "some checks failed (✗)"
    assert wrong not in out + err and TOKEN not in out + err


async def test_check_names_unknown_node_and_unreachable_collector(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        report = CheckReport()
        await check_collector(agent_config(tmp_path, c.grpc_port, node="zz"), report)
        assert report.failed
        assert report.lines == [
            f"✓ collector 127.0.0.1:{c.grpc_port}: reachable",
            "✓ auth: accepted",
            "✗ node 'zz': node 'zz' is not in any rack of the collector's config "
            "and auto-registration is off",
        ]
        report = CheckReport()
        await check_collector(agent_config(tmp_path, c.grpc_port), report)
        assert not report.failed
        assert "! auth: none configured on either side (fine for tests, not for production)" in report.lines
    port = free_port()
    report = CheckReport()
    await check_collector(agent_config(tmp_path, port), report, timeout_s=3)
    assert report.failed and len(report.lines) == 1
    assert report.lines[0].startswith(f"✗ collector 127.0.0.1:{port}: unreachable: UNAVAILABLE: ")
    assert report.lines[0].endswith(
        f"(nothing listens on 127.0.0.1:{port}: is gridwatt-collector running there?)")


async def test_check_probes_every_failover_address(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """``addresses`` = [a running collector, a dead port]: each is reported; the dead one is a warning
    while the live one passes (exit 0); with only dead addresses the check fails (exit 1)."""
    dead, dead2 = free_port(), free_port()
    toml = collector_toml(influxdb.url, database, racks=tokens_toml(tmp_path))
    async with running_collector(tmp_path, toml) as c:
        cfg = agent_toml(tmp_path, c.grpc_port)
        live = f"127.0.0.1:{c.grpc_port}"
        text = cfg.read_text().replace(f'address = "{live}"', f'addresses = ["{live}", "127.0.0.1:{dead}"]')
        cfg.write_text(text)
        rc, out, err = await run_cli("check", "--config", str(cfg))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    at = lines.index(f"✓ collector {live}: reachable, gridwatt 0.1.0")
    assert lines[at:at + 4] == [
        f"✓ collector {live}: reachable, gridwatt 0.1.0",
        f"✓ collector {live}: auth: accepted for node 'n1'",
        f"! collector {live}: the token is sent without TLS: anyone on the path can read it; "
        "set collector.tls",
        f"✓ collector {live}: node 'n1': known to the collector (rack r1, zone Z)",
    ]
    assert lines[at + 4].startswith(f"! collector 127.0.0.1:{dead}: unreachable: UNAVAILABLE: ")
    assert lines[at + 4].endswith(f"(nothing listens on 127.0.0.1:{dead}: is gridwatt-collector running "
                                  "there?) (the agent fails over to the other addresses)")
    assert lines[at + 5:] == ["✓ collectors: 1 of 2 addresses usable", "all checks passed"]

    cfg.write_text(text.replace(live, f"127.0.0.1:{dead2}"))
    rc, out, err = await run_cli("check", "--config", str(cfg))
    assert (rc, err) == (1, "")
    lines = out.splitlines()
    for port in (dead2, dead):
        unreachable = f"✗ collector 127.0.0.1:{port}: unreachable: UNAVAILABLE: "
        assert any(line.startswith(unreachable) for line in lines)
    assert lines[-2:] == ["✗ collectors: 0 of 2 addresses usable (the agent cannot deliver anywhere)",
                          "some checks failed (✗)"]


async def test_check_fails_when_an_answering_replica_refuses_the_node(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """A replica that answers but refuses the node fails the check even when another address passes:
    after a failover the agent would be refused there."""
    (tmp_path / "c2").mkdir()
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c1, \
            running_collector(tmp_path / "c2", collector_toml(influxdb.url, database, racks=RACKS.replace(
                '"n1"', '"n2"'))) as c2:
        a1, a2 = f"127.0.0.1:{c1.grpc_port}", f"127.0.0.1:{c2.grpc_port}"
        report = CheckReport()
        await check_collector(agent_config(tmp_path, c1.grpc_port, addresses=[a1, a2]), report)
    assert report.failed
    assert report.lines == [
        f"✓ collector {a1}: reachable, gridwatt 0.1.0",
        f"! collector {a1}: auth: none configured on either side (fine for tests, not for production)",
        f"✓ collector {a1}: node 'n1': known to the collector (rack r1, zone Z)",
        f"✓ collector {a2}: reachable",
        f"✓ collector {a2}: auth: accepted",
        f"✗ collector {a2}: node 'n1': node 'n1' is not in any rack of the collector's config "
        "and auto-registration is off",
        "✓ collectors: 1 of 2 addresses usable",
    ]


@pytest.mark.e2e
async def test_check_cli_config_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("interval_s = -5\n")
    rc, out, err = await run_cli("check", "--config", str(bad))
    assert (rc, out) == (1, "")
    assert err == f"✗ {bad}: field interval_s: Input should be greater than 0 (got -5)\n"


def test_check_source_with_nvml_lists_fields_and_power_method(tmp_path: Path) -> None:
    h100 = FakeGpu("GPU-00000000-1111-2222-3333-444444444444", sm_clock_mhz=1980)
    p100 = FakeGpu("GPU-11111111-1111-2222-3333-444444444444", name="Tesla P100-PCIE-16GB",
                   supports_energy=False, supports_power_fields=False, unsupported={"temperature"})
    clock = itertools.count(1_700_000_000_000_000_000, 10**9)
    source = NvmlSource(nvml_module=FakeNvml([h100, p100]), clock_ns=lambda: next(clock))
    config = agent_config(tmp_path, 1)
    config.source.kind = "nvml"
    report = CheckReport()
    check_source(config, report, source)
    assert not report.failed
    assert report.lines == [
        "✓ GPU source nvml: 2 GPUs",
        "✓   GPU 0 NVIDIA H100 80GB HBM3 (GPU-00000000-1111-2222-3333-444444444444): energy by energy "
        "counter; fields energy_counter, power, utilization, memory, temperature, power_limit, sm_clock; "
        "power via field_average",
        "✓   GPU 1 Tesla P100-PCIE-16GB (GPU-11111111-1111-2222-3333-444444444444): energy by power "
        "integration (no energy counter); fields power, utilization, memory, power_limit, sm_clock; "
        "unsupported energy_counter, temperature; power via power_usage",
    ]


def test_check_source_reports_nvml_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gridwatt.agent.sources.nvml.source as nvml_source

    monkeypatch.setattr(nvml_source, "_import_pynvml", lambda: FakeNvml([], init_error=9))
    config = agent_config(tmp_path, 1)
    config.source.kind = "nvml"
    report = CheckReport()
    check_source(config, report)
    assert report.failed
    assert report.lines == ["✗ GPU source nvml: NVML cannot be used: the NVIDIA kernel driver is not loaded "
                            "(NVML error 9: Driver Not Loaded). The simulated source still works: "
                            'set [source] kind = "sim".']


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_spool_folder_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    report = CheckReport()
    check_spool(folder / "spool.db", report)
    assert report.failed
    spool = folder / "spool.db"
    assert report.lines == [f"✗ spool {spool}: folder {folder} is not writable by uid {os.getuid()}"]
