"""Fixture: an attack rig (collector process + well-behaved agent) per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.hostile.rig import AttackRig


@pytest.fixture
def make_rig(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Callable[..., AttackRig]]:
    rigs: list[AttackRig] = []

    def make(**kwargs: object) -> AttackRig:
        rig = AttackRig(tmp_path, influxdb, database, **kwargs)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig.start()

    yield make
    for rig in rigs:
        rig.close()
