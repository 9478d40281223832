"""A deterministic corpus of batches and everything the collector renders from them, as text.

The golden file ``tests/fixtures/cpu_golden/rendered.txt`` was written by this module from the
collector's code BEFORE the per-sample CPU work of issue #9 (see the README next to it), so
``test_cpu_golden.py`` proves the faster code renders byte-identical output: the ``gpu`` and
``job`` lines of ``prepare_batch`` (and its totals, windows, first lines and job points), ``LedgerBook``
ledger lines, ``host_lines``, validation messages of bad batches, and the live view on
``/metrics`` in both expositions.

Regenerate (only when an output change is intended, and say so in the commit)::

    .venv/bin/python -m tests.collector.cpu_golden --write
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.ledger import LedgerBook
from gridwatt.collector.live_metrics import LiveAccounts
from gridwatt.collector.points import host_lines, prepare_batch, sample_digest
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.collector.validation import BatchRejected, Limits, validate_batch, validate_host_samples
from gridwatt.v1 import telemetry_pb2 as pb

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "cpu_golden" / "rendered.txt"
NS = 10**9
H = 3600 * NS
T0 = 1_656_633_600 * NS  # 2022-07-01T00:00:00Z
RESOLUTION_NS = 60 * NS
NOW_NS = T0 + 30 * 86400 * NS
LIMITS = Limits(max_future_ns=300 * NS, max_power_w=2000.0, max_interval_ns=3 * H,
                min_time_ns=T0 - 365 * 86400 * NS, max_job_shares=4, max_batch_samples=200)

NODES = ["n1", "gpu node,7=x", 'q"uote']
UUIDS = ["GPU-0a1b", "", "GPU with space", "GPU-=,x"]
USERS = ["", "alice", 'bo"b', "c\\d", "élodie"]
JOB_IDS = ["1001", "1002", "job,with space", "j=3", "unattributed-ish", "k8s/ns/pod-1"]
ALIASES = ["", "", "1001_7", "1002+1"]
METHODS = [pb.ATTRIBUTION_METHOD_SLURM, pb.ATTRIBUTION_METHOD_STATIC, pb.ATTRIBUTION_METHOD_KUBERNETES,
           pb.ATTRIBUTION_METHOD_UNSPECIFIED, pb.ATTRIBUTION_METHOD_JOB_MAPPING, 42]
ENERGY_METHODS = [pb.ENERGY_METHOD_COUNTER, pb.ENERGY_METHOD_POWER_AVERAGE, pb.ENERGY_METHOD_POWER_INSTANT,
                  pb.ENERGY_METHOD_UNSPECIFIED, 17]
FRACTION_SETS = [[], [1.0], [0.5, 0.5], [0.25, 0.5], [0.1, 0.2, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.7],
                 [0.999999999999]]


def intensities() -> list[IntensitySeries]:
    """Constant; hourly with estimated steps; several providers' steps (mixed sources)."""
    return [
        IntensitySeries(StepSeries.constant(350.0), "constant", "lifecycle"),
        IntensitySeries(StepSeries(tuple(T0 + k * H for k in range(6)),
                                   (412.3, 398.0, 401.77, 388.5, 377.0, 360.1),
                                   (False, False, True, True, False, True)),
                        "csv:DE_2022_hourly.csv", "lifecycle"),
        IntensitySeries(StepSeries((T0, T0 + 90 * NS, T0 + 2 * H + 17 * NS), (250.0, 260.5, 199.9),
                                   (False, True, False)), "chain", "direct",
                        step_sources=("electricitymaps", "held:electricitymaps", "watttime"),
                        step_factors=("lifecycle", "lifecycle", "direct")),
    ]


def pues() -> list[StepSeries]:
    return [StepSeries.constant(1.2), StepSeries((0, T0 + 45 * NS, T0 + H + 500_000_000), (1.31, 1.18, 1.5))]


def placements() -> list[Placement]:
    return [
        Placement("r1", "DE", pues()[0], ConstantIntensity(350.0)),
        Placement("rack 2,b=c", "US-MIDW MISO", pues()[1], ConstantIntensity(350.0)),
    ]


def make_sample(rng: random.Random, gpu: int, start_ns: int, duration_ns: int) -> pb.GpuSample:
    dur_s = duration_ns / NS
    power = round(rng.random() * 700, int(rng.random() * 6))
    idle = rng.random() < 0.3
    energy = 0.0 if rng.random() < 0.05 else power * dur_s
    jobs = []
    fractions = FRACTION_SETS[int(rng.random() * len(FRACTION_SETS))]
    for k, frac in enumerate(fractions):
        r = int(rng.random() * 1000)
        jobs.append(pb.JobShare(
            job_id=JOB_IDS[(r + k) % len(JOB_IDS)], fraction=frac, method=METHODS[r % len(METHODS)],  # type: ignore[arg-type]
            user=USERS[r % len(USERS)], split_estimated=r % 3 == 0, alias=ALIASES[r % len(ALIASES)],
            account="acct-" + str(r % 4) if r % 2 else "", partition="gpu" if r % 5 else "",
            namespace="ns,1" if r % 7 == 0 else "", job_name='train "big"' if r % 4 == 1 else "",
        ))
    # distinct job ids per sample (validation): drop repeats
    seen: set[str] = set()
    jobs = [j for j in jobs if not (j.job_id in seen or seen.add(j.job_id))]  # type: ignore[func-returns-value]
    return pb.GpuSample(
        gpu_index=gpu, gpu_uuid=UUIDS[gpu % len(UUIDS)], gpu_name="NVIDIA A100", start_ns=start_ns,
        end_ns=start_ns + duration_ns, energy_j=energy, mean_power_w=power,
        util_pct=0.0 if idle else round(rng.random() * 100, 3), mem_util_pct=rng.random() * 100,
        mem_used_bytes=int(rng.random() * 80e9), temp_c=20 + rng.random() * 60,
        idle_s=dur_s if idle else (round(rng.random() * dur_s, 2) if rng.random() < 0.2 else 0.0),
        energy_method=ENERGY_METHODS[gpu % len(ENERGY_METHODS)], jobs=jobs,  # type: ignore[arg-type]
        power_limit_w=400.0,
    )


def corpus() -> list[pb.Batch]:
    """Batches of 1 s, 10 s and uneven intervals, spanning PUE and intensity steps, with host
    samples and ledgers; some batches are sent twice (resends) and one arrives late."""
    rng = random.Random(20261201)
    out: list[pb.Batch] = []
    batch_id = 0
    for node_i, node in enumerate(NODES):
        t = T0 + 40 * NS + node_i * 7 * NS
        for b in range(6):
            batch_id += 1
            duration_ns = [NS, 10 * NS, 3_333_333_333, 61 * NS, 2 * H - 10 * NS, NS][b]
            samples = []
            for _interval in range(2):
                for gpu in range(4):
                    samples.append(make_sample(rng, gpu, t, duration_ns))
                t += duration_ns
            hosts = [pb.HostSample(start_ns=t - duration_ns, end_ns=t, cpu_util_pct=rng.random() * 100,
                                   mem_used_bytes=int(rng.random() * 1e11), mem_total_bytes=256 * 2**30,
                                   cpu_energy_j=rng.random() * 500, has_cpu_energy=b % 2 == 0)]
            ledger = pb.SpoolLedger(sampled=100 * batch_id, acknowledged=90 * batch_id, pending=10 * batch_id,
                                    evicted=b // 3, evicted_energy_j=123.5 * (b // 3), lost=b // 4,
                                    quarantines=b // 5, at_ns=t)
            batch = pb.Batch(batch_id=batch_id, node=node, gpu_samples=samples, host_samples=hosts)
            if b != 2:
                batch.ledger.CopyFrom(ledger)
            out.append(batch)
            if b in (1, 4):  # a resend after a lost acknowledgement
                out.append(pb.Batch.FromString(batch.SerializeToString()))
        late = make_sample(rng, 1, T0 + 41 * NS, NS)
        out.append(pb.Batch(batch_id=batch_id + 100, node=node, gpu_samples=[late]))
    # signed zeros (valid values whose repr differs from 0.0) and whole-GPU shares of them
    zeros = [make_sample(rng, gpu, T0 + 7 * H + gpu * NS, NS) for gpu in range(4)]
    for k, z in enumerate(zeros):
        z.energy_j = -0.0 if k % 2 else 0.0
        z.util_pct = z.mem_util_pct = z.temp_c = z.mean_power_w = -0.0
        z.idle_s = -0.0 if k < 2 else 1.0
        del z.jobs[:]
        if k == 3:
            z.jobs.add(job_id="1001", fraction=1.0, method=pb.ATTRIBUTION_METHOD_SLURM)
    out.append(pb.Batch(batch_id=998, node="n1", gpu_samples=zeros))
    # a bad ledger: the samples still count, the ledger is skipped
    bad_ledger = pb.Batch(batch_id=999, node="n1", gpu_samples=[make_sample(rng, 3, T0 + 5 * H, NS)])
    bad_ledger.ledger.CopyFrom(pb.SpoolLedger(evicted_energy_j=float("nan"), at_ns=T0))
    out.append(bad_ledger)
    return out


def bad_batches() -> list[pb.Batch]:
    """One problem each: validation must name it with the same message as before."""
    rng = random.Random(7)
    base = pb.Batch(batch_id=1, node="n1", gpu_samples=[make_sample(rng, 0, T0 + NS, NS),
                                                        make_sample(rng, 1, T0 + NS, NS)])
    base.gpu_samples[1].jobs.add(job_id="jz", fraction=0.01)
    out: list[pb.Batch] = []

    def variant(change: str, value: object, index: int = 1) -> None:
        b = pb.Batch.FromString(base.SerializeToString())
        target: object = b.gpu_samples[index]
        *path, name = change.split(".")
        for p in path:
            target = getattr(target, p)
            if p == "jobs":
                target = target[0]  # type: ignore[index]
        setattr(target, name, value)
        out.append(b)

    out.append(pb.Batch(batch_id=2))
    out.append(pb.Batch(batch_id=3, node="bad\\node", gpu_samples=base.gpu_samples))
    out.append(pb.Batch(batch_id=4, node="n1"))
    out.append(pb.Batch(batch_id=5, node="x" * 200, gpu_samples=base.gpu_samples))
    out.append(pb.Batch(batch_id=6, node="n1", gpu_samples=list(base.gpu_samples) * 101))
    for change, value in [
        ("energy_j", float("nan")), ("energy_j", float("inf")), ("energy_j", -1.0), ("end_ns", T0 + NS),
        ("end_ns", T0 + NS + 4 * H), ("end_ns", NOW_NS + 3600 * NS), ("start_ns", T0 - 400 * 86400 * NS),
        ("energy_j", 1e6), ("util_pct", 101.0), ("util_pct", float("nan")), ("mem_util_pct", -0.5),
        ("idle_s", 5.0), ("idle_s", -1.0), ("mean_power_w", float("inf")), ("mean_power_w", 3000.0),
        ("power_limit_w", -1.0), ("temp_c", 300.0), ("temp_c", float("nan")), ("mem_used_bytes", 2**63),
        ("gpu_uuid", "GPU\\x"), ("gpu_uuid", "G" * 129), ("jobs.job_id", ""), ("jobs.job_id", "a\tb"),
        ("jobs.fraction", 0.0), ("jobs.fraction", 1.5), ("jobs.fraction", float("nan")),
        ("jobs.alias", "12x"), ("jobs.user", "u" * 300), ("jobs.user", "a\nb"), ("jobs.account", "x\x00"),
        ("jobs.partition", "p" * 257), ("jobs.namespace", "\x7f"), ("jobs.job_name", "é" * 257),
    ]:
        variant(change, value)
    for start_ns in (NOW_NS + 1000 * NS, T0 - 366 * 86400 * NS):  # in the future; before min_time
        b = pb.Batch.FromString(base.SerializeToString())
        b.gpu_samples[1].start_ns = start_ns
        b.gpu_samples[1].end_ns = start_ns + NS
        out.append(b)
    b = pb.Batch.FromString(base.SerializeToString())
    b.gpu_samples[1].jobs.add(job_id=b.gpu_samples[1].jobs[0].job_id, fraction=0.001)
    out.append(b)
    b = pb.Batch.FromString(base.SerializeToString())
    for k in range(5):
        b.gpu_samples[0].jobs.add(job_id=f"many-{k}", fraction=0.01)
    out.append(b)
    b = pb.Batch.FromString(base.SerializeToString())
    del b.gpu_samples[0].jobs[:]
    b.gpu_samples[0].jobs.add(job_id="a", fraction=0.75)
    b.gpu_samples[0].jobs.add(job_id="b", fraction=0.5)
    out.append(b)
    for change, value in [("end_ns", T0), ("end_ns", NOW_NS + 3600 * NS), ("cpu_util_pct", 100.5),
                          ("mem_total_bytes", 2**64 - 1), ("cpu_energy_j", -2.0)]:
        b = pb.Batch(batch_id=77, node="n1")
        h = b.host_samples.add(start_ns=T0 + NS, end_ns=T0 + 2 * NS, cpu_util_pct=5.0, has_cpu_energy=True)
        setattr(h, change, value)
        out.append(b)
    return out


def render(scanned: bool = False) -> str:
    """Everything the collector renders from the corpus, in one text. ``scanned``: as ingest does it,
    with the scan ``validate_batch`` returns and the digests computed beforehand (else each function
    scans the batch itself)."""
    out: list[str] = []
    book = LedgerBook()
    clock_s = [1000.0]
    live = LiveAccounts(job_series_ttl_s=900.0, max_job_series=8, clock=lambda: clock_s[0])
    cis = intensities()
    places = placements()
    for k, batch in enumerate(corpus()):
        placement = places[k % len(places)]
        ci = cis[k % len(cis)]
        pue = placement.pue if k % 3 else None
        scan = validate_batch(batch, LIMITS, NOW_NS)
        validate_host_samples(batch, LIMITS, NOW_NS)
        if scanned:
            scan.digests = [sample_digest(s) for s in scan.samples]
        prepared = prepare_batch(batch, placement, ci, RESOLUTION_NS, pue, scan=scan if scanned else None)
        out.append(f"## batch {k} id {batch.batch_id} node {batch.node!r} rack {placement.rack!r} "
                   f"intensity {ci.source} pue {'default' if pue is None else 'given'}")
        out.extend(prepared.lines)
        out.append(f"windows={sorted(prepared.windows)} samples={prepared.samples} "
                   f"it_energy_j={prepared.it_energy_j!r} co2e_g={prepared.co2e_g!r} "
                   f"estimated_co2e_g={prepared.estimated_co2e_g!r} first_line={prepared.first_line}")
        out.extend(f"job_point {p.gpu} {p.job_id!r} {p.start_ns} {p.end_ns} {[repr(x) for x in p.sums]} "
                   f"{sorted(p.who.items())}" for p in prepared.job_points)
        out.extend(book.lines(batch, placement.rack))
        out.extend(host_lines(batch, placement))
        refused = {1, len(prepared.lines) - 1} if k % 11 == 5 else {}
        live.observe(batch, placement, ci, pue or placement.pue, prepared.first_line, refused,
                     scan if scanned else None)
        clock_s[0] += 60.0
    out.append("## rejected")
    for batch in bad_batches():
        try:
            validate_batch(batch, LIMITS, NOW_NS)
            validate_host_samples(batch, LIMITS, NOW_NS)
            out.append("accepted")
        except BatchRejected as exc:
            out.append(f"{exc.reason}: {exc}")
    out.append("## live text")
    out.append(live.render())
    out.append("## live openmetrics")
    out.append(live.render(openmetrics=True))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Write or check the collector's golden rendered output.")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = ap.parse_args()
    text = render()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
        print(f"wrote {GOLDEN} ({len(text.splitlines())} lines)")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
