"""The collector renders byte-identical output to the golden file made before the CPU work of #9."""

from __future__ import annotations

import difflib

from tests.collector.cpu_golden import GOLDEN, render


def test_rendered_output_is_byte_identical_to_the_golden_file() -> None:
    expected = GOLDEN.read_text(encoding="utf-8")
    got = render()
    if got != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), got.splitlines(True),
                                                 "golden", "now", n=0))[:40])
        raise AssertionError(f"rendered output differs from {GOLDEN.name}:\n{diff}")
    assert len(expected.splitlines()) > 1000
