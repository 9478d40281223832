"""The gpu and job lines of ingest's fast path equal a straightforward rendering written here from the
data model (README "Data model in InfluxDB"), for a small batch of hand-picked awkward values: tags
with spaces, commas, equals signs and backslashes, quotes in string fields, an empty UUID, huge and
tiny energies, -0.0, shared GPUs with an unattributed rest; and the bad values are refused by
validation before any line is made (NaN, infinities)."""

from __future__ import annotations

import hashlib
import math

import pytest

from gridwatt.collector.batch_scan import gpu_spans
from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.points import prepare_batch, sample_digests
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.collector.validation import BatchRejected, Limits, validate_batch
from gridwatt.v1 import telemetry_pb2 as pb

NS = 10**9
T0 = 1_656_633_600 * NS
PUE = 1.37
CI_G_PER_KWH = 351.3
LIMITS = Limits(max_future_ns=300 * NS, max_power_w=1e300, max_interval_ns=3600 * NS, min_time_ns=0,
                max_job_shares=4)
NOW_NS = T0 + 86400 * NS
METHOD_NAMES = {pb.ENERGY_METHOD_COUNTER: "counter", pb.ENERGY_METHOD_POWER_AVERAGE: "power_average"}
ATTRIBUTION_NAMES = {pb.ATTRIBUTION_METHOD_SLURM: "slurm", pb.ATTRIBUTION_METHOD_UNSPECIFIED: "none",
                     pb.ATTRIBUTION_METHOD_STATIC: "static"}


def esc_tag(value: str) -> str:
    if not value:
        return "none"
    out = ""
    for ch in value:
        out += {",": "\\,", " ": "\\ ", "=": "\\=", "\\": "\\\\", "\n": " "}.get(ch, ch)
    return out


def esc_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def reference_lines(batch: pb.Batch, rack: str, zone: str, accounting_only: bool) -> list[str]:
    """Every line of the batch, one sample at a time, from the data model (no caches, no shortcuts
    but the documented ones: a whole GPU's job line has the GPU's own numbers)."""
    lines = []
    node_t = esc_tag(batch.node)
    for s in batch.gpu_samples:
        e = s.energy_j
        dur = (s.end_ns - s.start_ns) / 1e9
        fac = e * PUE
        co2 = fac / 3_600_000.0 * CI_G_PER_KWH
        idle_e = e * s.idle_s / dur if s.idle_s else 0.0
        key = (f"gpu,node={node_t},rack={esc_tag(rack)},zone={esc_tag(zone)},gpu={s.gpu_index},"
               f"uuid={esc_tag(s.gpu_uuid)}")
        digest = hashlib.sha256(s.SerializeToString()).hexdigest()[:32]
        ids = ",".join(j.job_id for j in s.jobs) if s.jobs else ""
        if accounting_only:
            fields = [f"energy_j={e!r}", f"facility_energy_j={fac!r}", f"co2e_g={co2!r}",
                      "estimated_co2e_g=0.0", f"end_ns={s.end_ns}i", 'ef="lifecycle"', f'digest="{digest}"']
        else:
            fields = [
                f"energy_j={e!r}", f"facility_energy_j={fac!r}", f"co2e_g={co2!r}", f"duration_s={dur!r}",
                f"power_w={s.mean_power_w!r}", f"util_pct={s.util_pct!r}", f"util_pct_s={s.util_pct * dur!r}",
                f"mem_util_pct={s.mem_util_pct!r}", f"mem_used_bytes={s.mem_used_bytes}i",
                f"temp_c={s.temp_c!r}", f"idle_s={s.idle_s!r}", f"idle_energy_j={idle_e!r}",
                f"pue={(fac / e if e > 0 else PUE)!r}",
                f"intensity_g_per_kwh={(co2 * 3_600_000.0 / fac if fac > 0 else CI_G_PER_KWH)!r}",
                f"end_ns={s.end_ns}i", f'energy_method="{METHOD_NAMES[s.energy_method]}"',
                f"jobs={esc_str(ids)}",
                'ef="lifecycle"', 'intensity_source="constant"', "intensity_estimated=false",
                "estimated_co2e_g=0.0", f'digest="{digest}"',
            ]
        lines.append(f"{key} {','.join(fields)} {s.start_ns}")
        shares = [(j.job_id, j.alias, j.method, j.fraction, j.split_estimated,
                   (("user", j.user), ("account", j.account), ("partition", j.partition),
                    ("namespace", j.namespace), ("job_name", j.job_name))) for j in s.jobs]
        rest = 1.0 - sum(j.fraction for j in s.jobs)
        if rest > 1e-9:
            shares.append(("unattributed", "", pb.ATTRIBUTION_METHOD_UNSPECIFIED, rest, False, ()))
        for job_id, alias, method, frac, split, who in shares:
            head = f"job,job_id={esc_tag(job_id)}" + (f",alias={esc_tag(alias)}" if alias else "")
            how = f',attribution="{ATTRIBUTION_NAMES[method]}"'
            how += "".join(f",{name}={esc_str(v)}" for name, v in who if v)
            how += ",split_estimated=true" if split else ""
            values = [e * frac, fac * frac, co2 * frac, 0.0 * frac, dur * frac, s.util_pct * (dur * frac),
                      s.idle_s * frac, idle_e * frac]
            names = ["energy_j", "facility_energy_j", "co2e_g", "estimated_co2e_g", "gpu_s", "util_pct_s",
                     "idle_s", "idle_energy_j"]
            fields = [f"{n}={v!r}" for n, v in zip(names, values, strict=True)]
            if not (accounting_only and frac == 1.0):
                fields.append(f"fraction={frac!r}")
            fields += [f"end_ns={s.end_ns}i", 'ef="lifecycle"']
            lines.append(f"{head},node={node_t},rack={esc_tag(rack)},gpu={s.gpu_index} "
                         f"{','.join(fields)}{how} {s.start_ns}")
    return lines


def share(job_id: str, fraction: float, **kw: object) -> pb.JobShare:
    return pb.JobShare(job_id=job_id, fraction=fraction, **kw)  # type: ignore[arg-type]


def awkward_batch() -> pb.Batch:
    def sample(k: int, t: int, energy_j: float, *jobs: pb.JobShare, uuid: str = "GPU-1",
               idle_s: float = 0.0) -> pb.GpuSample:
        return pb.GpuSample(
            gpu_index=k, gpu_uuid=uuid, start_ns=T0 + t * NS, end_ns=T0 + (t + 10) * NS, energy_j=energy_j,
            mean_power_w=energy_j / 10, util_pct=87.0 + k / 3, mem_util_pct=41.5, mem_used_bytes=2**62 + k,
            temp_c=64.5 - k, idle_s=idle_s, energy_method=pb.ENERGY_METHOD_COUNTER if k % 2 else
            pb.ENERGY_METHOD_POWER_AVERAGE, jobs=list(jobs), power_limit_w=700.0)

    slurm = {"method": pb.ATTRIBUTION_METHOD_SLURM}
    return pb.Batch(node="gpu node,7=x", gpu_samples=[
        sample(0, 0, 3512.345678901234, share("job,with space", 1.0, user='bo"b', account="c\\d", **slurm)),
        sample(1, 0, 1e299, share("1001", 1.0, alias="1001_7", **slurm), uuid=""),
        sample(2, 0, 5e-324, share("a=b", 0.25, split_estimated=True), share("k8s/ns/pod 1", 0.5),
               uuid="GPU with space,=x"),
        sample(3, 0, -0.0, uuid="GPU-3"),
        sample(0, 10, 1234.5, share("job,with space", 1 / 3, user='bo"b', account="c\\d", **slurm),
               share("x", 1 / 3, method=pb.ATTRIBUTION_METHOD_STATIC), idle_s=2.5),
        sample(1, 10, 0.1 + 0.2, share("1001", 0.999999999999, alias="1001_7", **slurm), uuid="",
               idle_s=10.0),
    ])


@pytest.mark.parametrize("fields", ["all", "accounting"])
def test_lines_equal_a_straightforward_rendering(fields: str) -> None:
    batch = awkward_batch()
    placement = Placement("rack 1,a", "Z=1", StepSeries.constant(PUE), ConstantIntensity(CI_G_PER_KWH))
    ci = IntensitySeries(StepSeries.constant(CI_G_PER_KWH), "constant", "lifecycle")
    expected = reference_lines(batch, "rack 1,a", "Z=1", fields == "accounting")
    # as ingest runs it: validation's scan with the digests computed beforehand, and without a scan
    scan = validate_batch(batch, LIMITS, NOW_NS)
    scan.digests = sample_digests(scan.samples)
    for given in (scan, None):
        out = prepare_batch(batch, placement, ci, 60 * NS, gpu_fields=fields, scan=given)
        assert out.lines == expected
    # gpu lines, and job lines with the rests (none below 1e-9: 1 - 0.999999999999)
    assert len(expected) == 6 + (1 + 1 + 3 + 1 + 3 + 1)
    gpu = [line for line in expected if line.startswith("gpu,")]
    assert gpu[0].startswith(r"gpu,node=gpu\ node\,7\=x,rack=rack\ 1\,a,zone=Z\=1,gpu=0,uuid=GPU-1 ")
    assert r",uuid=none " in gpu[1] and r",uuid=GPU\ with\ space\,\=x " in gpu[2]
    assert 'attribution="slurm",user="bo\\"b",account="c\\\\d" ' in expected[1]


def test_digests_and_gpu_spans_equal_their_per_sample_definitions() -> None:
    batch = awkward_batch()
    scan = validate_batch(batch, LIMITS, NOW_NS)
    assert sample_digests(scan.samples) == [hashlib.sha256(s.SerializeToString()).digest()[:16].hex()
                                            for s in batch.gpu_samples]
    spans = [(g.gpu_index, g.start_ns, g.end_ns) for g in gpu_spans(scan.rows)]
    assert spans == [(0, T0, T0 + 20 * NS), (1, T0, T0 + 20 * NS), (2, T0, T0 + 10 * NS),
                     (3, T0, T0 + 10 * NS)]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("energy_j", math.nan, "field energy_j: value nan is not a finite number"),
    ("energy_j", math.inf, "field energy_j: value inf is not a finite number"),
    ("util_pct", math.nan, "field util_pct: value nan is outside 0-100"),
    ("temp_c", -math.inf, "field temp_c: value -inf is not a finite number in [-100, 250]"),
    ("mean_power_w", math.nan, "field mean_power_w: value nan is not a finite number in [0, 1e+300]"),
    ("idle_s", 10.5, "field idle_s: value 10.5 is outside the interval"),
])
def test_bad_values_are_refused_before_any_line(field: str, value: float, message: str) -> None:
    batch = awkward_batch()
    setattr(batch.gpu_samples[4], field, value)
    with pytest.raises(BatchRejected) as err:
        validate_batch(batch, LIMITS, NOW_NS)
    assert str(err.value) == f"gpu_samples[4] (gpu 0, start {T0 + 10 * NS}): {message}"
