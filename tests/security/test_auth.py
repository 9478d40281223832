"""Per-node bearer tokens checked by the collector; tokens never appear in logs or errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
import pytest

from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.spool import Spool
from gridwatt.collector.auth import AuthError, NodeAuth, hash_token
from gridwatt.collector.config import AuthConfig, CollectorConfig
from gridwatt.configfile import ConfigError, load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, running_collector, sim_samples
from tests.conftest import collector_toml
from tests.security.helpers import EXPECTED_SAMPLES, agent_config, replay, stored, tls_server_toml
from tests.tlscerts import Pki

T0 = 1_650_000_000 * 10**9
TOKEN_N1 = "n1-secret-token-5f0c1d2e3a4b"
TOKEN_N2 = "n2-secret-token-9a8b7c6d5e4f"
RACKS = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["n1", "n2"]\n'


def auth_toml(tokens_file: Path, extra: str = "") -> str:
    return RACKS + f"\n[auth]\ntokens_file = {toml_str(tokens_file)}\n{extra}"


def write_tokens(tmp_path: Path) -> Path:
    """n1's token in clear, n2's stored as its hash (the recommended form)."""
    path = tmp_path / "tokens"
    path.write_text(f"# node token\nn1 {TOKEN_N1}\n\nn2 {hash_token(TOKEN_N2)}\n")
    path.chmod(0o640)
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def one_batch(node: str, batch_id: int = 1) -> pb.Batch:
    return batches(node, sim_samples(node, 2, T0, 600, 300.0, 60.0), 1000, first_id=batch_id)[0]


# ---- token files and config ---------------------------------------------------------------------


def test_lines_and_toml_token_files_and_hashes(tmp_path: Path) -> None:
    lines = write_tokens(tmp_path)
    toml = tmp_path / "tokens.toml"
    toml.write_text(f'[tokens]\nn1 = "{TOKEN_N1}"\nn2 = "{hash_token(TOKEN_N2)}"\n')
    for path in (lines, toml):
        auth = NodeAuth.from_config(AuthConfig(tokens_file=path))
        assert auth.enabled and auth.token_count == 2
        assert auth.identify(bearer(TOKEN_N1), {}).token_node == "n1"
        assert auth.identify(bearer(TOKEN_N2), {}).token_node == "n2"
        assert auth.identify([("authorization", f"bearer  {TOKEN_N2} ")], {}).token_node == "n2"


def test_auth_is_off_without_tokens() -> None:
    auth = NodeAuth.from_config(AuthConfig())
    assert not auth.enabled and auth.token_count == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("n1 short\n", "token of node 'n1' must be at least 16 characters"),
        (f"n1 {TOKEN_N1}\nn1 {TOKEN_N2}\n", "node 'n1' has a token already"),
        (f"n1 {TOKEN_N1}\nn2 {TOKEN_N1}\n", "node 'n2' has the same token as node 'n1'"),
        (f"n1 {TOKEN_N1} extra\n", ":1: expected `node token` (two fields), got 3 fields"),
        ("n1 sha256:abc\n", "sha256: must be followed by 64 hex digits"),
    ],
)
def test_bad_token_files_name_the_problem_never_the_token(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        NodeAuth.from_config(AuthConfig(tokens_file=path))
    assert message in str(err.value)
    for secret in (TOKEN_N1, TOKEN_N2, "short"):
        assert secret not in str(err.value)


def test_tokens_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml("http://127.0.0.1:1", "db"))
    config = load_config(cfg, CollectorConfig, environ={"GRIDWATT_AUTH__TOKENS": f'{{ n1 = "{TOKEN_N1}" }}'})
    auth = NodeAuth.from_config(config.auth)
    assert auth.identify(bearer(TOKEN_N1), {}).token_node == "n1"
    assert TOKEN_N1 not in repr(config)
    bad = load_config  # a non-string token is refused without echoing the value
    with pytest.raises(ConfigError) as err:
        bad(cfg, CollectorConfig, environ={"GRIDWATT_AUTH__TOKENS": "{ n1 = 1234567890123456789 }"})
    assert "token of node(s) ['n1'] must be a string" in str(err.value)
    assert "1234567890123456789" not in str(err.value)


def test_binding_nodes_to_cert_names_needs_mutual_tls(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.toml"
    racks = RACKS + "\n[auth]\nbind_node_to_cert_cn = true\n"
    cfg.write_text(collector_toml("http://127.0.0.1:1", "db", racks=racks))
    with pytest.raises(ConfigError, match="bind_node_to_cert_cn needs mutual TLS"):
        load_config(cfg, CollectorConfig)


def test_identify_and_authorize_codes() -> None:
    auth = NodeAuth({"n1": bytes.fromhex(hash_token(TOKEN_N1)[7:])})
    cases = [((), "missing bearer token"), ([("authorization", "Basic abc")], "malformed authorization"),
             (bearer("x" * 30), "unknown bearer token")]
    for metadata, words in cases:
        with pytest.raises(AuthError) as err:
            auth.identify(metadata, {})
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED and words in str(err.value)
    identity = auth.identify(bearer(TOKEN_N1), {})
    auth.authorize(identity, "n1")
    with pytest.raises(AuthError) as err:
        auth.authorize(identity, "n2")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(err.value) == "the token belongs to node 'n1', not to 'n2'"


# ---- over real gRPC -----------------------------------------------------------------------------


async def test_tokens_checked_on_every_rpc_and_nothing_stored_when_refused(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    toml = collector_toml(influxdb.url, database, racks=auth_toml(write_tokens(tmp_path)))
    errors: list[str] = []
    async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
        f"127.0.0.1:{c.grpc_port}"
    ) as ch:
        stub = pb_grpc.IngestStub(ch)

        async def write(batch: pb.Batch, md: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            try:
                await stub.Write(batch, metadata=md, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.details() or "")
                return exc.code()
            return grpc.StatusCode.OK

        assert await write(one_batch("n1"), ()) == grpc.StatusCode.UNAUTHENTICATED
        assert await write(one_batch("n1"), bearer(TOKEN_N1 + "x")) == grpc.StatusCode.UNAUTHENTICATED
        assert await write(one_batch("n2"), bearer(TOKEN_N1)) == grpc.StatusCode.PERMISSION_DENIED
        assert stored(influxdb, database) == (0, 0.0)
        assert await write(one_batch("n1"), bearer(TOKEN_N1)) == grpc.StatusCode.OK
        assert await write(one_batch("n2"), bearer(TOKEN_N2)) == grpc.StatusCode.OK  # hashed in the file
        assert stored(influxdb, database, "n1")[0] == 20
        assert stored(influxdb, database, "n2")[0] == 20

        # Stream: no token → refused before anything is read
        call = stub.Stream()
        await call.write(one_batch("n1", 10))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        errors.append(err.value.details() or "")

        # Stream: n1's token; its own batch is stored, then a batch for n2 ends the stream
        call = stub.Stream(metadata=bearer(TOKEN_N1))
        await call.write(one_batch("n1", 11))
        assert (await call.read()).code == 0
        await call.write(one_batch("n2", 12))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.details() == "the token belongs to node 'n1', not to 'n2'"
        errors.append(err.value.details() or "")

        # Check RPC: same rules, and says where the node is
        resp = await stub.Check(pb.CheckRequest(node="n2"), metadata=bearer(TOKEN_N2), timeout=5)
        assert (resp.node, resp.rack, resp.zone, resp.authenticated, resp.auth_required) == (
            "n2", "r1", "Z", True, True)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(pb.CheckRequest(node="n1"), metadata=bearer(TOKEN_N2), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stored(influxdb, database, "n2")[0] == 20  # the refused stream batch was not stored
    assert errors == [
        "missing bearer token: set collector.token_file in the agent's config",
        "unknown bearer token",
        "the token belongs to node 'n1', not to 'n2'",
        "missing bearer token: set collector.token_file in the agent's config",
        "the token belongs to node 'n1', not to 'n2'",
    ]
    refused = [r.getMessage() for r in caplog.records if r.name == "gridwatt.collector.ingest"]
    assert sum("refused UNAUTHENTICATED" in m for m in refused) == 3
    assert sum("refused PERMISSION_DENIED" in m for m in refused) == 3
    _assert_no_token_anywhere(caplog, errors)


async def test_agent_with_its_token_replays_and_a_wrong_token_is_logged_without_it(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "agent-token"
    token_file.write_text(TOKEN_N1 + "\n")
    toml = collector_toml(influxdb.url, database, racks=auth_toml(write_tokens(tmp_path)))
    async with running_collector(tmp_path, toml) as c:
        result = await replay(agent_config(tmp_path, c.grpc_port, token_file=token_file))
        assert result.ledger.acknowledged == EXPECTED_SAMPLES
        # n2 configured with n1's token: refused, its samples stay spooled for a later resend
        spool = Spool(tmp_path / "spool-n2.db")
        spool.append((s.start_ns, s.energy_j, s.SerializeToString()) for s in one_batch("n2").gpu_samples)
        conn = CollectorConnection(address=f"127.0.0.1:{c.grpc_port}", token=TOKEN_N1)
        shipper = Shipper("n2", spool, conn)
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=1.5)
        stop.set()
        await task
        assert spool.pending == 20
        spool.close()
    assert shipper.stats.last_error == "PERMISSION_DENIED: the token belongs to node 'n1', not to 'n2'"
    assert stored(influxdb, database, "n1")[0] == EXPECTED_SAMPLES
    assert stored(influxdb, database, "n2")[0] == 0
    assert any("PERMISSION_DENIED" in r.getMessage() for r in caplog.records if r.name.endswith("shipper"))
    _assert_no_token_anywhere(caplog, [shipper.stats.last_error])


async def test_node_bound_to_client_certificate_name(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, pki: Pki
) -> None:
    toml = collector_toml(influxdb.url, database, extra_server=tls_server_toml(pki, mutual=True),
                          racks=RACKS + "\n[auth]\nbind_node_to_cert_cn = true\n")
    async with running_collector(tmp_path, toml) as c:
        mine = agent_config(tmp_path, c.grpc_port, tls=True, ca_file=pki.ca,
                            cert_file=pki.client_cert, key_file=pki.client_key)  # CN=n1
        assert (await replay(mine)).ledger.acknowledged == EXPECTED_SAMPLES
        creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client2_key.read_bytes(),
                                             pki.client2_cert.read_bytes())  # CN=n2
        async with grpc.aio.secure_channel(f"127.0.0.1:{c.grpc_port}", creds) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.IngestStub(ch).Write(one_batch("n1", 50), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "the client certificate is for 'n2', not for node 'n1'"
    assert stored(influxdb, database, "n1")[0] == EXPECTED_SAMPLES


def _assert_no_token_anywhere(caplog: pytest.LogCaptureFixture, messages: list[str]) -> None:
    texts = [r.getMessage() for r in caplog.records] + [caplog.text, *messages]
    assert texts
    for text in texts:
        for secret in (TOKEN_N1, TOKEN_N2, TOKEN_N1 + "x"):
            assert secret not in text


def test_hash_token_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import io

    from gridwatt.collector.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN_N1 + "\n"))
    assert main(["hash-token"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "sha256:" + hashlib.sha256(TOKEN_N1.encode()).hexdigest()
    auth = NodeAuth.from_config(AuthConfig(tokens={"n1": out}))
    assert auth.identify(bearer(TOKEN_N1), {}).token_node == "n1"
