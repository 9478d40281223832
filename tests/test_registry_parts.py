"""A new part is added in one module: its factory and its config model, registered together.

The throwaway parts below live only in this test module (nothing in agent/config.py,
collector/alerts/rules.py or a plugins.py names them): an intensity provider, a GPU source and an
alert sink. A config that names them validates (strictly, with paths from the config file's folder,
errors naming the key path) and builds through the registry; the source's readings reach the
sampler and the store, and the sink receives the alert those readings raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from pydantic import Field

from gridwatt.agent.config import AgentConfig
from gridwatt.agent.runner import build_sampler, build_source, run_agent
from gridwatt.agent.sources.base import GpuReading, SourceContext
from gridwatt.agent.sources.plugins import SOURCES
from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.model import AlertEvent, ScopeWindow
from gridwatt.collector.alerts.sinks import AlertDispatcher, LogSink, build_sinks
from gridwatt.collector.alerts.sinks.base import SinkStats
from gridwatt.collector.alerts.sinks.plugins import SINKS
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.factory import build_provider
from gridwatt.collector.intensity.plugins import PROVIDERS
from gridwatt.collector.intensity.registry import ProviderTable
from gridwatt.collector.stepseries import StepSeries
from gridwatt.configfile import ConfigError, ConfigPath, StrictModel, load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.timeutil import parse_time_ns
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml, first_row, influx_query


class TideConfig(ProviderTable):
    kind: Literal["tide"]
    g_per_kwh: float = Field(ge=0)
    table: ConfigPath | None = None


class TideIntensity:
    def __init__(self, cfg: TideConfig) -> None:
        self.cfg = cfg
        self.source = "tide"

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        return IntensitySeries(StepSeries.constant(self.cfg.g_per_kwh), "tide", "lifecycle")


@pytest.fixture
def tide() -> Iterator[None]:
    PROVIDERS.register("tide", TideConfig)(TideIntensity)
    try:
        yield
    finally:  # the registry is process-wide: leave it as the plugins made it
        PROVIDERS._factories.pop("tide")
        PROVIDERS._configs.pop("tide")


def _config(tmp_path: Path, intensity: str) -> Path:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[[zones]]\nname = "Z"\nintensity = {intensity}\n')
    return cfg


def test_a_provider_registered_in_its_own_module_is_configurable(tmp_path: Path, tide: None) -> None:
    cfg = _config(tmp_path, '{ kind = "chain", providers = ['
                            '{ kind = "tide", g_per_kwh = 7, table = "t.csv" },'
                            ' { kind = "constant", g_per_kwh = 300 }] }')
    c = load_config(cfg, CollectorConfig, environ={})
    chain = c.zones[0].intensity
    tide_cfg = chain.providers[0]  # type: ignore[attr-defined]
    assert isinstance(tide_cfg, TideConfig) and tide_cfg.table == tmp_path / "t.csv"
    built = build_provider(chain)
    assert isinstance(built, FallbackChain) and isinstance(built.providers[0], TideIntensity)
    assert "tide" in PROVIDERS.names()


def test_a_registered_provider_is_strict_and_errors_name_the_path(tmp_path: Path, tide: None) -> None:
    extra = r"field zones\.0\.intensity\.tide\.colour: Extra inputs are not permitted"
    with pytest.raises(ConfigError, match=extra):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = 7, colour = "blue" }'), CollectorConfig,
                    environ={})
    low = r"field zones\.0\.intensity\.tide\.g_per_kwh: Input should be greater"
    with pytest.raises(ConfigError, match=low):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = -1 }'), CollectorConfig, environ={})


def test_an_unknown_provider_kind_names_the_field_and_the_known_kinds(tmp_path: Path) -> None:
    unknown = (r"field zones\.0\.intensity: Input tag 'tide' found using 'kind' does not match any of "
               r"the expected tags: 'chain', 'constant', 'csv', 'electricitymaps', 'uk_carbon_intensity', "
               r"'watttime'")
    with pytest.raises(ConfigError, match=unknown):
        load_config(_config(tmp_path, '{ kind = "tide", g_per_kwh = 7 }'), CollectorConfig, environ={})


# -- a GPU source and an alert sink, each in "its own module" (here) --------------------------------


class ToneConfig(StrictModel):
    """``[source.tone]``: GPUs drawing a steady power at a steady utilisation for some minutes."""

    gpus: int = Field(ge=1, le=16)
    power_w: float = Field(ge=0)
    util_pct: float = Field(ge=0, le=100)
    minutes: int = Field(ge=1)
    start: str
    notes: ConfigPath | None = None


class ToneSource:
    """Plays ``minutes`` one-interval steps from ``start`` (its own clock), as NVML would report them."""

    def __init__(self, cfg: ToneConfig, ctx: SourceContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.start_ns = parse_time_ns(cfg.start)
        self.step_ns = round(ctx.interval_s * 1e9)
        self.reads = 0

    def read(self) -> list[GpuReading]:
        elapsed_ns = self.reads * self.step_ns
        self.reads += 1
        energy_mj = round(self.cfg.power_w * elapsed_ns / 1e6)  # W x ns = 1e-9 J = 1e-6 mJ
        return [GpuReading(index=i, uuid=f"GPU-tone-{self.ctx.node}-{i}", name="tone", t_ns=self.start_ns
                           + elapsed_ns, energy_mj=energy_mj, power_mw=round(self.cfg.power_w * 1000),
                           util_pct=self.cfg.util_pct) for i in range(self.cfg.gpus)]

    @property
    def finished(self) -> bool:
        return self.reads > self.cfg.minutes  # minutes intervals: minutes + 1 readings

    def progress(self) -> float:
        return min(1.0, self.reads / (self.cfg.minutes + 1))

    def close(self) -> None:
        pass


class MemoConfig(StrictModel):
    """``[alerts.sinks.memo]``: keep the events of the listed kinds in memory, under a tag."""

    tag: str = Field(min_length=1)
    events: list[Literal["pending", "firing", "resolved", "cancelled"]] = Field(
        default_factory=lambda: ["firing"])


#: what every memo sink received: (tag, event)
MEMO: list[tuple[str, AlertEvent]] = []


class MemoSink:
    def __init__(self, cfg: MemoConfig) -> None:
        self.cfg = cfg
        self.name = f"memo:{cfg.tag}"
        self.stats = SinkStats()

    async def send(self, event: AlertEvent) -> bool:
        if event.kind not in self.cfg.events:
            self.stats.skipped += 1
            return True
        MEMO.append((self.cfg.tag, event))
        self.stats.delivered += 1
        return True

    async def close(self) -> None:
        pass


def memo_sinks(tables: list[MemoConfig], session: aiohttp.ClientSession | None) -> list[Any]:
    return [MemoSink(t) for t in tables]


@pytest.fixture
def tone_and_memo() -> Iterator[None]:
    """Register the source and the sink as their modules would (one line each), for one test."""
    SOURCES.register("tone", ToneConfig)(ToneSource)
    SINKS.register("memo", MemoConfig)(memo_sinks)
    MEMO.clear()
    try:
        yield
    finally:  # the registries are process-wide: leave them as the plugins made them
        for registry, name in ((SOURCES, "tone"), (SINKS, "memo")):
            registry._factories.pop(name)
            registry._configs.pop(name)
        MEMO.clear()


START = "2024-03-01T00:00:00Z"


def _agent_toml(tmp_path: Path, tone: str, address: str = "127.0.0.1:9") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'node = "n1"\ninterval_s = 60\nspool_path = "spool.db"\n[source]\nkind = "tone"\n'
                   f'[source.tone]\n{tone}\n[collector]\naddress = "{address}"\n')
    return cfg


TONE = f'gpus = 2\npower_w = 100.0\nutil_pct = 2.0\nminutes = 40\nstart = "{START}"\n'


def test_a_source_registered_in_its_own_module_is_configured_built_and_sampled(
        tmp_path: Path, tone_and_memo: None) -> None:
    config = load_config(_agent_toml(tmp_path, TONE + 'notes = "tone.txt"'), AgentConfig, environ={})
    settings = config.source.settings()
    assert isinstance(settings, ToneConfig) and settings.notes == tmp_path / "tone.txt"
    assert (settings.gpus, settings.power_w, settings.minutes) == (2, 100.0, 40)
    source = build_source(config, replay=True)
    assert isinstance(source, ToneSource) and source.ctx == SourceContext("n1", 60.0, True)
    sampler = build_sampler(config)
    samples = [s for _ in range(3) for s in sampler.take(source.read())]
    # the first reading is the baseline; each later one gives one 60 s interval per GPU: 100 W x 60 s
    assert [(s.gpu_index, s.end_ns - s.start_ns, s.energy_j) for s in samples] == [
        (0, 60 * 10**9, 6000.0), (1, 60 * 10**9, 6000.0), (0, 60 * 10**9, 6000.0), (1, 60 * 10**9, 6000.0)]
    # an environment override reaches the source's own table like any other key
    env = load_config(_agent_toml(tmp_path, TONE), AgentConfig, environ={"GRIDWATT_SOURCE__TONE__GPUS": "3"})
    assert env.source.settings().gpus == 3


def test_a_registered_source_table_is_strict_and_errors_name_the_key_path(
        tmp_path: Path, tone_and_memo: None) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_agent_toml(tmp_path, TONE.replace("gpus = 2", "gpus = 0") + "colour = 1"), AgentConfig,
                    environ={})
    cfg = tmp_path / "agent.toml"
    assert str(err.value).splitlines() == [
        f"{cfg}: field source.tone.gpus: Input should be greater than or equal to 1 (got 0)",
        f"{cfg}: field source.tone.colour: Extra inputs are not permitted (got 1)",
    ]
    # the configured source's table may not be left out when its model has required keys
    cfg.write_text('spool_path = "spool.db"\n[source]\nkind = "tone"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, AgentConfig, environ={})
    assert [line.split(": ", 1)[1] for line in str(err.value).splitlines()] == [
        f"field source.tone.{key}: Field required"
        for key in ("gpus", "power_w", "util_pct", "minutes", "start")]
    with pytest.raises(ConfigError, match=r"field source\.rocm: unknown GPU source 'rocm' "
                                          r"\(known: nvml, sim, tone\)$"):
        load_config(_agent_toml(tmp_path, TONE + "[source.rocm]\n"), AgentConfig, environ={})
    with pytest.raises(ConfigError, match=r"field source\.nvml: GPU source 'nvml' has no settings of its own "
                                          r"\(those with settings: sim, tone\)$"):
        load_config(_agent_toml(tmp_path, TONE + "[source.nvml]\n"), AgentConfig, environ={})


def _collector_cfg(tmp_path: Path, sinks: str, db_url: str = "http://127.0.0.1:9",
                   database: str = "d") -> Path:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml(db_url, database) +
                   '[[alerts.rules]]\nname = "rack-idle"\nscope = "rack"\nutil_below_pct = 10\nfor_s = 1800\n'
                   + sinks)
    return cfg


async def test_a_sink_registered_in_its_own_module_is_configured_built_and_sent_events(
        tmp_path: Path, tone_and_memo: None) -> None:
    sinks = ('[alerts.sinks.log]\nenabled = false\n[[alerts.sinks.memo]]\ntag = "a"\n'
             '[[alerts.sinks.memo]]\ntag = "b"\nevents = ["pending", "firing"]\n')
    config = load_config(_collector_cfg(tmp_path, sinks), CollectorConfig, environ={})
    assert [t.tag for t in config.alerts.sinks.tables("memo")] == ["a", "b"]
    built = build_sinks(config.alerts.sinks)
    assert [s.name for s in built] == ["memo:a", "memo:b"]  # registered names in order; log is off
    # the configured rule over 40 idle minutes of rack r1 (2 %): pending at once, firing after 30 min
    minute_ns = 60 * 10**9
    start_ns = parse_time_ns(START)
    windows = [ScopeWindow("rack", "r1", start_ns + m * minute_ns, start_ns + (m + 1) * minute_ns, 2, ("n1",),
                           ("n1/0", "n1/1"), 2.0, 0.2 / 60, 0.24 / 60, 0.084 / 60) for m in range(40)]
    events = AlertEngine(config.alerts.rules).observe_all(windows)
    assert [e.kind for e in events] == ["pending", "firing"]
    await AlertDispatcher(built).dispatch(events)
    got = {tag: [(e.kind, e.rule, e.scope_name) for t, e in MEMO if t == tag] for tag in ("a", "b")}
    assert got == {"a": [("firing", "rack-idle", "r1")],
                   "b": [("pending", "rack-idle", "r1"), ("firing", "rack-idle", "r1")]}


def test_a_registered_sink_table_is_strict_and_errors_name_the_key_path(
        tmp_path: Path, tone_and_memo: None) -> None:
    cfg = _collector_cfg(tmp_path, '[[alerts.sinks.memo]]\ntag = "a"\n[[alerts.sinks.memo]]\ntag = ""\n'
                                   'colour = 1\n[alerts.sinks.pager]\nkey = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig, environ={})
    assert str(err.value).splitlines() == [
        f"{cfg}: field alerts.sinks.memo.1.tag: String should have at least 1 character (got '')",
        f"{cfg}: field alerts.sinks.memo.1.colour: Extra inputs are not permitted (got 1)",
        f"{cfg}: field alerts.sinks.pager: unknown alert sink 'pager' "
        "(known: alertmanager, log, memo, webhooks)",
    ]


def test_the_built_in_sink_tables_keep_their_shape(tmp_path: Path) -> None:
    """[alerts.sinks.log], [[alerts.sinks.webhooks]] and [alerts.sinks.alertmanager], as before."""
    cfg = _collector_cfg(tmp_path, '[alerts.sinks.log]\nlogger = "x"\n[[alerts.sinks.webhooks]]\n'
                                   'url = "http://h/1"\n[[alerts.sinks.webhooks]]\nurl = "http://h/2"\n'
                                   '[alerts.sinks.alertmanager]\nurl = "http://am:9093"\n')
    sinks = load_config(cfg, CollectorConfig, environ={}).alerts.sinks
    assert [s.name for s in build_sinks(sinks)] == ["alertmanager:http://am:9093", "log", "webhook:http://h/1",
                                                    "webhook:http://h/2"]
    assert sinks.webhooks[1].url == "http://h/2" and sinks.log.logger == "x"
    # no [alerts.sinks] at all: the log sink alone, with its defaults
    (only,) = build_sinks(load_config(_collector_cfg(tmp_path, ""), CollectorConfig, environ={}).alerts.sinks)
    assert isinstance(only, LogSink) and only.config.events == ["pending", "firing", "resolved", "cancelled"]


async def test_a_registered_source_feeds_the_collector_and_a_registered_sink_gets_its_alert(
        tmp_path: Path, influxdb: LocalInfluxDB, database: str, tone_and_memo: None) -> None:
    """End to end in one process: the tone source's idle GPUs (2 %) reach the sampler, the spool, a real
    collector and InfluxDB; the collector's rack-idle rule fires after 30 min; the memo sink gets it."""
    toml = _collector_cfg(tmp_path, '[alerts.sinks.memo]\ntag = "e2e"\n', influxdb.url, database).read_text()
    async with running_collector(tmp_path, toml) as c:
        agent = load_config(_agent_toml(tmp_path, TONE, f"127.0.0.1:{c.grpc_port}"), AgentConfig, environ={})
        result = await run_agent(agent, replay=True, progress=None)
        assert result.ledger.acknowledged == 2 * 40
        for _ in range(600):  # the monitor evaluates after the batches are stored
            if MEMO:
                break
            await asyncio.sleep(0.05)
    (res,) = influx_query(influxdb.url, database, "SELECT count(energy_j), sum(energy_j) FROM gpu")
    row = first_row(res)
    assert (row["count"], row["sum"]) == (80, 2 * 100.0 * 40 * 60)  # 2 GPUs x 100 W x 40 min
    (tag, event), = MEMO
    start_ns = parse_time_ns(START)
    assert (tag, event.kind, event.rule, event.scope_kind, event.scope_name) == ("e2e", "firing", "rack-idle",
                                                                                 "rack", "r1")
    assert (event.started_at_ns, event.fired_at_ns) == (start_ns, start_ns + 30 * 60 * 10**9)
    # 2 GPUs x 100 W for the 30 idle minutes, x PUE 1.2 (the rack's in collector_toml)
    assert event.wasted_energy_kwh == pytest.approx(2 * 100 * 0.5 / 1000 * 1.2, rel=1e-9)
