"""InfluxDB line protocol escaping."""

from __future__ import annotations

_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "\\\\", "\n": " "})


def tag(value: str) -> str:
    """Escape a tag key or value (commas, spaces, equals signs, backslashes)."""
    return value.translate(_TAG_ESCAPES) if value else "none"


def string_field(value: str) -> str:
    """A quoted string field value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
