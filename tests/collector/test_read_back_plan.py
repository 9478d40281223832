"""Which nodes' windows each read-back query covers (collector/read_back_plan.py): hand-worked plans."""

from __future__ import annotations

from gridwatt.collector.read_back_plan import Query, plan_read_backs

W = 60  # a window, in the plans below (ns don't matter to the planner)


def runs(windows: set[int], gap_windows: int = 2) -> list[tuple[int, int]]:
    """RackRollup._runs' rule with a gap of ``gap_windows`` windows: windows at most that far apart
    share a run."""
    out: list[tuple[int, int]] = []
    for t in sorted(windows):
        if out and t - out[-1][1] <= gap_windows * W:
            out[-1] = (out[-1][0], t + W)
        else:
            out.append((t, t + W))
    return out


def wins(*k: int) -> set[int]:
    return {i * W for i in k}


def test_nodes_due_at_the_same_windows_share_one_query() -> None:
    """Real time: every node of the rack has the window just closed: one query naming them all."""
    plan = plan_read_backs({"n2": wins(5), "n1": wins(5), "n3": wins(5)}, runs)
    assert plan == [Query(5 * W, 6 * W, {"n1": [(5 * W, 6 * W)], "n2": [(5 * W, 6 * W)],
                                         "n3": [(5 * W, 6 * W)]})]


def test_a_backfill_reads_each_node_over_its_own_hours_only() -> None:
    """Node a is due at windows 0-2, b at 3-5: a read over the union (0-6, both nodes) would read
    12 node-windows; two queries read 6."""
    plan = plan_read_backs({"a": wins(0, 1, 2), "b": wins(3, 4, 5)}, runs)
    assert plan == [Query(0, 3 * W, {"a": [(0, 3 * W)]}), Query(3 * W, 6 * W, {"b": [(3 * W, 6 * W)]})]
    read = sum(len(q.take) * (q.hi_ns - q.lo_ns) // W for q in plan)
    assert read == 6


def test_a_run_inside_a_range_at_most_twice_its_length_joins_that_query() -> None:
    # b one window behind a: b's run [4, 6) holds a's [5, 6), twice its length: one query
    plan = plan_read_backs({"a": wins(5), "b": wins(4, 5)}, runs)
    assert plan == [Query(4 * W, 6 * W, {"b": [(4 * W, 6 * W)], "a": [(5 * W, 6 * W)]})]
    # a range more than twice as long: a stays apart (it would read three windows for one)
    plan = plan_read_backs({"a": wins(5), "b": wins(3, 4, 5)}, runs)
    assert plan == [Query(3 * W, 6 * W, {"b": [(3 * W, 6 * W)]}),
                    Query(5 * W, 6 * W, {"a": [(5 * W, 6 * W)]})]


def test_a_node_takes_only_its_own_runs_from_a_query() -> None:
    """Node a has two one-window runs (0 and 10, far apart) inside b's 12-window run: twelve times as
    long, so they do not join it; a is then named in queries whose ranges overlap b's, and every
    (node, window) is still taken once."""
    nodes = {"a": wins(0, 10), "b": set(range(0, 12 * W, W))}
    plan = plan_read_backs(nodes, lambda ws: runs(ws, gap_windows=3))
    assert plan == [Query(0, W, {"a": [(0, W)]}), Query(0, 12 * W, {"b": [(0, 12 * W)]}),
                    Query(10 * W, 11 * W, {"a": [(10 * W, 11 * W)]})]
    # every (node, window) due is taken by exactly one query
    for node, windows in nodes.items():
        for t in range(0, 12 * W, W):
            assert sum(q.takes(node, t) for q in plan) == (1 if t in windows else 0)


def test_two_runs_of_a_node_inside_one_query_are_both_taken_once() -> None:
    # b: windows 0-9 (one run); a: windows 0-4 and 8-9 (two runs, gap 3 > 2): a's [0, 5) is inside b's
    # [0, 10) at twice its length and joins; a's [8, 10) (5 times shorter) stays apart
    nodes = {"a": wins(0, 1, 2, 3, 4, 8, 9), "b": set(range(0, 10 * W, W))}
    plan = plan_read_backs(nodes, runs)
    assert plan == [Query(0, 10 * W, {"b": [(0, 10 * W)], "a": [(0, 5 * W)]}),
                    Query(8 * W, 10 * W, {"a": [(8 * W, 10 * W)]})]
    for node, windows in nodes.items():
        for t in range(0, 10 * W, W):
            assert sum(q.takes(node, t) for q in plan) == (1 if t in windows else 0)
    assert not plan[0].takes("c", 0)  # a node the query does not name


def test_no_windows_no_queries() -> None:
    assert plan_read_backs({}, runs) == []
    assert plan_read_backs({"a": set()}, runs) == []
