"""Finding 3 of issue #8: slow or numerous HTTP clients cannot take the collector's ingest down."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.hostile.rig import AttackRig

#: Real collector and agent processes.
pytestmark = pytest.mark.e2e

HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: collector\r\nX-Slow: "


def test_half_sent_requests_neither_exhaust_descriptors_nor_stall_ingest(
    make_rig: Callable[..., AttackRig],
) -> None:
    rig = make_rig(extra_server="http_header_timeout_s = 2.0\nhttp_max_connections = 200\n")
    # as under systemd without LimitNOFILE: 1,024 descriptors
    resource.prlimit(rig.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    port = rig.collector.http_port
    socks: list[socket.socket] = []
    peak_fds = 0
    with rig.good_agent_during("slow-http"):
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            with contextlib.suppress(OSError):  # already evicted by newer connections (over the cap)
                s.sendall(HALF_REQUEST)
            socks.append(s)
            if len(socks) % 100 == 0:
                peak_fds = max(peak_fds, len(os.listdir(f"/proc/{rig.pid}/fd")))
        # while they hang, /healthz answers (the rig polls it too) and the API works
        with urllib.request.urlopen(f"{rig.collector.http_url}/healthz", timeout=10) as resp:
            assert resp.status == 200
        time.sleep(3.0)  # past the header deadline
        peak_fds = max(peak_fds, len(os.listdir(f"/proc/{rig.pid}/fd")))
    closed = 0
    for s in socks:
        s.settimeout(5)
        try:
            closed += s.recv(1) == b""
        except OSError:  # reset by the collector
            closed += 1
        s.close()
    assert closed == 1100  # all dropped: the oldest when over the cap, the rest at 2 s
    assert peak_fds < 700, peak_fds  # well inside the 1,024 it has (aborted ones close a moment later)
    assert len(rig.collector.log_text()) < 1_000_000
