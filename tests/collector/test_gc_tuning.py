"""The collector's GC settings once started (collector/gc_tuning.py)."""

from __future__ import annotations

import gc

from gridwatt.collector.gc_tuning import YOUNG_THRESHOLD, tune_after_start


def test_tune_after_start_freezes_the_heap_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        alive = [object() for _ in range(10)]  # noqa: F841 (kept alive across the freeze)
        tune_after_start()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
