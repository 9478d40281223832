"""``first_conflict`` gives exactly the answers of its first (straightforward) version on random
batches and stored intervals, conflicts and messages included."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatt.collector.intervals import StoredGpuTime, StoredInterval, _same, first_conflict
from gridwatt.v1 import telemetry_pb2 as pb


def reference(samples: list[pb.GpuSample], digests: list[str], stored: StoredGpuTime) -> str | None:
    """The version before the CPU work of #9, kept verbatim as the reference."""
    by_gpu: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_gpu[s.gpu_index].append(i)
    for gpu, idx in by_gpu.items():
        idx.sort(key=lambda i: (samples[i].start_ns, samples[i].end_ns))
        points = sorted(stored.inside.get(gpu, {}).values(), key=lambda p: p.start_ns)
        before = stored.end_before.get(gpu, 0)
        prev: int | None = None
        for i in idx:
            s = samples[i]
            where = f"gpu_samples[{i}] (gpu {gpu}, {s.start_ns}..{s.end_ns})"
            if prev is not None:
                p = samples[prev]
                if s.start_ns < p.end_ns and not (s.start_ns == p.start_ns and digests[i] == digests[prev]):
                    return (f"{where} overlaps gpu_samples[{prev}] ({p.start_ns}..{p.end_ns}) "
                            "of the same batch")
            prev = i
            if before > s.start_ns:
                return f"{where} overlaps a stored interval of this GPU that ends at {before}"
            for pt in points:
                if pt.start_ns >= s.end_ns:
                    break
                if pt.start_ns == s.start_ns:
                    if not _same(s, digests[i], pt):
                        return (f"{where} repeats the start of a stored interval of this GPU with other "
                                f"values (stored {pt.start_ns}..{pt.end_ns}, {pt.energy_j!r} J); "
                                "a resend must be identical")
                elif pt.end_ns > s.start_ns:
                    return f"{where} overlaps the stored interval {pt.start_ns}..{pt.end_ns} of this GPU"
    return None


_sample = st.tuples(st.integers(0, 2), st.integers(0, 12), st.integers(1, 4), st.sampled_from([1.0, 2.0]),
                    st.sampled_from(["d1", "d2"]))
_stored = st.tuples(st.integers(0, 2), st.integers(0, 12), st.integers(1, 4), st.sampled_from([1.0, 2.0]),
                    st.sampled_from(["", "d1", "d2"]))


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(_sample, max_size=8), inside=st.lists(_stored, max_size=6),
       before=st.dictionaries(st.integers(0, 2), st.integers(0, 6), max_size=3))
def test_first_conflict_answers_as_the_reference(
    batch: list[tuple[int, int, int, float, str]], inside: list[tuple[int, int, int, float, str]],
    before: dict[int, int],
) -> None:
    samples = [pb.GpuSample(gpu_index=g, start_ns=t, end_ns=t + d, energy_j=e) for g, t, d, e, _ in batch]
    digests = [digest for *_, digest in batch]
    by_gpu: dict[int, dict[int, StoredInterval]] = defaultdict(dict)
    for g, t, d, e, digest in inside:
        by_gpu[g][t] = StoredInterval(t, t + d, digest, e)
    stored = StoredGpuTime(dict(by_gpu), before)
    assert first_conflict(samples, digests, stored) == reference(samples, digests, stored)


def test_the_reference_finds_conflicts_in_this_corpus() -> None:
    """The random corpus above reaches every kind of answer (checked on a few hand-made cases)."""
    s = [pb.GpuSample(gpu_index=0, start_ns=0, end_ns=2, energy_j=1.0),
         pb.GpuSample(gpu_index=0, start_ns=1, end_ns=3, energy_j=1.0)]
    none = StoredGpuTime({}, {})
    assert first_conflict(s, ["a", "b"], none) == (
        "gpu_samples[1] (gpu 0, 1..3) overlaps gpu_samples[0] (0..2) of the same batch")
    assert first_conflict(s[:1], ["a"], StoredGpuTime({}, {0: 1})) == (
        "gpu_samples[0] (gpu 0, 0..2) overlaps a stored interval of this GPU that ends at 1")
    assert first_conflict(s[:1], ["a"], StoredGpuTime({0: {0: StoredInterval(0, 2, "b", 1.0)}}, {})) == (
        "gpu_samples[0] (gpu 0, 0..2) repeats the start of a stored interval of this GPU with other "
        "values (stored 0..2, 1.0 J); a resend must be identical")
    assert first_conflict(s[:1], ["a"], StoredGpuTime({0: {1: StoredInterval(1, 3, "b", 1.0)}}, {})) == (
        "gpu_samples[0] (gpu 0, 0..2) overlaps the stored interval 1..3 of this GPU")
    assert first_conflict(s[:1], ["a"], StoredGpuTime({0: {0: StoredInterval(0, 2, "a", 9.0)}}, {})) is None


_step = st.tuples(st.integers(0, 2), st.integers(-1, 3), st.integers(1, 4), st.sampled_from(["d1", "d2"]))


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(_step, max_size=10),
       before=st.dictionaries(st.integers(0, 2), st.integers(0, 6), max_size=3))
def test_mostly_ordered_batches_with_nothing_stored_inside_answer_as_the_reference(
    steps: list[tuple[int, int, int, str]], before: dict[int, int],
) -> None:
    """Each GPU's samples follow one another (a gap or an overlap of a second now and then): the
    one-pass path where they are in order, the full check where they are not."""
    ends: dict[int, int] = {}
    samples, digests = [], []
    for gpu, gap, d, digest in steps:
        start = ends.get(gpu, 0) + gap
        samples.append(pb.GpuSample(gpu_index=gpu, start_ns=start, end_ns=start + d, energy_j=1.0))
        digests.append(digest)
        ends[gpu] = start + d
    stored = StoredGpuTime({}, before)
    assert first_conflict(samples, digests, stored) == reference(samples, digests, stored)
