"""Record every NVML call the NVML source makes, with its result or error, as JSON lines.

``gridwatt-agent capture --seconds N -o FILE`` runs ``NvmlSource`` over the real ``pynvml``
through ``RecordingNvml``, which passes each call through unchanged and writes down what
came back. The file is test data: the fake ``pynvml`` of the tests replays it
(tests/fakes/replay_pynvml.py), so the source's tests run over real drivers' answers.
The format is documented in CAPTURE.md beside this file.

What a capture holds: NVML function names, their arguments (handles as small numbers),
results (numbers, strings such as GPU names and UUIDs, structures as their fields) and error
codes, with timestamps; a header with the driver, NVML and nvidia-ml-py versions. No host
name, no environment, no process names or command lines, no credentials.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import importlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from gridwatt import __version__

FORMAT = "gridwatt-nvml-capture"
VERSION = 1
#: Pseudo-function names of the lines that are not NVML calls.
CLOCK_FN = "clock_ns"  # the source's clock (GpuReading.t_ns)
POLL_FN = "#poll"  # a poll (NvmlSource.read) starts
#: Longest capture, and the most calls kept (a bound on memory and file size).
MAX_SECONDS = 3600.0
MAX_CALLS = 2_000_000


class CaptureError(Exception):
    """A capture cannot be made or read; the message says why."""


def _error(err: BaseException) -> dict[str, Any]:
    """An NVML error as a capture records it."""
    return {"code": int(getattr(err, "value", -1)), "name": type(err).__name__, "text": str(err)}


def _handle_key(handle: Any) -> int:
    """The identity of an NVML handle: its pointer value (real pynvml) or the object (fakes)."""
    try:
        value = ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)
    return int(value) if value is not None else id(handle)


class RecordingNvml:
    """A pynvml module wrapper: every ``nvml*`` call goes through and is recorded.

    Constants and error classes are the wrapped module's own, so the source catches its
    errors as usual. ``lines`` holds the records (dicts), in call order.
    """

    def __init__(self, module: Any, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._module = module
        self._clock_ns = clock_ns
        self._handles: dict[int, int] = {}
        #: handle number -> the handle itself (for the power comparison's extra calls)
        self.handle_objects: dict[int, Any] = {}
        self.lines: list[dict[str, Any]] = []

    # ---- what the source sees ----
    def __getattr__(self, name: str) -> Any:
        try:
            attr = getattr(self._module, name)
        except AttributeError:
            if name.startswith("nvml"):
                self._add({"fn": name, "missing": True})
            raise
        if name.startswith("nvml") and callable(attr):
            return self._wrap(name, attr)
        return attr

    def source_clock(self, clock: Callable[[], int] = time.time_ns) -> Callable[[], int]:
        """A clock for NvmlSource(clock_ns=...) that records each reading of it."""

        def recorded() -> int:
            t = clock()
            self._add({"fn": CLOCK_FN, "result": t})
            return t

        return recorded

    def power_fields(self) -> None:
        """Ask every GPU for both power fields (1-s average and instantaneous), as ``extra`` lines.

        The source asks for one of them; these lines let a capture compare the energy counter with
        both integrated powers (``power_comparison``). Replays skip them.
        """
        nvml = self._module
        fields = [getattr(nvml, "NVML_FI_DEV_POWER_AVERAGE", 185),
                  getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", 186)]
        scope = getattr(nvml, "NVML_POWER_SCOPE_GPU", 0)
        for number, handle in sorted(self.handle_objects.items()):
            start = self._clock_ns()
            line: dict[str, Any] = {"fn": "nvmlDeviceGetFieldValues", "extra": True,
                                    "args": [{"handle": number}, [[f, scope] for f in fields]]}
            try:
                result = nvml.nvmlDeviceGetFieldValues(handle, [(f, scope) for f in fields])
            except AttributeError:
                return  # a pynvml without field values: nothing to compare
            except nvml.NVMLError as e:
                line["error"] = _error(e)
            else:
                line["result"] = self.encode(result)
            self._add(line, start)

    def mark_poll(self, poll: int) -> None:
        """Note that poll number ``poll`` (0-based) starts."""
        self._add({"fn": POLL_FN, "poll": poll})

    # ---- internals ----
    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = self._clock_ns()
            line: dict[str, Any] = {"fn": name, "args": [self.encode(a) for a in args]}
            try:
                result = fn(*args)
            except self._module.NVMLError as e:
                line["error"] = _error(e)
                self._add(line, start)
                raise
            if name.startswith("nvmlDeviceGetHandleBy"):
                number = self._handles.setdefault(_handle_key(result), len(self._handles))
                self.handle_objects[number] = result
            line["result"] = self.encode(result)
            self._add(line, start)
            return result

        return call

    def _add(self, line: dict[str, Any], start_ns: int | None = None) -> None:
        if len(self.lines) >= MAX_CALLS:
            raise CaptureError(f"capture exceeds {MAX_CALLS} calls")
        now = self._clock_ns()
        record: dict[str, Any] = {"seq": len(self.lines), "t_ns": start_ns if start_ns is not None else now}
        if start_ns is not None:
            record["dur_ns"] = now - start_ns
        record.update(line)
        self.lines.append(record)

    def encode(self, value: Any) -> Any:
        """A JSON form of an NVML argument or result (see CAPTURE.md)."""
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, bytes):
            return {"bytes": value.decode("utf-8", "replace")}
        if isinstance(value, list | tuple):
            return [self.encode(v) for v in value]
        key = _handle_key(value)
        if key in self._handles:
            return {"handle": self._handles[key]}
        if isinstance(value, ctypes.Structure | ctypes.Union):
            names = [f[0] for f in value._fields_]
            return {"obj": {n: self.encode(getattr(value, n)) for n in names}}
        if isinstance(value, ctypes._SimpleCData):
            return self.encode(value.value)
        if hasattr(value, "__dict__"):
            return {"obj": {k: self.encode(v) for k, v in vars(value).items() if not k.startswith("_")}}
        return {"repr": repr(value)[:200]}


def header(
    nvml: Any,
    *,
    seconds: float,
    interval_s: float,
    polls: int,
    synthetic: bool,
    description: str = "",
) -> dict[str, Any]:
    """The first line of a capture: format, versions, what was captured (nothing about the host)."""

    def ask(fn: str) -> str:
        try:
            value = getattr(nvml, fn)()
        except Exception:  # a version string is best effort
            return ""
        return value.decode() if isinstance(value, bytes) else str(value)

    try:
        pynvml_version = metadata.version("nvidia-ml-py")
    except metadata.PackageNotFoundError:
        pynvml_version = ""
    return {
        "format": FORMAT,
        "version": VERSION,
        "synthetic": synthetic,
        "description": description,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gridwatt_version": __version__,
        "pynvml_version": "" if synthetic else pynvml_version,
        "driver_version": ask("nvmlSystemGetDriverVersion"),
        "nvml_version": ask("nvmlSystemGetNVMLVersion"),
        "cuda_driver_version": ask("nvmlSystemGetCudaDriverVersion"),
        "seconds": seconds,
        "interval_s": interval_s,
        "polls": polls,
    }


def record_session(
    module: Any,
    *,
    seconds: float,
    interval_s: float,
    synthetic: bool = False,
    description: str = "",
    clock_ns: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], None] = time.sleep,
    before_poll: Callable[[int], None] | None = None,
    compare_power: bool = True,
) -> list[dict[str, Any]]:
    """Run NvmlSource over ``module`` for ``seconds`` (a poll every ``interval_s``); the capture's lines.

    ``before_poll(k)`` runs before poll k (synthetic sessions change their fake GPUs there).
    ``compare_power`` adds, after each poll, the ``extra`` lines that ``power_comparison`` reads.
    The versions in the header are asked outside the recording, before the source shuts NVML down.
    """
    from gridwatt.agent.sources.nvml.source import NvmlSource

    if not 0 < seconds <= MAX_SECONDS:
        raise CaptureError(f"--seconds must be in (0, {MAX_SECONDS:.0f}] (got {seconds})")
    if not 0 < interval_s <= seconds:
        raise CaptureError(f"--interval must be in (0, seconds] (got {interval_s})")
    rec = RecordingNvml(module, clock_ns)
    polls = int(seconds / interval_s) + 1  # both ends of the session: polls-1 intervals
    source = NvmlSource(nvml_module=rec, clock_ns=rec.source_clock(clock_ns))
    try:
        head = header(module, seconds=seconds, interval_s=interval_s, polls=polls, synthetic=synthetic,
                      description=description)
        for k in range(polls):
            if k:
                sleep(interval_s)
            if before_poll is not None:
                before_poll(k)
            rec.mark_poll(k)
            source.read()
            if compare_power:
                rec.power_fields()
    finally:
        source.close()
    return [head, *rec.lines]


def write_capture(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Write the capture as JSON lines (mode 0644; a capture holds no secrets)."""
    text = "".join(json.dumps(line, separators=(",", ":"), sort_keys=False) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")


def read_capture(path: Path, max_bytes: int = 512 * 2**20) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the call lines of a capture file; CaptureError names what is wrong."""
    size = path.stat().st_size
    if size > max_bytes:
        raise CaptureError(f"{path}: {size} bytes is over the {max_bytes}-byte bound")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise CaptureError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise CaptureError(f"{path}:{n}: a line must be a JSON object")
            rows.append(row)
    if not rows or rows[0].get("format") != FORMAT:
        raise CaptureError(f"{path}:1: not a {FORMAT} file (no header line)")
    if rows[0].get("version") != VERSION:
        raise CaptureError(f"{path}:1: version {rows[0].get('version')!r} is not {VERSION}")
    return rows[0], rows[1:]


@dataclass(frozen=True, slots=True)
class PowerComparison:
    """One GPU over a capture: energy by its counter and by each integrated power. Units: J, s."""

    index: int
    uuid: str
    name: str
    #: Energy counter: the sum of its non-negative differences (None: no counter); its span.
    counter_j: float | None
    counter_s: float
    counter_resets: int
    #: NVML_FI_DEV_POWER_AVERAGE (1-s average) and NVML_FI_DEV_POWER_INSTANT, trapezoid-integrated;
    #: None where the field did not answer; their span.
    average_power_j: float | None
    instant_power_j: float | None
    power_s: float
    #: nvmlDeviceGetPowerUsage as the source read it (GPUs without the power fields), integrated.
    usage_power_j: float | None = None
    usage_s: float = 0.0

    def line(self) -> str:
        """One line for people: each method's energy and mean power."""

        def part(label: str, joules: float | None, span_s: float) -> str:
            if joules is None:
                return f"{label} n/a"
            mean = f" ({joules / span_s:.1f} W)" if span_s > 0 else ""
            return f"{label} {joules:.1f} J{mean}"

        resets = f", {self.counter_resets} counter resets skipped" if self.counter_resets else ""
        if self.usage_power_j is not None:
            usage = part("nvmlDeviceGetPowerUsage", self.usage_power_j, self.usage_s)
            resets += f"; {usage} over {self.usage_s:.1f} s"
        return (f"GPU {self.index} {self.name} ({self.uuid}): "
                f"{part('energy counter', self.counter_j, self.counter_s)} over {self.counter_s:.1f} s; "
                f"{part('1-s average power', self.average_power_j, self.power_s)}, "
                f"{part('instantaneous power', self.instant_power_j, self.power_s)} over {self.power_s:.1f} s"
                f"{resets}")


def _trapezoid_j(samples: list[tuple[int, int]]) -> float | None:
    """Integral of (t_ns, mW) samples. Units: J."""
    if len(samples) < 2:
        return None
    return sum((p0 + p1) / 2 / 1000 * (t1 - t0) / 1e9 for (t0, p0), (t1, p1) in itertools.pairwise(samples))


def _span_s(samples: list[tuple[int, int]]) -> float:
    return (samples[-1][0] - samples[0][0]) / 1e9 if len(samples) >= 2 else 0.0


def power_comparison(rows: Iterable[dict[str, Any]]) -> list[PowerComparison]:
    """Per GPU of a capture (its call lines): the energy counter against both integrated powers."""
    index: dict[int, int] = {}
    uuid: dict[int, str] = {}
    name: dict[int, str] = {}
    energy: dict[int, list[tuple[int, int]]] = {}
    average: dict[int, list[tuple[int, int]]] = {}
    instant: dict[int, list[tuple[int, int]]] = {}
    usage: dict[int, list[tuple[int, int]]] = {}
    for row in rows:
        fn, args, result = row.get("fn"), row.get("args") or [], row.get("result")
        if fn == "nvmlDeviceGetHandleByIndex" and isinstance(result, dict) and "handle" in result:
            index.setdefault(result["handle"], int(args[0]))
            continue
        h = args[0].get("handle") if args and isinstance(args[0], dict) else None
        if h is None or result is None:
            continue
        if fn == "nvmlDeviceGetUUID":
            uuid[h] = str(result)
        elif fn == "nvmlDeviceGetName":
            name[h] = str(result)
        elif fn == "nvmlDeviceGetPowerUsage":
            usage.setdefault(h, []).append((int(row["t_ns"]), int(result)))
        elif fn == "nvmlDeviceGetTotalEnergyConsumption":
            energy.setdefault(h, []).append((int(row["t_ns"]), int(result)))
        elif fn == "nvmlDeviceGetFieldValues" and row.get("extra"):
            for value in result:
                v = value.get("obj", {})
                if v.get("nvmlReturn") != 0:
                    continue
                target = {185: average, 186: instant}.get(v.get("fieldId"))
                if target is not None:
                    target.setdefault(h, []).append((int(row["t_ns"]), int(v["value"]["obj"]["uiVal"])))
    out = []
    for h in sorted(index):
        counts = energy.get(h, [])
        deltas = [e1 - e0 for (_, e0), (_, e1) in itertools.pairwise(counts)]
        counter_j = sum(d for d in deltas if d >= 0) / 1000 if len(counts) >= 2 else None
        powers = average.get(h, []) or instant.get(h, [])
        out.append(PowerComparison(
            index=index[h], uuid=uuid.get(h, ""), name=name.get(h, ""),
            counter_j=counter_j,
            counter_s=(counts[-1][0] - counts[0][0]) / 1e9 if len(counts) >= 2 else 0.0,
            counter_resets=sum(1 for d in deltas if d < 0),
            average_power_j=_trapezoid_j(average.get(h, [])),
            instant_power_j=_trapezoid_j(instant.get(h, [])),
            power_s=(powers[-1][0] - powers[0][0]) / 1e9 if len(powers) >= 2 else 0.0,
            usage_power_j=_trapezoid_j(usage.get(h, [])),
            usage_s=_span_s(usage.get(h, [])),
        ))
    return out


def run_capture_command(seconds: float, interval_s: float, output: Path) -> int:
    """``gridwatt-agent capture``: record the real pynvml; 0 on success, 2 with one line on stderr if not."""
    from gridwatt.agent.sources.base import SourceError

    try:
        module = importlib.import_module("pynvml")
    except ImportError as e:
        print(f"gridwatt-agent capture: cannot import pynvml ({e}); install nvidia-ml-py", file=sys.stderr)
        return 2
    try:
        lines = record_session(module, seconds=seconds, interval_s=interval_s)
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        write_capture(tmp, lines)
        tmp.replace(output)
    except (SourceError, CaptureError, OSError) as e:
        print(f"gridwatt-agent capture: {e}", file=sys.stderr)
        return 2
    head = lines[0]
    gpus = sum(1 for line in lines if line.get("fn") == "nvmlDeviceGetHandleByIndex")
    print(f"wrote {len(lines) - 1} records ({head['polls']} polls of {gpus} GPUs, driver "
          f"{head['driver_version'] or 'unknown'}) to {output}")
    for gpu in power_comparison(lines[1:]):
        print(gpu.line())
    return 0
