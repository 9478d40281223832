"""LiveAccounts (the live view on /metrics) against hand-computed numbers."""

from __future__ import annotations

from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.live_metrics import LiveAccounts, escape_label
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.v1 import telemetry_pb2 as pb

S = 1_000_000_000
H = 3600 * S
PUE = StepSeries((0, 2 * H), (1.5, 1.2))
CI = IntensitySeries(StepSeries((0, H), (400.0, 100.0)), "csv:test", "lifecycle")


def placement(rack: str = "r1", zone: str = "Z") -> Placement:
    return Placement(rack, zone, PUE, ConstantIntensity(1.0))  # type: ignore[arg-type]


def sample(gpu: int, start_h: float, end_h: float, energy_j: float, jobs: list[pb.JobShare] | None = None,
           idle_s: float = 0.0, power_w: float = 0.0, util: float = 0.0) -> pb.GpuSample:
    return pb.GpuSample(gpu_index=gpu, start_ns=int(start_h * H), end_ns=int(end_h * H), energy_j=energy_j,
                        jobs=jobs or [], idle_s=idle_s, mean_power_w=power_w, util_pct=util)


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in exposition")


def test_hand_computed_counters_split_at_steps_and_shared_by_jobs() -> None:
    live = LiveAccounts(clock=lambda: 100.0)
    share = [pb.JobShare(job_id="j1", fraction=0.75, user="ann")]
    # 3.6 MJ = 1 kWh over [0.5 h, 1.5 h): half at 400 g/kWh, half at 100 g/kWh; PUE 1.5
    # facility 1.5 kWh = 5.4 MJ; emissions 0.75 kWh x 400 + 0.75 kWh x 100 = 375 g
    batch = pb.Batch(node="n1", gpu_samples=[
        sample(0, 0.5, 1.5, 3.6e6, share, idle_s=900, power_w=1000.0, util=60.0),
        sample(1, 0.5, 1.5, 7.2e6, power_w=2000.0, util=20.0),
    ])
    live.observe(batch, placement(), CI, PUE)
    text = live.render()
    g0 = '{node="n1",gpu="0",rack="r1",zone="Z"}'
    assert value(text, "gridwatt_gpu_it_energy_joules_total" + g0) == 3.6e6
    assert value(text, "gridwatt_gpu_facility_energy_joules_total" + g0) == 5.4e6
    assert abs(value(text, "gridwatt_gpu_co2e_grams_total" + g0) - 375.0) < 1e-9
    assert value(text, "gridwatt_gpu_idle_energy_joules_total" + g0) == 900_000.0  # a quarter idle
    # the rack is the sum of its GPUs: 10.8 MJ IT, 16.2 MJ facility, 3 x 375 g
    assert value(text, 'gridwatt_rack_it_energy_joules_total{rack="r1",zone="Z"}') == 10.8e6
    assert abs(value(text, 'gridwatt_zone_co2e_grams_total{zone="Z"}') - 1125.0) < 1e-9
    assert value(text, 'gridwatt_node_power_watts{node="n1",rack="r1",zone="Z"}') == 3000.0
    assert value(text, 'gridwatt_rack_gpu_utilization_ratio{rack="r1",zone="Z"}') == 0.4
    j1 = '{job_id="j1",user="ann",account=""}'
    assert value(text, "gridwatt_job_it_energy_joules_total" + j1) == 2.7e6
    assert abs(value(text, "gridwatt_job_co2e_grams_total" + j1) - 281.25) < 1e-9
    assert value(text, "gridwatt_job_gpu_seconds_total" + j1) == 2700.0
    assert value(text, "gridwatt_job_gpus" + j1) == 1.0
    un = '{job_id="unattributed",user="",account=""}'
    assert value(text, "gridwatt_job_it_energy_joules_total" + un) == 0.9e6 + 7.2e6
    assert value(text, "gridwatt_job_gpus" + un) == 2.0
    # in force at the latest counted instant (just before 1.5 h): 100 g/kWh, PUE 1.5
    assert value(text, 'gridwatt_zone_carbon_intensity_grams_per_kilowatt_hour'
                       '{zone="Z",source="csv:test",emission_factor="lifecycle"}') == 100.0
    assert value(text, 'gridwatt_rack_pue_ratio{rack="r1",zone="Z"}') == 1.5


def test_resend_and_late_samples_are_not_counted_twice() -> None:
    live = LiveAccounts()
    first = pb.Batch(node="n1", gpu_samples=[sample(0, 0, 0.5, 100.0), sample(0, 0.5, 1, 200.0)])
    live.observe(first, placement(), CI, PUE)
    live.observe(first, placement(), CI, PUE)  # resent after a lost ack
    live.observe(pb.Batch(node="n1", gpu_samples=[sample(0, 1, 1.5, 50.0)]), placement(), CI, PUE)
    text = live.render()
    assert value(text, 'gridwatt_gpu_it_energy_joules_total{node="n1",gpu="0",rack="r1",zone="Z"}') == 350.0
    assert value(text, "gridwatt_live_samples_counted_total") == 3
    assert value(text, "gridwatt_live_samples_skipped_total") == 2


def test_refused_lines_are_not_counted() -> None:
    live = LiveAccounts()
    batch = pb.Batch(node="n1", gpu_samples=[sample(0, 0, 1, 100.0), sample(1, 0, 1, 200.0)])
    # sample 0 has lines 0-1 (gpu, job), sample 1 lines 2-3; InfluxDB refused line 3
    live.observe(batch, placement(), CI, PUE, first_line=[0, 2], refused_lines={3: (400, "bad")})
    text = live.render()
    assert value(text, 'gridwatt_node_it_energy_joules_total{node="n1",rack="r1",zone="Z"}') == 100.0


def test_job_series_expire_after_ttl_and_are_bounded() -> None:
    now = [0.0]
    live = LiveAccounts(job_series_ttl_s=60.0, max_job_series=2, clock=lambda: now[0])
    for k, job in enumerate(("a", "b", "c")):
        now[0] = float(k)
        share = [pb.JobShare(job_id=job, fraction=1.0)]
        live.observe(pb.Batch(node="n1", gpu_samples=[sample(k, 0, 1, 1.0, share)]), placement(), CI, PUE)
    text = live.render()
    assert 'job_id="a"' not in text and 'job_id="b"' in text and 'job_id="c"' in text  # bounded at 2
    now[0] = 61.5  # b last seen at 1.0: gone; c at 2.0: kept
    text = live.render()
    assert 'job_id="b"' not in text and 'job_id="c"' in text
    assert value(text, "gridwatt_live_job_series_expired_total") == 2


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    live = LiveAccounts()
    share = [pb.JobShare(job_id='x"y', fraction=1.0)]
    live.observe(pb.Batch(node="n1", gpu_samples=[sample(0, 0, 1, 1.0, share)]), placement(), CI, PUE)
    assert 'job_id="x\\"y"' in live.render()
