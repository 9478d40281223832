"""gridwatt/atomic_file.py: the final mode whatever the umask, and a failed write leaves the old file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gridwatt.atomic_file import replace_file

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o640), (0o000, 0o600), (0o022, 0o644)])
def test_the_file_has_the_mode_asked_whatever_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        replace_file(tmp_path / "f", "x\n", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode
    assert (tmp_path / "f").read_text() == "x\n"


@pytest.mark.parametrize("sync", [True, False])
def test_the_new_content_replaces_the_old(tmp_path: Path, sync: bool) -> None:
    path = tmp_path / "acked"
    path.write_text("1\n")
    replace_file(path, "1700000000000000000\n", sync=sync)
    assert path.read_text() == "1700000000000000000\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acked"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"old": 1}')
    with pytest.raises(UnicodeEncodeError):
        replace_file(path, "\ud800")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
