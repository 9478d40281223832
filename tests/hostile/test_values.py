"""Findings 5 and 7 of issue #8: every numeric field and every name is checked before anything of a
sample is written, so a sample is stored whole or not at all, and a job id reads back exactly."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest

from gridwatt.v1 import telemetry_pb2 as pb
from tests.hostile.batches import T0, Client, batch, sample
from tests.hostile.rig import EVIL, AttackRig

#: Real collector and agent processes.
pytestmark = pytest.mark.e2e


def _bad_samples() -> list[tuple[str, pb.GpuSample, str]]:
    cases: list[tuple[str, Callable[[pb.GpuSample], None], str]] = [
        ("power nan", lambda s: setattr(s, "mean_power_w", math.nan), "field mean_power_w: value nan"),
        ("power inf", lambda s: setattr(s, "mean_power_w", math.inf), "field mean_power_w: value inf"),
        ("power -inf", lambda s: setattr(s, "mean_power_w", -math.inf), "field mean_power_w: value -inf"),
        ("power -1e300", lambda s: setattr(s, "mean_power_w", -1e300), "field mean_power_w: value -1e+300"),
        ("temp nan", lambda s: setattr(s, "temp_c", math.nan), "field temp_c: value nan"),
        ("temp inf", lambda s: setattr(s, "temp_c", math.inf), "field temp_c: value inf"),
        ("mem 2^63", lambda s: setattr(s, "mem_used_bytes", 2**63),
         "field mem_used_bytes: value 9223372036854775808"),
        ("mem 2^64-1", lambda s: setattr(s, "mem_used_bytes", 2**64 - 1), "is not below 2^63"),
        ("limit nan", lambda s: setattr(s, "power_limit_w", math.nan), "field power_limit_w: value nan"),
        ("job ends in backslash", lambda s: setattr(s.jobs[0], "job_id", "job\\"),
         "character '\\\\' is not allowed"),
        ("job a\\b", lambda s: setattr(s.jobs[0], "job_id", "a\\b"), "character '\\\\' is not allowed"),
        ("job with CR", lambda s: setattr(s.jobs[0], "job_id", "a\rb"), "character '\\r' is not allowed"),
        ("job with NUL", lambda s: setattr(s.jobs[0], "job_id", "a\0b"), "character '\\x00' is not allowed"),
        ("job 70 KB", lambda s: setattr(s.jobs[0], "job_id", "x" * 70_000),
         "70000 characters, above the 128"),
        ("user newline", lambda s: setattr(s.jobs[0], "user", "bob\nrm"),
         "than 256 characters or not printable"),
        ("uuid ends in backslash", lambda s: setattr(s, "gpu_uuid", "GPU-1\\"), "field gpu_uuid"),
        ("same job twice", lambda s: s.jobs.add(job_id="job-1", fraction=0.001), "appears twice"),
    ]
    out = []
    for name, spoil, expected in cases:
        s = sample(gpu=0, start_ns=T0 + len(out) * 60 * 10**9)
        spoil(s)
        out.append((name, s, expected))
    return out


def test_a_sample_influxdb_would_refuse_is_refused_whole_while_a_good_agent_streams(
    make_rig: Callable[..., AttackRig],
) -> None:
    rig = make_rig()
    client = Client(rig.address)
    answers = []
    with rig.good_agent_during("bad-values"):
        for name, bad, expected in _bad_samples():
            # two good samples of other GPUs around the bad one: all or nothing
            b = batch(EVIL, [sample(1, bad.start_ns), bad, sample(2, bad.start_ns)])
            code, details = client.write(b)
            answers.append((name, code, expected in details, len(details)))
    client.close()
    assert [(n, c, ok) for n, c, ok, _ in answers] == [(n, "INVALID_ARGUMENT", True) for n, *_ in answers]
    assert max(length for *_, length in answers) < 400  # a 70 KB id is never echoed
    assert rig.stored(EVIL) == (0, 0.0)
    assert rig.query(f"SELECT count(energy_j) FROM job WHERE node = '{EVIL}'") == {}


IDS = ["plain-1", "with space", "a,b=c", "quote'd", 'dq"id', "k8s-pod/5e1f-aa", "semi;colon#hash?q%20",
       "x" * 128]


def test_job_ids_read_back_exactly_and_bad_ids_are_client_errors(make_rig: Callable[..., AttackRig]) -> None:
    rig = make_rig()
    client = Client(rig.address)
    with rig.good_agent_during("job-ids"):
        for i, job in enumerate(IDS):
            assert client.write(batch(EVIL, [sample(0, T0 + i * 60 * 10**9, jobs=[(job, 1.0)])], i + 1)) == (
                "OK", "")
        for job in IDS:
            url = f"{rig.collector.http_url}/v1/jobs/{urllib.parse.quote(job, safe='')}"
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.load(resp)
            kwh = pytest.approx(300 * 60 / 3.6e6, rel=1e-12)
            assert (body["job_id"], body["it_energy_kwh"]) == (job, kwh)
            assert client.get_job(job) == ("OK", "")
        for bad in ["a\\b", "a\rb", "a\0b", "y" * 70_000]:
            code, details = client.get_job(bad)
            assert code == "INVALID_ARGUMENT" and details.startswith("bad_job_id: field job_id: "), details
            assert len(details) < 300
            url = f"{rig.collector.http_url}/v1/jobs/{urllib.parse.quote(bad, safe='')}"
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url, timeout=30)
            assert err.value.code == 400
            assert len(err.value.read()) < 300
    client.close()
