"""Cyclic garbage-collector settings of the running collector (one call, once it has started).

Ingest allocates many short-lived containers per batch (parsed messages, tuples, lists, lines). With
CPython's default thresholds (700, 10, 10) a young collection ran every few batches and every full
collection walked every live object of the process (modules, configuration, intensity series, held
node state): in ``benchmarks/capacity.py`` at 400 nodes the cyclic collector took about 15 % of the
collector's CPU. So, once the collector has started:

* ``gc.freeze()``: what is alive after start-up (modules, configuration, topology and intensity
  series) moves to the permanent generation, which collections never walk again;
* a young-generation threshold of ``YOUNG_THRESHOLD`` allocations: most per-batch objects are freed
  by reference counting before a collection sees them, and older generations run as rarely in
  allocations as before in young collections. The threshold counts allocations net of frees, so it
  is above what a few large batches hold at once (a 2,000-sample batch holds about 20,000 containers
  while it is accounted: rows, shares, job points, held series): with 20,000, every such batch set
  off a young collection that walked its own live objects, about 5 % of the collector's CPU in
  ``benchmarks/ingest.py``; with 100,000 none ran there.

Reference counting still frees everything that is not part of a reference cycle at once; only
cyclic garbage waits somewhat longer (at most ``YOUNG_THRESHOLD`` container objects more, a few MB).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000


def tune_after_start() -> None:
    """Freeze the start-up heap and raise the young-generation threshold (see the module docstring)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
