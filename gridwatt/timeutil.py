"""UTC timestamps: parsing and formatting nanoseconds since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ns(text: str) -> int:
    """Parse an ISO 8601 time (naive means UTC) or integer ns/s epoch into ns since the epoch."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        # Heuristic: anything below 1e12 is seconds, otherwise nanoseconds.
        return value * NS_PER_S if abs(value) < 10**12 else value
    normal = text.replace("Z", "+00:00")
    if " " in normal and "T" not in normal:
        normal = normal.replace(" ", "T", 1)
    dt = datetime.fromisoformat(normal)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def format_time_ns(t_ns: int) -> str:
    """ISO 8601 UTC with a trailing Z, to the second."""
    return datetime.fromtimestamp(t_ns / NS_PER_S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
