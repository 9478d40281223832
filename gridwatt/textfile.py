"""Lines of a text (CSV) file that must be UTF-8, with one clear error for anything else.

A CSV saved as UTF-16 (Excel's "Unicode text") or a binary file given by mistake would otherwise
surface as ``UnicodeDecodeError`` or csv's "line contains NUL" deep in a reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def checked_lines(lines: Iterable[str], path: Path, error: Callable[[str], Exception]) -> Iterator[str]:
    """``lines`` unchanged; ``error(message)`` raised at the first one that is not UTF-8 text."""
    n = 0
    try:
        for n, line in enumerate(lines, start=1):
            if "\x00" in line:
                raise error(f"{path}:{n}: contains NUL bytes: not a text CSV (UTF-16 or binary?); "
                            "save it as UTF-8 CSV")
            yield line
    except UnicodeDecodeError as exc:
        raise error(f"{path}:{n + 1}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line "
                    "being read; UTF-16 or binary?); save it as UTF-8 CSV") from None
