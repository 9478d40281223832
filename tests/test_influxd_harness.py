"""The harness's influxd (gridwatt/demo_harness/influxdb.py) runs with the settings the benchmarks were
measured with: GOGC=INFLUXD_GOGC in its environment, and extra ``[data]`` settings in its config."""

from __future__ import annotations

from pathlib import Path

from gridwatt.demo_harness.influxdb import INFLUXD_GOGC, LocalInfluxDB


def influxd_environ(db: LocalInfluxDB) -> dict[str, str]:
    assert db.proc is not None
    raw = Path(f"/proc/{db.proc.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_influxd_gets_the_harness_gogc_and_extra_data_settings(tmp_path: Path) -> None:
    with LocalInfluxDB(tmp_path / "a", data_settings={"wal-fsync-delay": '"50ms"'}) as db:
        assert INFLUXD_GOGC == 400
        assert influxd_environ(db)["GOGC"] == "400"
        assert '  wal-fsync-delay = "50ms"\n' in (db.data_dir / "influxdb.conf").read_text()
    with LocalInfluxDB(tmp_path / "b", gogc=150) as db:
        assert influxd_environ(db)["GOGC"] == "150"
