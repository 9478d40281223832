"""Findings 1, 2, 4, 6 and 11 of issue #8, each attack run while a well-behaved agent streams."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from gridwatt.agent.spool import peek_ledger
from gridwatt.demo_harness.processes import AgentProcess, toml_str
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.hostile.batches import NS, T0, Client, batch, sample
from tests.hostile.rig import EVIL, GOOD, AttackRig

#: Real collector and agent processes.
pytestmark = pytest.mark.e2e

BIG = 100 * 1024 * 1024
DAY = 86400 * NS


def _totals(rig: AttackRig, node: str) -> tuple[float, float, float]:
    """Energy (J) of the node in the gpu, job and node measurements."""
    gpu = rig.query(f"SELECT sum(energy_j) FROM gpu WHERE node = '{node}'").get("sum") or 0.0
    job = rig.query(f"SELECT sum(energy_j) FROM job WHERE node = '{node}'").get("sum") or 0.0
    nodes = rig.query(f"SELECT sum(it_energy_kwh) FROM node WHERE node = '{node}'").get("sum") or 0.0
    return gpu, job, nodes * 3.6e6


def test_100000_job_ids_from_one_node_cannot_stop_another_nodes_new_job(
    make_rig: Callable[..., AttackRig],
) -> None:
    """Finding 1: shares per sample and new job ids per node per hour are bounded, so InfluxDB's
    max-values-per-tag (100,000 for job_id) is never reached through one node."""
    rig = make_rig(extra_server="max_new_jobs_per_node_per_hour = 500\n")
    client = Client(rig.address, **{"grpc.max_send_message_length": BIG})
    answers: list[str] = []
    with rig.good_agent_during("100k-job-ids"):
        # one sample split 100,500 ways
        shares = [(f"e{i}", 0.999 / 100_500) for i in range(100_500)]
        code, details = client.write(batch(EVIL, [sample(0, jobs=shares)]))
        answers.append(code)
        assert "too_many_job_shares" in details or code == "RESOURCE_EXHAUSTED", details
        # 100,000 distinct ids in samples of 16 shares, 400 samples a batch
        n = 0
        for b in range(16):
            samples = []
            for k in range(400):
                if n >= 100_000:
                    break
                ids = [(f"x{n + j}", 1 / 16) for j in range(16)]
                n += 16
                samples.append(sample(k % 8, T0 - 2 * DAY + (b * 50 + k // 8) * 60 * NS, jobs=ids))
            if samples:
                answers.append(client.write(batch(EVIL, samples, b + 2))[0])
        # the first 500 new ids (31 samples' worth at most) fit the budget, the rest are refused
        small = [sample(0, T0 - DAY + i * 60 * NS, jobs=[(f"s{i}", 1.0)]) for i in range(600)]
        for i in range(0, 600, 100):
            answers.append(client.write(batch(EVIL, small[i:i + 100], 100 + i))[0])
        # another node's brand-new job is stored
        assert client.write(batch("n1", [sample(0, jobs=[("new-job-of-n1", 1.0)])], 1)) == ("OK", "")
    client.close()
    assert answers[0] in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
    assert answers[1:17] == ["INVALID_ARGUMENT"] * 16  # 6,400 new ids a batch: above the hourly budget
    assert answers[17:] == ["OK"] * 5 + ["UNAVAILABLE"]  # 500 ids fit; the 501st waits
    (row,) = [rig.query("SHOW TAG VALUES CARDINALITY FROM job WITH KEY = job_id")]
    assert row["count"] == 500 + 1 + 2  # evil's 500, n1's one, the good agent's two
    assert rig.query("SELECT sum(energy_j) FROM job WHERE job_id = 'new-job-of-n1'")["sum"] == 300.0 * 60


def test_big_messages_and_unauthenticated_calls_cost_nothing(
    make_rig: Callable[..., AttackRig], tmp_path: Path,
) -> None:
    """Finding 2: 4 MB messages by default; a query id is bounded; a call without a valid token is
    refused before its body is read (UNAUTHENTICATED, not RESOURCE_EXHAUSTED)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{GOOD} {'g' * 32}\n{EVIL} {'e' * 32}\n")
    tokens.chmod(0o600)
    rig = make_rig(extra=f'[auth]\ntokens_file = "{tokens}"\n')
    opts = {"grpc.max_send_message_length": BIG, "grpc.max_receive_message_length": BIG}
    results: dict[str, list[str]] = {}
    lock = threading.Lock()

    def run(kind: str, fn: Callable[[], tuple[str, str]]) -> None:
        code, _ = fn()
        with lock:
            results.setdefault(kind, []).append(code)

    with rig.good_agent_during("big-messages", token="g" * 32):
        anon = Client(rig.address, **opts)
        wrong = Client(rig.address, token="w" * 32, **opts)
        big_batch = batch(EVIL, [sample(0, jobs=[("j" * 60_000_000, 1.0)])])
        with ThreadPoolExecutor(12) as pool:
            for _ in range(3):
                pool.submit(run, "getjob 60 MB", lambda: anon.get_job("q" * 60_000_000))
            for _ in range(6):
                pool.submit(run, "write 60 MB no token", lambda: anon.write(big_batch))
            for _ in range(3):
                pool.submit(run, "write 60 MB wrong token", lambda: wrong.write(big_batch))
        for size in (2_000_000, 30_000_000):
            run(f"getjob {size}", lambda s=size: anon.get_job("q" * s))  # type: ignore[misc]
        run("getjob 3 MB", lambda: anon.get_job("q" * 3_000_000))
        anon.close()
        wrong.close()
    assert results == {
        "getjob 60 MB": ["RESOURCE_EXHAUSTED"] * 3,
        "write 60 MB no token": ["UNAUTHENTICATED"] * 6,
        "write 60 MB wrong token": ["UNAUTHENTICATED"] * 3,
        "getjob 2000000": ["INVALID_ARGUMENT"],
        "getjob 30000000": ["RESOURCE_EXHAUSTED"],
        "getjob 3 MB": ["INVALID_ARGUMENT"],
    }
    assert "Traceback" not in rig.collector.log_text()


def test_one_gpu_second_is_accounted_once(make_rig: Callable[..., AttackRig]) -> None:
    """Finding 4: re-attribution, overlaps, erasing and duplicate shares are refused and counted; an
    identical resend changes nothing; gpu, job and node totals stay equal, also after a restart."""
    rig = make_rig()
    client = Client(rig.address)
    first = [sample(g, T0 + k * 60 * NS, jobs=[("j1", 1.0)]) for k in range(5) for g in range(2)]
    with rig.good_agent_during("intervals"):
        assert client.write(batch(EVIL, first, 1)) == ("OK", "")
        once = _totals(rig, EVIL)
        answers = [client.write(batch(EVIL, first, 2))[0]]  # identical resend
        moved = sample(0, T0, jobs=[("other-job", 1.0)])
        answers.append(client.write(batch(EVIL, [moved], 3))[0])  # re-attributed
        erased = sample(0, T0 + 60 * NS, power_w=0.0)
        answers.append(client.write(batch(EVIL, [erased], 4))[0])  # energy 0 over a stored interval
        copies = [sample(1, T0 + 10 * 60 * NS + i) for i in range(50)]
        answers.append(client.write(batch(EVIL, copies, 5))[0])  # 50 copies, 1 ns apart
        shifted = sample(0, T0 + 30 * NS)
        answers.append(client.write(batch(EVIL, [shifted], 6))[0])  # overlaps two stored intervals
        long_one = sample(1, T0 - 30 * NS, seconds=3000)
        answers.append(client.write(batch(EVIL, [long_one], 7))[0])  # starts before, covers them
    assert answers == ["OK"] + ["INVALID_ARGUMENT"] * 5
    assert _totals(rig, EVIL) == pytest.approx(once, rel=1e-12)
    assert once == pytest.approx((10 * 300.0 * 60,) * 3, rel=1e-12)  # gpu = job = node
    rack = rig.query("SELECT sum(it_energy_kwh) FROM rack WHERE time >= 0")["sum"] * 3.6e6
    nodes = rig.query("SELECT sum(it_energy_kwh) FROM node WHERE time >= 0")["sum"] * 3.6e6
    assert rack == pytest.approx(nodes, rel=1e-9)  # rack = its nodes (evil's and the good agent's)
    text = rig.collector.log_text()
    assert text.count("interval_conflict") >= 5
    metrics = _metrics(rig)
    assert 'gridwatt_collector_samples_rejected_total{reason="interval_conflict"} 54.0' in metrics
    # across a restart the store still says what is taken
    rig.collector.stop()
    rig.collector.start()
    client = Client(rig.address)
    assert client.write(batch(EVIL, [moved], 8))[0] == "INVALID_ARGUMENT"
    assert client.write(batch(EVIL, first, 9)) == ("OK", "")
    client.close()
    assert _totals(rig, EVIL) == pytest.approx(once, rel=1e-12)


def _metrics(rig: AttackRig) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{rig.collector.http_url}/metrics", timeout=30) as resp:
        return resp.read().decode()


def test_one_node_cannot_starve_the_others(make_rig: Callable[..., AttackRig]) -> None:
    """Finding 6: samples per batch, streams and batches in flight per node are bounded."""
    rig = make_rig()
    client = Client(rig.address, **{"grpc.max_send_message_length": BIG})
    with rig.good_agent_during("one-node-starves"):
        huge = batch(EVIL, [sample(k % 8, T0 - 2 * DAY + (k // 8) * NS, seconds=1) for k in range(400_000)])
        code, details = client.write(huge)
        assert code == "RESOURCE_EXHAUSTED" or "too_many_samples" in details, (code, details)
        over = batch(EVIL, [sample(k % 8, T0 + (k // 8) * 60 * NS) for k in range(5001)])
        assert client.write(over)[1].startswith("too_many_samples: 5001 samples")
        # 200 streams of one node, each with a batch (distinct GPU time) in flight
        channel = grpc.insecure_channel(rig.address)
        stub = pb_grpc.IngestStub(channel)
        codes: list[str] = []

        def stream(i: int) -> None:
            b = batch(EVIL, [sample(i % 8, T0 - DAY + (i // 8) * 60 * NS)], i)
            try:
                for ack in stub.Stream(iter([b]), timeout=120):
                    codes.append(str(ack.code))
            except grpc.RpcError as exc:
                codes.append(exc.code().name)  # type: ignore[attr-defined]

        with ThreadPoolExecutor(50) as pool:
            list(pool.map(stream, range(200)))
        rig.wait_streams_at_most(1)  # the good agent's own: the 200 above are let go
        # deterministically: four open streams of one node, and a fifth is turned away
        held = []
        for i in range(5):
            feed: queue.Queue[pb.Batch | None] = queue.Queue()
            feed.put(batch(EVIL, [sample(i, T0 - 3 * DAY)], 1000 + i))
            responses = stub.Stream(iter(feed.get, None), timeout=120)
            held.append((feed, responses))
        fifth: list[str] = []
        for i, (_feed, responses) in enumerate(held):
            try:
                fifth.append(str(next(responses).code))
            except grpc.RpcError as exc:
                fifth.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
            if i == 4:
                break
        for feed, _ in held:
            feed.put(None)
        channel.close()
    client.close()
    assert len(codes) == 200 and set(codes) <= {"0", "14", "RESOURCE_EXHAUSTED"}, set(codes)
    assert fifth[:4] == ["0"] * 4
    assert fifth[4].startswith("RESOURCE_EXHAUSTED: too_many_streams: this node has 4 streams open")


def test_unknown_node_keeps_its_samples_at_the_agent(make_rig: Callable[..., AttackRig]) -> None:
    """Finding 11: a node missing from [[racks]] is answered UNAVAILABLE (retry), logged loudly and
    counted; once the config lists it, the same batch is stored."""
    rig = make_rig()
    client = Client(rig.address)
    b = batch("ghost", [sample(0)])
    with rig.good_agent_during("unknown-node"):
        code, details = client.write(b)
    assert code == "UNAVAILABLE" and details.startswith("unknown_node: node 'ghost' is not in any rack")
    assert "unknown_node: node 'ghost'" in rig.collector.log_text()
    assert 'gridwatt_collector_samples_deferred_total{reason="unknown_node"} 1.0' in _metrics(rig)
    assert rig.stored("ghost") == (0, 0.0)
    # a real agent of the unknown node: its samples stay spooled (none rejected), it says why loudly
    agent_cfg = rig.tmp / "ghost-agent.toml"
    spool = rig.tmp / "ghost-spool.db"
    agent_cfg.write_text(
        f'node = "ghost"\ninterval_s = 60\nspool_path = {toml_str(spool)}\n'
        '[source]\nkind = "sim"\nsim = { gpus = 2, power_w = 300.0, duration_s = 600, '
        'start = "2022-04-15T05:20:00Z" }\n'
        f'[collector]\naddress = "{rig.address}"\nreconnect_max_s = 0.5\n'
    )
    agent = AgentProcess(agent_cfg, replay=True, log_path=rig.tmp / "ghost-agent.log")
    agent.start()
    try:
        agent.wait_for_log(r"ERROR .*unknown_node: node 'ghost' is not in any rack", timeout_s=60)
        assert agent.running
        agent.terminate()
    finally:
        agent.cleanup()
    ledger = peek_ledger(spool)
    assert (ledger.sampled, ledger.pending, ledger.rejected, ledger.acknowledged) == (20, 20, 0, 0)
    # the operator adds the node: the same agent delivers everything it kept
    config = rig.collector.config_path
    config.write_text(config.read_text().replace('"n2"]', '"n2", "ghost"]'))
    rig.collector.stop()
    rig.collector.start()
    agent.start()
    assert agent.wait(120) == 0
    assert rig.stored("ghost") == (20, 2 * 300.0 * 600)
