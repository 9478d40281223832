"""Bounds on the names that become InfluxDB tags or strings: job ids, node names, GPU UUIDs, users.

One rule, shared by the agent (which skips what the collector would refuse) and the collector (which
refuses it, naming the field, and never echoes more than ``ECHO_CHARS`` of what it was sent):

* job id, node, GPU UUID: 1 to ``NAME_MAX_CHARS`` (128) characters, printable ASCII (space through
  ``~``) except the backslash. Every such string is stored and read back exactly: InfluxDB's line
  protocol cannot express a tag value ending in a backslash, and treats one before ``,``/``=``/space
  as an escape.
* user (and the other who-fields, collector/validation.py): at most ``USER_MAX_CHARS`` (256)
  printable characters.
"""

from __future__ import annotations

import re

NAME_MAX_CHARS = 128
USER_MAX_CHARS = 256
#: How much of a refused value an error message quotes.
ECHO_CHARS = 40

_NAME = re.compile(r"[\x20-\x5b\x5d-\x7e]+")


def shown(value: str) -> str:
    """``value`` for an error message: quoted, cut to ECHO_CHARS characters, with its length."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid job id / node / GPU UUID, or None."""
    if not value:
        return "empty"
    if len(value) > NAME_MAX_CHARS:
        return f"{len(value)} characters, above the {NAME_MAX_CHARS} allowed"
    if not _NAME.fullmatch(value):
        bad = next(c for c in value if not _NAME.fullmatch(c))
        return (f"character {bad!r} is not allowed (printable ASCII except backslash): "
                f"value {shown(value)}")
    return None


def user_problem(value: str) -> str | None:
    """Why ``value`` is not a valid user name, or None (the empty user is valid: unknown)."""
    if len(value) > USER_MAX_CHARS:
        return f"{len(value)} characters, above the {USER_MAX_CHARS} allowed"
    if not value.isprintable():
        return f"not printable: {shown(value)}"
    return None
