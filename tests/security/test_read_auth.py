"""Authenticated, scoped reads (issue #10, point 1), with real processes: an agent process replays two
users' jobs into a collector process with a real InfluxDB; three principals with tokens (two users
in different accounts, one operator), an account manager, and a trusted proxy (127.0.0.2) ask over
HTTP and gRPC."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.auth import hash_token
from gridwatt.collector.read_auth import (
    Principal,
    ReadAuth,
    ReadAuthError,
    ReadsConfig,
    load_principals,
    peer_ip_of_grpc,
)
from gridwatt.configfile import ConfigError
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.conftest import collector_toml
from tests.tlscerts import Pki

TOKENS = {
    "alice": "alice-read-token-0123456789abcdef",
    "bob": "bob-read-token-fedcba9876543210",
    "ops": "ops-read-token-00112233445566778899",
    "carol": "carol-read-token-aabbccddeeff0011",
}
NODE_TOKEN = "n1-node-token-5f0c1d2e3a4b6c7d"
PROXY = "127.0.0.2"
#: 300 W for 600 s on one GPU each: 180 kJ = 0.05 kWh per job.
JOB_KWH = 300.0 * 600 / 3.6e6

PRINCIPALS = f"""
[[principals]]
name = "alice"
role = "user"
accounts = ["physics"]
token = "{hash_token(TOKENS['alice'])}"

[[principals]]
name = "bob"
role = "user"
accounts = ["chem"]
token = "{hash_token(TOKENS['bob'])}"

[[principals]]
name = "ops"
role = "operator"
token = "{hash_token(TOKENS['ops'])}"

[[principals]]
name = "carol"
role = "account-manager"
accounts = ["physics"]
token = "{TOKENS['carol']}"
"""


def _trace(folder: Path) -> Path:
    path = folder / "trace.csv"
    path.write_text(
        "time,gpu,power_w,util_pct,job_id,user\n"
        "2022-06-01T00:00:00Z,0,300,90,a-job,alice\n"
        "2022-06-01T00:00:00Z,1,300,90,b-job,bob\n"
        "2022-06-01T00:10:00Z,0,0,0,,\n"
        "2022-06-01T00:10:00Z,1,0,0,,\n"
    )
    return path


def _get(port: int, path: str, headers: dict[str, str] | None = None,
         source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, {"text": body.decode(errors="replace")}
    finally:
        conn.close()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, influxdb: LocalInfluxDB) -> Iterator[CollectorProcess]:
    """A collector process with reads authenticated, and one agent process's replay stored in it."""
    tmp = tmp_path_factory.mktemp("reads")
    (tmp / "principals.toml").write_text(PRINCIPALS)
    (tmp / "principals.toml").chmod(0o640)
    (tmp / "node-tokens").write_text(f"n1 {NODE_TOKEN}\n")
    (tmp / "node.token").write_text(NODE_TOKEN + "\n")
    grpc_port, http_port = new_collector_ports()
    cfg = tmp / "collector.toml"
    cfg.write_text(
        collector_toml(influxdb.url, "reads_acceptance", grpc_port, http_port)
        + f"\n[auth]\ntokens_file = {toml_str(tmp / 'node-tokens')}\n"
        + f"\n[reads]\nprincipals_file = {toml_str(tmp / 'principals.toml')}\n"
        + f'trusted_proxies = ["{PROXY}"]\n'
    )
    agent_cfg = tmp / "agent.toml"
    agent_cfg.write_text(
        f'node = "n1"\ninterval_s = 60\nspool_path = {toml_str(tmp / "spool.db")}\n'
        f'[source]\nkind = "sim"\nsim = {{ trace = {toml_str(_trace(tmp))} }}\n'
        f'[collector]\naddress = "127.0.0.1:{grpc_port}"\ntoken_file = {toml_str(tmp / "node.token")}\n'
    )
    collector = CollectorProcess(cfg, grpc_port, http_port).start()
    try:
        agent = start_agent(agent_cfg, quiet=True)
        assert agent.wait(timeout=120) == 0
        yield collector
    finally:
        collector.stop()


def test_http_reads_need_a_principal(cluster: CollectorProcess) -> None:
    port = cluster.http_port
    assert _get(port, "/healthz")[0] == 200  # health stays open (load balancers)
    for path in ("/v1/jobs/a-job", "/v1/jobs", "/v1/usage", "/v1/racks", "/v1/alerts", "/metrics", "/ui/"):
        status, body = _get(port, path)
        assert status == 401, path
        assert "missing bearer token" in body["error"]
        assert _get(port, path, {"Authorization": "Bearer not-a-known-token-at-all"})[0] == 401
        assert _get(port, path, {"Authorization": "Basic YWxpY2U6eA=="})[0] == 401
        # a node's token writes samples; it never reads
        assert _get(port, path, {"Authorization": f"Bearer {NODE_TOKEN}"})[0] == 401


def test_http_each_user_sees_exactly_their_jobs(cluster: CollectorProcess) -> None:
    port = cluster.http_port
    unknown_status, unknown = _get(port, "/v1/jobs/x-job", bearer("alice"))
    assert unknown_status == 404
    for name, own, other in (("alice", "a-job", "b-job"), ("bob", "b-job", "a-job")):
        status, report = _get(port, f"/v1/jobs/{own}", bearer(name))
        assert status == 200
        assert report["it_energy_kwh"] == pytest.approx(JOB_KWH, rel=1e-9)
        assert report["co2e_kg"] == pytest.approx(JOB_KWH * 1.2 * 350 / 1000, rel=1e-9)
        status, body = _get(port, f"/v1/jobs/{other}", bearer(name))
        # someone else's job answers exactly like an unknown one
        assert (status, body) == (404, {"error": unknown["error"].replace("x-job", other)})
        for path in ("/v1/racks", "/v1/alerts", "/metrics", "/ui/", "/ui/jobs/a-job"):
            assert _get(port, path, bearer(name))[0] == 403
    for job in ("a-job", "b-job"):
        status, report = _get(port, f"/v1/jobs/{job}", bearer("ops"))
        assert status == 200 and report["it_energy_kwh"] == pytest.approx(JOB_KWH, rel=1e-9)
    status, racks = _get(port, "/v1/racks", bearer("ops"))
    assert status == 200 and racks["racks"][0]["it_energy_kwh"] == pytest.approx(2 * JOB_KWH, rel=1e-9)
    assert _get(port, "/ui/", bearer("ops"))[0] == 200  # the web page: operators (not scoped yet)
    status, metrics = _get(port, "/metrics", bearer("ops"))
    assert status == 200 and "gridwatt_collector_samples_stored_total" in metrics["text"]
    # the account manager of "physics" sees its own jobs only, until accounts are stored with jobs
    assert _get(port, "/v1/jobs/a-job", bearer("carol"))[0] == 404


def test_http_identity_header_only_from_the_proxy(cluster: CollectorProcess) -> None:
    port = cluster.http_port
    as_alice = {"X-Forwarded-User": "alice"}
    assert _get(port, "/v1/jobs/a-job", as_alice, source=PROXY)[0] == 200
    assert _get(port, "/v1/jobs/b-job", as_alice, source=PROXY)[0] == 404
    assert _get(port, "/v1/racks", {"X-Forwarded-User": "ops"}, source=PROXY)[0] == 200
    # a user the principals file does not list comes through the proxy as a plain user
    assert _get(port, "/v1/jobs/a-job", {"X-Forwarded-User": "dave"}, source=PROXY)[0] == 404
    # from any other address the header is ignored: no token, 401; with alice's token, alice
    assert _get(port, "/v1/racks", {"X-Forwarded-User": "ops"})[0] == 401
    assert _get(port, "/v1/jobs/b-job", {"X-Forwarded-User": "bob"})[0] == 401
    assert _get(port, "/v1/jobs/b-job", {"X-Forwarded-User": "bob", **bearer("alice")})[0] == 404


def test_through_a_real_authenticating_proxy_process(cluster: CollectorProcess) -> None:
    """A reverse proxy process (HTTP Basic in front, X-Forwarded-User behind, from 127.0.0.2)."""
    import base64
    import time

    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.security.auth_proxy", "--port", str(port), "--upstream",
         cluster.http_url, "--source", PROXY, "--users", "alice:alice-pw,ops:ops-pw"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proxy.stdout is not None
        assert "auth proxy on" in proxy.stdout.readline()

        def via(user: str, password: str, path: str, extra: dict[str, str] | None = None) -> int:
            cred = base64.b64encode(f"{user}:{password}".encode()).decode()
            return _get(port, path, {"Authorization": f"Basic {cred}", **(extra or {})})[0]

        deadline = time.monotonic() + 30
        while via("alice", "alice-pw", "/v1/jobs/a-job") != 200:  # the proxy's socket is listening
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert via("alice", "alice-pw", "/v1/jobs/b-job") == 404
        assert via("alice", "alice-pw", "/v1/racks") == 403
        # a client's own identity header does not get through the proxy
        assert via("alice", "alice-pw", "/v1/jobs/b-job", {"X-Forwarded-User": "bob"}) == 404
        assert via("ops", "ops-pw", "/v1/racks") == 200
        assert via("ops", "ops-pw", "/v1/jobs/b-job") == 200
        assert via("alice", "wrong", "/v1/jobs/a-job") == 401  # the proxy refuses
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def _grpc_get(port: int, job_id: str, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[Any, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.QueryStub(channel)
        try:
            return stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=metadata, timeout=30), None
        except grpc.RpcError as exc:
            return None, exc


def test_grpc_query_is_scoped(cluster: CollectorProcess) -> None:
    port = cluster.grpc_port

    def md(name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {TOKENS[name]}"),)

    for metadata in ((), (("authorization", "Bearer wrong-token-0000000000"),),
                     (("authorization", f"Bearer {NODE_TOKEN}"),), (("x-forwarded-user", "ops"),)):
        report, err = _grpc_get(port, "a-job", metadata)
        assert report is None and err.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
    report, err = _grpc_get(port, "a-job", md("alice"))
    assert err is None and report.it_energy_kwh == pytest.approx(JOB_KWH, rel=1e-9)
    _, unknown = _grpc_get(port, "x-job", md("alice"))
    _, hidden = _grpc_get(port, "b-job", md("alice"))
    assert hidden.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert hidden.details() == unknown.details().replace("x-job", "b-job")
    _, hidden = _grpc_get(port, "a-job", md("bob"))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    for job in ("a-job", "b-job"):
        report, err = _grpc_get(port, job, md("ops"))
        assert err is None and report.job_id == job


def test_cli_reads_with_a_token_file(cluster: CollectorProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "alice.token"
    token_file.write_text(TOKENS["alice"] + "\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gridwatt.cli", "--collector", cluster.http_url, *args],
                              capture_output=True, text=True, timeout=60)

    ok = cli("--token-file", str(token_file), "job", "a-job", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["it_energy_kwh"] == pytest.approx(JOB_KWH, rel=1e-9)
    hidden = cli("--token-file", str(token_file), "job", "b-job")
    assert hidden.returncode == 1 and "no samples stored for job 'b-job' (HTTP 404" in hidden.stderr
    anonymous = cli("job", "a-job")
    assert anonymous.returncode == 1 and "missing bearer token" in anonymous.stderr
    assert "(HTTP 401" in anonymous.stderr


# ---- units: roles, principals file, proxies -----------------------------------------------------


def test_roles() -> None:
    alice = Principal("alice", "user", frozenset({"physics"}))
    carol = Principal("carol", "account-manager", frozenset({"physics"}))
    ops = Principal("ops", "operator")
    assert alice.may_see_job("alice", "chem") and not alice.may_see_job("bob", "physics")
    assert not alice.may_see_job("", "")  # unattributed time is the operators'
    assert carol.may_see_job("bob", "physics") and not carol.may_see_job("bob", "chem")
    assert carol.may_see_job("carol", "") and not carol.may_see_job("bob", "")
    assert ops.may_see_job("", "") and ops.may_see_job("bob", "chem")


def test_principals_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    two = "[[principals]]\nname = \"a\"\nrole = \"user\"\n"
    cases = {
        '[[principals]]\nname = "a"\nrole = "admin"\n': "principal #1: field role",
        '[[principals]]\nname = "a"\nrole = "user"\ntoken = "short"\n': "principal 'a': token must be",
        '[[principals]]\nname = "a"\nrole = "user"\ntoken = "sha256:abc"\n': "64 hex digits",
        f'{two}token = "{TOKENS["bob"]}"\n'
        f'[[principals]]\nname = "b"\nrole = "user"\ntoken = "{TOKENS["bob"]}"\n': "same token as principal",
        two + two: "listed twice",
        '[users]\n': "unknown key(s) ['users']",
        'name = \n': "not valid TOML",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_principals(path)
        assert expected in str(info.value) and str(path) in str(info.value)
        assert TOKENS["bob"] not in str(info.value)


def test_proxy_addresses_and_config_bounds() -> None:
    auth = ReadAuth({}, [], ["10.1.0.0/16", "127.0.0.2"])
    assert auth.trusted("10.1.2.3") and auth.trusted("::ffff:127.0.0.2") and not auth.trusted("10.2.0.1")
    assert auth.identify({"X-Forwarded-User": "eve"}, "10.1.2.3") == Principal("eve", "user")
    with pytest.raises(ReadAuthError):
        auth.identify({"X-Forwarded-User": "eve"}, "10.9.9.9")
    with pytest.raises(ReadAuthError):
        auth.identify({"X-Forwarded-User": "x" * 300}, "10.1.2.3")
    assert peer_ip_of_grpc("ipv4:127.0.0.2:5555") == "127.0.0.2"
    assert peer_ip_of_grpc("ipv6:[::1]:5555") == "::1"
    with pytest.raises(ValueError, match="not an IP address"):
        ReadsConfig(trusted_proxies=["proxy.example"])
    with pytest.raises(ValueError, match="loopback"):
        ReadsConfig(metrics_listen="0.0.0.0:9108")
    with pytest.raises(ValueError, match="both tls_cert_file"):
        ReadsConfig(tls_cert_file=Path("/x.pem"))
    assert not ReadsConfig().enabled and ReadsConfig(trusted_proxies=["10.0.0.1"]).enabled


def test_https_api_and_local_metrics_listener(tmp_path: Path, influxdb: LocalInfluxDB, database: str,
                                              pki: Pki) -> None:
    """HTTP over TLS (cert/key in [reads]); /metrics open on a loopback-only second listener."""
    (tmp_path / "principals.toml").write_text(PRINCIPALS)
    grpc_port, http_port = new_collector_ports()
    metrics_port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        collector_toml(influxdb.url, database, grpc_port, http_port)
        + f"\n[reads]\nprincipals_file = {toml_str(tmp_path / 'principals.toml')}\n"
        + f"tls_cert_file = {toml_str(pki.server_cert)}\ntls_key_file = {toml_str(pki.server_key)}\n"
        + f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
    )
    # started by hand: the harness waits on http:// /healthz, here the local listener's
    collector = CollectorProcess(cfg, grpc_port, metrics_port).start()
    try:
        status, body = _get(metrics_port, "/metrics")
        assert status == 200 and "gridwatt_collector_samples_received_total" in body["text"]
        assert _get(metrics_port, "/v1/jobs/a-job")[0] == 404  # no job routes there
        context = ssl.create_default_context(cafile=str(pki.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", http_port, context=context, timeout=30)
        try:
            conn.request("GET", "/v1/racks", headers=bearer("ops"))
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read()) == {"racks": []}
            conn.request("GET", "/v1/racks")
            resp = conn.getresponse()
            assert resp.status == 401
            resp.read()
        finally:
            conn.close()
        # the CLI over HTTPS, with the private CA and a token file
        (tmp_path / "ops.token").write_text(TOKENS["ops"])
        cli = subprocess.run(
            [sys.executable, "-m", "gridwatt.cli", "--collector", f"https://127.0.0.1:{http_port}",
             "--ca-file", str(pki.ca), "--token-file", str(tmp_path / "ops.token"), "racks", "--json"],
            capture_output=True, text=True, timeout=60, env={})
        assert cli.returncode == 0 and json.loads(cli.stdout) == {"racks": []}, cli.stderr
        no_ca = subprocess.run(
            [sys.executable, "-m", "gridwatt.cli", "--collector", f"https://127.0.0.1:{http_port}",
             "--token-file", str(tmp_path / "ops.token"), "racks"],
            capture_output=True, text=True, timeout=60, env={})
        assert no_ca.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in no_ca.stderr, no_ca.stderr
        # plain HTTP to the TLS port gets no answer
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _get(http_port, "/healthz")
    finally:
        collector.stop()


def test_a_missing_principals_file_fails_closed(tmp_path: Path) -> None:
    auth = ReadAuth.from_config(ReadsConfig(principals_file=tmp_path / "not-yet.toml"))
    assert auth.enabled
    with pytest.raises(ReadAuthError):
        auth.identify({"Authorization": f"Bearer {TOKENS['ops']}"}, "127.0.0.1")
    with pytest.raises(ReadAuthError):
        auth.identify({"X-Forwarded-User": "ops"}, "127.0.0.1")


def test_reads_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    from gridwatt.collector.config import CollectorConfig
    from gridwatt.configfile import load_config

    cfg = tmp_path / "collector.toml"
    cfg.write_text('[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 1.0 }\n'
                   '[reads]\nprincipals_file = "principals.toml"\ntls_cert_file = "c.pem"\n'
                   'tls_key_file = "k.pem"\n')
    reads = load_config(cfg, CollectorConfig, environ={}).reads
    assert (reads.principals_file, reads.tls_cert_file, reads.tls_key_file) == (
        tmp_path / "principals.toml", tmp_path / "c.pem", tmp_path / "k.pem")
