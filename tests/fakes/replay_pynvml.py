"""The fake ``pynvml``, replaying a recorded NVML session (agent/sources/nvml/CAPTURE.md).

``ReplayNvml(path)`` answers each NVML call with what the real driver answered to the same
call (same function, same arguments) in the capture, in the order recorded, raising the
recorded NVML errors as ``fake_pynvml.NVMLError`` subclasses; handles are small objects
carrying the capture's handle number. ``clock_ns`` replays the source's clock, so readings
carry the recorded times. Constants and error classes are those of ``fake_pynvml``
(pynvml's values).

A call the capture does not hold fails the test (``ReplayMismatch``), so a change in the
calls the source makes shows up; ``strict=False`` answers such calls with NotSupported.
``unconsumed()`` lists the recorded calls that were not asked for.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gridwatt.agent.sources.nvml.capture import CLOCK_FN, POLL_FN, read_capture
from tests.fakes import fake_pynvml


class ReplayMismatch(AssertionError):
    """The source made a call the capture does not hold (or asked the clock too often)."""


@dataclass(frozen=True)
class ReplayHandle:
    """An NVML device handle of the capture (``{"handle": n}``)."""

    number: int


def _key(fn: str, args: list[Any]) -> str:
    return fn + json.dumps(args, sort_keys=True, separators=(",", ":"))


class ReplayNvml:
    """A pynvml-like module answering from a capture file."""

    def __init__(self, path: Path, strict: bool = True) -> None:
        self.path = path
        self.header, rows = read_capture(path)
        self.strict = strict
        self.calls: Counter[str] = Counter()
        self._answers: dict[str, deque[dict[str, Any]]] = {}
        self._missing: set[str] = set()
        self._clock: deque[int] = deque()
        self.polls = 0
        for row in rows:
            fn = row.get("fn", "")
            if fn == CLOCK_FN:
                self._clock.append(int(row["result"]))
            elif fn == POLL_FN:
                self.polls += 1
            elif row.get("extra"):
                continue  # asked by the capture for the power comparison, not by the source
            elif row.get("missing"):
                self._missing.add(fn)
            else:
                self._answers.setdefault(_key(fn, row.get("args", [])), deque()).append(row)
        for name, value in vars(fake_pynvml).items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("nvml") or name in self._missing:
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            return self._answer(name, list(args))

        return call

    def clock_ns(self) -> int:
        """The source's clock, as recorded."""
        if not self._clock:
            raise ReplayMismatch(f"{self.path.name}: the source read its clock more often than recorded")
        return self._clock.popleft()

    def clock_left(self) -> int:
        """Recorded clock readings the source did not ask for."""
        return len(self._clock)

    def unconsumed(self) -> list[dict[str, Any]]:
        """Recorded calls nobody asked for, in capture order."""
        left = [row for q in self._answers.values() for row in q]
        return sorted(left, key=lambda r: r["seq"])

    def _answer(self, fn: str, args: list[Any]) -> Any:
        self.calls[fn] += 1
        key = _key(fn, [self._encode(a) for a in args])
        queue = self._answers.get(key)
        if not queue:
            if self.strict:
                raise ReplayMismatch(f"{self.path.name}: no recorded answer (left) for {key}")
            raise fake_pynvml.NVMLError(fake_pynvml.NVML_ERROR_NOT_SUPPORTED)
        row = queue.popleft()
        if "error" in row:
            raise fake_pynvml.NVMLError(int(row["error"]["code"]))
        return self._decode(row.get("result"))

    def _encode(self, value: Any) -> Any:
        if isinstance(value, ReplayHandle):
            return {"handle": value.number}
        if isinstance(value, list | tuple):
            return [self._encode(v) for v in value]
        if isinstance(value, bytes):
            return {"bytes": value.decode()}
        return value

    def _decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._decode(v) for v in value]
        if isinstance(value, dict):
            if "handle" in value:
                return ReplayHandle(int(value["handle"]))
            if "bytes" in value:
                return str(value["bytes"]).encode()
            if "obj" in value:
                return SimpleNamespace(**{k: self._decode(v) for k, v in value["obj"].items()})
            raise ReplayMismatch(f"{self.path.name}: cannot replay the value {value!r}")
        return value
