"""Writer marks (collector/writer_marks.py): their lines, which are known stored, and the check that a
window's only writer is this instance (pure; the real-InfluxDB tests are in test_read_back_rewrites.py,
test_node_state.py and test_revisit.py)."""

from __future__ import annotations

from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.writer_marks import ID_BITS, WriterMarks, new_instance_id

NS = 1_000_000_000
RES = 60 * NS
T = 1_700_000_040 * NS  # a window start (a whole minute)


def test_a_mark_is_one_point_per_node_and_window_at_the_instance_offset() -> None:
    marks = WriterMarks(RES, instance_id=7 * RES + 12_345)
    assert marks.offset_ns == 12_345
    assert marks.lines("n 1,a", [T, T + RES]) == [
        f"window_writer,node=n\\ 1\\,a w={7 * RES + 12_345}i {T + 12_345}",
        f"window_writer,node=n\\ 1\\,a w={7 * RES + 12_345}i {T + RES + 12_345}",
    ]


def test_instance_ids_are_random_positive_and_fit_an_influxdb_integer() -> None:
    ids = {new_instance_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(0 < i < 2**ID_BITS <= 2**63 for i in ids)
    assert WriterMarks(RES).instance_id != WriterMarks(RES).instance_id


def test_marks_are_written_once_per_window_and_only_once_stored() -> None:
    marks = WriterMarks(RES, instance_id=5)
    lines, owners = marks.prepend({"n1": {T + RES, T}, "n2": {T}}, ["job,... 1"])
    assert lines == [*marks.lines("n1", [T, T + RES]), *marks.lines("n2", [T]), "job,... 1"]
    assert owners == [("n1", T), ("n1", T + RES), ("n2", T)]
    assert marks.pending("n1", [T]) == [T]  # not stored until confirmed
    marks.confirm(owners, refused={1})  # InfluxDB refused n1's second mark
    assert (marks.written, marks.refused) == (3, 1)
    assert marks.pending("n1", [T, T + RES, T + 2 * RES]) == [T + RES, T + 2 * RES]
    assert marks.pending("n2", [T]) == []
    assert marks.prepend({"n2": {T}}, ["x"]) == (["x"], [])


def test_what_is_known_stored_is_bounded() -> None:
    marks = WriterMarks(RES, instance_id=5, max_nodes=2, max_windows=3)
    marks.stored("n1", [T + k * RES for k in range(5)])
    assert marks.pending("n1", [T + k * RES for k in range(5)]) == [T, T + RES]  # forgotten: marked again
    marks.stored("n2", [T])
    marks.stored("n3", [T])  # n1 is the least recently marked node
    assert (marks.pending("n1", [T + 4 * RES]), marks.pending("n2", [T]), marks.pending("n3", [T])) == (
        [T + 4 * RES], [], [])


def test_only_windows_marked_by_this_instance_alone_skip_the_sums() -> None:
    marks = WriterMarks(RES, instance_id=5)
    rows = [({"node": "n1"}, {"time": T + 5, "w": 5}),
            ({"node": "n1"}, {"time": T + RES + 5, "w": 5}), ({"node": "n1"}, {"time": T + RES + 9, "w": 9}),
            ({"node": "n2"}, {"time": T + 9, "w": 9}),
            ({"node": "n2"}, {"time": T + RES + 5, "w": None})]
    writers = marks.writers(rows)
    assert writers == {"n1": {T: {5}, T + RES: {5, 9}}, "n2": {T: {9}}}
    nodes = {"n1": {T, T + RES, T + 2 * RES}, "n2": {T, T + RES}, "n3": {T}}
    # n1's T: only this instance; T + RES: another too; T + 2 RES: no mark at all; n2: another's; n3: none
    assert marks.only_mine(writers, nodes) == {"n1": {T}}


def test_marks_are_kept_in_the_retention_policy_of_job_points() -> None:
    cfg = InfluxConfig(retention_policy="long", retention_policies=[
        {"name": "short", "duration": "7d", "measurements": ["job", "gpu"]}])
    assert cfg.retention_policy_of("window_writer") == cfg.retention_policy_of("job") == "short"
    assert InfluxConfig(retention_policy="long").retention_policy_of("window_writer") == "long"
