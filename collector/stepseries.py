"""Step functions of time (grid intensity, PUE) and splitting an interval at their steps."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepSeries:
    """A value that holds from each step time until the next step.

    ``value_at(t)`` is the value of the last step at or before ``t``; before the
    first step the first value holds (so a series of one step is a constant).
    ``estimated[i]`` says whether step i's value was estimated by its source.
    """

    times_ns: Sequence[int]
    values: Sequence[float]
    estimated: Sequence[bool] = ()

    def __post_init__(self) -> None:
        if not self.times_ns or len(self.times_ns) != len(self.values):
            raise ValueError("a StepSeries needs at least one step and one value per step")
        if any(b <= a for a, b in zip(self.times_ns, self.times_ns[1:], strict=False)):
            raise ValueError("step times must be strictly increasing")

    @classmethod
    def constant(cls, value: float) -> StepSeries:
        return cls((0,), (value,))

    def index_at(self, t_ns: int) -> int:
        return max(bisect_right(self.times_ns, t_ns) - 1, 0)

    def value_at(self, t_ns: int) -> float:
        return self.values[self.index_at(t_ns)]

    def is_estimated_at(self, t_ns: int) -> bool:
        return bool(self.estimated) and self.estimated[self.index_at(t_ns)]

    def next_step_after(self, t_ns: int) -> int | None:
        """The first step time strictly after t_ns, or None."""
        i = bisect_right(self.times_ns, t_ns)
        return self.times_ns[i] if i < len(self.times_ns) else None

    def pieces(self, start_ns: int, end_ns: int) -> Iterator[tuple[int, int, float]]:
        """Split [start_ns, end_ns) at this series' steps: (piece_start, piece_end, value)."""
        i = self.index_at(start_ns)
        t = start_ns
        n = len(self.times_ns)
        while t < end_ns:
            nxt = self.times_ns[i + 1] if i + 1 < n else end_ns
            if nxt <= t:
                i += 1
                continue
            piece_end = min(nxt, end_ns)
            yield t, piece_end, self.values[i]
            t = piece_end
            i += 1
