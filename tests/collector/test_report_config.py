"""[reports] configuration: one-line errors, and which market-based factor holds when."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.report import market_factor
from gridwatt.collector.report_config import MarketZone, ReportsConfig
from gridwatt.configfile import ConfigError, load_config
from gridwatt.timeutil import parse_time_ns

ZONES = '[[zones]]\nname = "DE"\nintensity = { kind = "constant", g_per_kwh = 400.0 }\n'


def _load(tmp_path: Path, reports: str) -> CollectorConfig:
    path = tmp_path / "collector.toml"
    path.write_text(ZONES + reports)
    return load_config(path, CollectorConfig, environ={})


@pytest.mark.parametrize(("reports", "expected"), [
    ('[reports]\ntime_zone = "Mars/Olympus"\n', "'Mars/Olympus' is not an IANA time zone"),
    ('[reports]\nembodied_g_per_gpu_hour = 30\n', "embodied_source must name"),
    ('[reports]\nembodied_g_per_gpu_hour = -1\n', "embodied_g_per_gpu_hour"),
    ('[[reports.market]]\nzone = "FR"\n', "reports.market: zone 'FR' is not among zones"),
    ('[[reports.market]]\nzone = "DE"\nresidual_mix_g_per_kwh = 500\n', "residual_mix_source must name"),
    ('[[reports.market]]\nzone = "DE"\n[[reports.market.contracts]]\nstart = "2022-02-01T00:00:00Z"\n'
     'end = "2022-01-01T00:00:00Z"\ng_per_kwh = 0\nsource = "ppa"\n',
     "end 2022-01-01T00:00:00Z is not after"),
    ('[[reports.market]]\nzone = "DE"\n'
     '[[reports.market.contracts]]\nstart = "2022-01-01T00:00:00Z"\nend = "2022-03-01T00:00:00Z"\n'
     'g_per_kwh = 0\nsource = "a"\n'
     '[[reports.market.contracts]]\nstart = "2022-02-01T00:00:00Z"\nend = "2022-04-01T00:00:00Z"\n'
     'g_per_kwh = 10\nsource = "b"\n', "contracts 'a' and 'b' overlap"),
])
def test_bad_reports_config_is_one_clear_error(tmp_path: Path, reports: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, reports)
    message = str(info.value)
    assert expected in message and "collector.toml" in message and "\n" not in message.strip()


def test_market_factor_contract_then_residual_then_location() -> None:
    market = MarketZone.model_validate({
        "zone": "DE", "residual_mix_g_per_kwh": 561.0, "residual_mix_source": "AIB 2022",
        "contracts": [{"start": "2022-01-01T00:00:00Z", "end": "2022-07-01T00:00:00Z", "g_per_kwh": 12.5,
                       "source": "PPA"}],
    })
    assert market_factor(market, parse_time_ns("2022-01-01T00:00:00Z")) == (12.5, "contract: PPA")
    assert market_factor(market, parse_time_ns("2022-06-30T23:00:00Z")) == (12.5, "contract: PPA")
    assert market_factor(market, parse_time_ns("2022-07-01T00:00:00Z")) == (561.0, "residual mix: AIB 2022")
    factor, source = market_factor(None, 0)
    assert factor is None and source.startswith("location-based factor")
    assert ReportsConfig().time_zone == "UTC" and ReportsConfig().embodied_g_per_gpu_hour == 0.0
