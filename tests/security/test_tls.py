"""TLS and mutual TLS between agent and collector, with a PKI generated at test time."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gridwatt.agent.check import CheckReport, check_collector
from gridwatt.agent.shipper import make_channel
from gridwatt.collector.config import CollectorConfig
from gridwatt.configfile import ConfigError, load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml
from tests.security.helpers import (
    EXPECTED_J,
    EXPECTED_SAMPLES,
    agent_config,
    replay,
    stored,
    tls_server_toml,
)
from tests.tlscerts import Pki


async def _check_rpc(config_kwargs: dict[str, object], tmp_path: Path, port: int) -> grpc.StatusCode:
    """Status of one Check call from an agent configured with ``config_kwargs``."""
    conn = agent_config(tmp_path, port, **config_kwargs).collector
    async with make_channel(conn) as ch:
        try:
            await pb_grpc.IngestStub(ch).Check(pb.CheckRequest(node="n1"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_replay_through_tls_stores_every_sample(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    toml = collector_toml(influxdb.url, database, extra_server=tls_server_toml(pki, mutual=False))
    async with running_collector(tmp_path, toml) as c:
        result = await replay(agent_config(tmp_path, c.grpc_port, tls=True, ca_file=pki.ca))
    assert result.ledger.acknowledged == EXPECTED_SAMPLES and result.ledger.pending == 0
    assert stored(influxdb, database) == (EXPECTED_SAMPLES, pytest.approx(EXPECTED_J, rel=1e-9))


async def test_replay_through_mutual_tls_stores_every_sample(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    toml = collector_toml(influxdb.url, database, extra_server=tls_server_toml(pki, mutual=True))
    async with running_collector(tmp_path, toml) as c:
        config = agent_config(tmp_path, c.grpc_port, tls=True, ca_file=pki.ca,
                              cert_file=pki.client_cert, key_file=pki.client_key)
        result = await replay(config)
    assert result.ledger.acknowledged == EXPECTED_SAMPLES
    assert stored(influxdb, database) == (EXPECTED_SAMPLES, pytest.approx(EXPECTED_J, rel=1e-9))


async def test_mutual_tls_refuses_clients_without_a_cert_of_its_ca(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    toml = collector_toml(influxdb.url, database, extra_server=tls_server_toml(pki, mutual=True))
    async with running_collector(tmp_path, toml) as c:
        port = c.grpc_port
        no_cert = {"tls": True, "ca_file": pki.ca}
        foreign = {"tls": True, "ca_file": pki.ca, "cert_file": pki.foreign_cert, "key_file": pki.foreign_key}
        good = {"tls": True, "ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
        assert await _check_rpc(no_cert, tmp_path, port) == grpc.StatusCode.UNAVAILABLE
        assert await _check_rpc(foreign, tmp_path, port) == grpc.StatusCode.UNAVAILABLE
        assert await _check_rpc(good, tmp_path, port) == grpc.StatusCode.OK
        # the agent's check explains each refusal
        report = CheckReport()
        await check_collector(agent_config(tmp_path, port, **no_cert), report)  # type: ignore[arg-type]
        assert report.failed
        assert "probably requires a client certificate (mutual TLS)" in report.lines[-1]
        report = CheckReport()
        await check_collector(agent_config(tmp_path, port, **foreign), report)  # type: ignore[arg-type]
        assert report.failed
        assert "does not trust the client certificate" in report.lines[-1]
    assert stored(influxdb, database) == (0, 0.0)


async def test_plaintext_client_to_tls_collector_fails_with_a_clear_error(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    toml = collector_toml(influxdb.url, database, extra_server=tls_server_toml(pki, mutual=False))
    async with running_collector(tmp_path, toml) as c:
        assert await _check_rpc({}, tmp_path, c.grpc_port) == grpc.StatusCode.UNAVAILABLE
        report = CheckReport()
        await check_collector(agent_config(tmp_path, c.grpc_port), report)
        wrong_ca = CheckReport()
        await check_collector(agent_config(tmp_path, c.grpc_port, tls=True, ca_file=pki.other_ca), wrong_ca)
    assert report.failed and len(report.lines) == 1
    (line,) = report.lines
    assert line.startswith(f"✗ collector 127.0.0.1:{c.grpc_port}: unreachable: UNAVAILABLE: ")
    assert "Socket closed" in line
    assert line.endswith("(the collector closed the connection: it probably requires TLS; "
                         "set collector.tls = true and collector.ca_file)")
    assert "not signed by collector.ca_file" in wrong_ca.lines[-1]


async def test_tls_client_to_plaintext_collector_is_explained(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        report = CheckReport()
        await check_collector(agent_config(tmp_path, c.grpc_port, tls=True, ca_file=pki.ca), report)
    assert report.failed
    assert "does not speak TLS on this port" in report.lines[-1]


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ('tls_cert_file = "c.pem"\n', "TLS needs both tls_cert_file and tls_key_file"),
        ('tls_key_file = "k.pem"\n', "TLS needs both tls_cert_file and tls_key_file"),
        ('tls_client_ca_file = "ca.pem"\n', "tls_client_ca_file (mutual TLS) needs tls_cert_file"),
    ],
)
def test_half_a_tls_setup_is_a_config_error_not_plaintext(tmp_path: Path, server: str, message: str) -> None:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml("http://127.0.0.1:1", "db", extra_server=server))
    with pytest.raises(ConfigError) as err:
        load_config(cfg, CollectorConfig)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{cfg}: field server:")
