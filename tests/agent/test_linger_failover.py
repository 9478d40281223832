"""Pure parts of agent-side batching and collector failover (processes: tests/e2e/test_scale_out.py)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from gridwatt.agent.config import AgentConfig
from gridwatt.agent.shipper import first_target, lingering_s
from gridwatt.configfile import ConfigError, load_config


def test_lingering_waits_for_the_rest_of_linger_unless_full_or_flushing() -> None:
    assert lingering_s(8, 1000, 2.0, 0.5, flushing=False) == 1.5
    assert lingering_s(8, 1000, 2.0, 2.0, flushing=False) == 0.0
    assert lingering_s(8, 1000, 2.0, 7.0, flushing=False) == 0.0
    assert lingering_s(1000, 1000, 2.0, 0.0, flushing=False) == 0.0  # full batch
    assert lingering_s(8, 1000, 2.0, 0.0, flushing=True) == 0.0  # stopping or draining
    assert lingering_s(8, 1000, 0.0, 0.0, flushing=False) == 0.0  # linger off


def test_first_target_spreads_nodes_by_a_stable_hash() -> None:
    assert first_target("n1", 1) == 0
    assert first_target("gpu-node-17", 3) == zlib.crc32(b"gpu-node-17") % 3
    assert {first_target(f"n{i}", 2) for i in range(20)} == {0, 1}


def _load(tmp_path: Path, collector: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'node = "n1"\n[collector]\n{collector}\n')
    return load_config(path, AgentConfig)


def test_addresses_replace_address_and_the_single_key_still_works(tmp_path: Path) -> None:
    assert _load(tmp_path, 'address = "c:1"').collector.targets() == ["c:1"]
    both = _load(tmp_path, 'address = "c:1"\naddresses = ["a:1", "b:2"]')
    assert both.collector.targets() == ["a:1", "b:2"]
    assert _load(tmp_path, "").collector.linger_s == 5.0


@pytest.mark.parametrize(("value", "reason"), [
    ('addresses = ["a:1", "nohost"]', "'nohost' must be host:port"),
    ('addresses = ["a:1", "a:1"]', "lists an address twice"),
    ("linger_s = -1", "greater than or equal to 0"),
])
def test_bad_addresses_and_linger_are_one_line_naming_the_field(
    tmp_path: Path, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, value)
    message = str(err.value)
    assert "\n" not in message and "collector." in message and reason in message, message
