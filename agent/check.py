"""``gridwatt-agent check``: is this node ready? GPUs, spool, collector, credentials; one line each.

Every line starts with ✓ (fine), ! (works, but worth a look) or ✗ (will not work, with the reason
and what to change). The check passes (exit 0) when no line is ✗. With several collector
``addresses`` each is probed (see :func:`check_collector` for when one that does not answer fails).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gridwatt import __version__
from gridwatt.agent.attribution.podresources import containers_by_device, list_pod_resources
from gridwatt.agent.config import AgentConfig, CollectorConnection
from gridwatt.agent.sources.base import GpuReading, GpuSource, SourceError
from gridwatt.agent.sources.sim.trace import TraceError
from gridwatt.configfile import ConfigError, read_secret
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

OK, WARN, FAIL = "✓", "!", "✗"

#: Field name in check output → attribute of GpuReading (None when unsupported).
_FIELDS = {
    "energy_counter": "energy_mj",
    "power": "power_mw",
    "utilization": "util_pct",
    "memory": "mem_used_bytes",
    "temperature": "temp_c",
    "power_limit": "power_limit_mw",
    "sm_clock": "sm_clock_mhz",
}


@dataclass
class CheckReport:
    """The lines printed, and whether any failed."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def add(self, mark: str, text: str) -> None:
        self.lines.append(f"{mark} {text}")
        if mark == FAIL:
            self.failed = True


def supported_fields(reading: GpuReading) -> tuple[list[str], list[str]]:
    """(supported, unsupported) field names of one GPU reading."""
    have, lack = [], []
    for name, attr in _FIELDS.items():
        if getattr(reading, attr) is None or name in reading.unsupported:
            lack.append(name)
        else:
            have.append(name)
    return have, lack


def check_source(config: AgentConfig, report: CheckReport, source: GpuSource | None = None) -> None:
    """Open the configured source, read every GPU once, and list the fields each supports."""
    from gridwatt.agent.runner import build_source

    try:
        source = source or build_source(config, replay=False)
    except (SourceError, TraceError, OSError) as exc:
        report.add(FAIL, f"GPU source {config.source.kind}: {exc}")
        return
    infos = {}
    devices = getattr(source, "devices", None)  # NvmlSource: power method, MIG mode
    try:
        readings = source.read()
        if callable(devices):
            infos = {d.index: d for d in devices()}
    except SourceError as exc:
        report.add(FAIL, f"GPU source {config.source.kind}: {exc}")
        return
    finally:
        source.close()
    if not readings:
        report.add(FAIL, f"GPU source {config.source.kind}: no GPUs found")
        return
    report.add(OK, f"GPU source {config.source.kind}: {len(readings)} GPUs")
    for r in readings:
        if r.fault:
            report.add(FAIL, f"  GPU {r.index} {r.uuid}: {r.fault}")
            continue
        have, lack = supported_fields(r)
        energy = "energy counter" if "energy_counter" in have else "power integration (no energy counter)"
        mark = OK if "energy_counter" in have or "power" in have else FAIL
        extra = ""
        info = infos.get(r.index)
        if info is not None:
            extra = f"; power via {info.power_method}" + ("; MIG on" if info.mig_enabled else "")
        report.add(mark, f"  GPU {r.index} {r.name} ({r.uuid}): energy by {energy}; "
                         f"fields {', '.join(have) or 'none'}"
                         + (f"; unsupported {', '.join(lack)}" if lack else "") + extra)


def check_spool(path: Path, report: CheckReport) -> None:
    """The spool file, or the folder it will be created in, is writable by this user."""
    if path.exists():
        ok = os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK)
        report.add(OK if ok else FAIL, f"spool {path}: " + ("writable" if ok else
                   f"not writable by uid {os.getuid()} (the file and its folder must be; chown them)"))
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder != path.parent:
        ok = os.access(folder, os.W_OK)
        report.add(OK if ok else FAIL, f"spool {path}: folder {path.parent} does not exist"
                   + (" (it will be created)" if ok else f" and {folder} is not writable; create it"))
        return
    ok = os.access(folder, os.W_OK | os.X_OK)
    report.add(OK if ok else FAIL, f"spool {path}: " + (f"will be created in {folder}" if ok else
               f"folder {folder} is not writable by uid {os.getuid()}"))


def explain_rpc_error(conn: CollectorConnection, exc: grpc.aio.AioRpcError, address: str = "") -> str:
    """The gRPC error in words, with what to change where the cause is a common mistake."""
    address = address or conn.address
    details = exc.details() or ""
    hint = ""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        hint = "no answer in time: is the address right, and does a firewall let it through?"
    elif "Connection refused" in details:
        hint = f"nothing listens on {address}: is gridwatt-collector running there?"
    elif "WRONG_VERSION_NUMBER" in details:
        hint = "the collector does not speak TLS on this port: set collector.tls = false, or TLS on it"
    elif "CERTIFICATE_VERIFY_FAILED" in details:
        hint = "the collector's certificate is not signed by collector.ca_file (or names another host)"
    elif "Socket closed" in details or "Connection reset" in details:
        if not conn.tls:
            hint = ("the collector closed the connection: it probably requires TLS; "
                    "set collector.tls = true and collector.ca_file")
        elif conn.cert_file is None:
            hint = ("the collector refused the TLS handshake: it probably requires a client certificate "
                    "(mutual TLS); set collector.cert_file and collector.key_file")
        else:
            hint = ("the collector refused the TLS handshake: it probably does not trust the client "
                    "certificate in collector.cert_file (signed by another CA?)")
    text = f"{exc.code().name}: {details}"
    return f"{text} ({hint})" if hint else text


async def check_collector(config: AgentConfig, report: CheckReport, timeout_s: float = 5.0) -> None:
    """Probe every collector address the agent may ship to (``addresses``, else ``address``).

    One address: its lines as they are. Several (failover): each address is probed at once and
    reported on its own lines, then one summary line. The rule: ✗ when no address passes, or when a
    collector that answers refuses this node (token or rack config differing between replicas: the
    agent would be refused there after a failover); an address that does not answer is only ! while
    another one passes, since the agent fails over past it.
    """
    targets = config.collector.targets()
    if len(targets) == 1:
        probe = await _probe_collector(config, targets[0], timeout_s, "")
        for line in probe.report.lines:
            report.lines.append(line)
        report.failed |= probe.report.failed
        return
    probes = await asyncio.gather(*(
        _probe_collector(config, address, timeout_s, f"collector {address}: ") for address in targets
    ))
    usable = [p for p in probes if not p.report.failed]
    for p in probes:
        for line in p.report.lines:
            if p.unreachable and usable and line.startswith(FAIL):
                report.add(WARN, line[len(FAIL) + 1:] + " (the agent fails over to the other addresses)")
            else:
                report.add(line[:1], line[2:])
    report.add(OK if usable else FAIL,
               f"collectors: {len(usable)} of {len(probes)} addresses usable"
               + ("" if usable else " (the agent cannot deliver anywhere)"))


@dataclass
class _Probe:
    report: CheckReport
    unreachable: bool = False  # no answer at all (as opposed to an answer that refuses)


async def _probe_collector(config: AgentConfig, address: str, timeout_s: float, prefix: str) -> _Probe:
    """Connect to ``address`` with a deadline and ask its Check RPC whether this node may send;
    ``prefix`` names the address on the auth and node lines when there are several."""
    from gridwatt.agent.shipper import make_channel

    probe = _Probe(CheckReport())
    report = probe.report
    conn = config.collector
    try:
        token = read_secret(conn.token, conn.token_file, "collector token", conn.token_file_mode,
                            "collector.token_file_mode")
        channel = make_channel(conn, address)
    except ConfigError as exc:
        report.add(FAIL, f"collector {address}: {exc}")
        return probe
    except OSError as exc:
        report.add(FAIL, f"collector {address}: cannot read a TLS file: {exc}")
        return probe
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    reachable = f"collector {address}: reachable" + (" over TLS" if conn.tls else "")
    async with channel:
        stub = pb_grpc.IngestStub(channel)
        request = pb.CheckRequest(node=config.node, agent_version=__version__)
        try:
            resp = await stub.Check(request, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                report.add(OK, reachable)
                report.add(FAIL, f"{prefix}auth: refused: {code.name}: {exc.details()}")
            elif code == grpc.StatusCode.NOT_FOUND:
                report.add(OK, reachable)
                report.add(OK, f"{prefix}auth: accepted")
                report.add(FAIL, f"{prefix}node {config.node!r}: {exc.details()}")
            elif code == grpc.StatusCode.UNIMPLEMENTED:
                report.add(OK, f"collector {address}: reachable")
                report.add(WARN, f"{prefix}auth: not checked (the collector is older and has no Check RPC)")
            else:
                probe.unreachable = True
                report.add(FAIL, f"collector {address}: unreachable: "
                                 f"{explain_rpc_error(conn, exc, address)}")
            return probe
    report.add(OK, reachable + (f", gridwatt {resp.collector_version}" if resp.collector_version else ""))
    if resp.auth_required:
        report.add(OK, f"{prefix}auth: accepted for node {resp.node!r}")
    elif token:
        report.add(WARN, f"{prefix}auth: the collector does not check tokens (no [auth] on the collector)")
    else:
        report.add(WARN, f"{prefix}auth: none configured on either side (fine for tests, not for production)")
    if token and not conn.tls:
        report.add(WARN, f"{prefix}the token is sent without TLS: anyone on the path can read it; "
                         "set collector.tls")
    report.add(OK, f"{prefix}node {resp.node!r}: known to the collector (rack {resp.rack}, zone {resp.zone})")
    return probe


async def check_kubelet(config: AgentConfig, report: CheckReport) -> None:
    """Where the kubelet's pod-resources socket exists: does it answer, and which pods hold GPUs.

    A node without the socket (not a Kubernetes node) gets no line; a kubelet that does not answer
    is a warning, since attribution falls back to the cgroups.
    """
    from gridwatt.agent.runner import kubelet_gpu_map

    gpu_map = kubelet_gpu_map(config)
    if gpu_map is None or not gpu_map.socket_path.exists():
        return
    where = f"kubelet pod-resources {gpu_map.socket_path}"
    try:
        response = await list_pod_resources(gpu_map.socket_path, timeout_s=5.0)
    except grpc.aio.AioRpcError as exc:
        report.add(WARN, f"{where}: {exc.code().name}: {exc.details()} (GPU processes are attributed by "
                         "their cgroup; the agent needs root or the socket's group to connect)")
        return
    held = containers_by_device(response, gpu_map.resource_prefixes)
    pods = sorted({h.job_id for holders in held.values() for h in holders})
    shown = ", ".join(pods[:5]) + (f" and {len(pods) - 5} more" if len(pods) > 5 else "")
    listed = f" ({shown})" if pods else ""
    report.add(OK, f"{where}: {len(held)} GPU devices held by {len(pods)} pods{listed}")


#: The node name the example config shows; a node still called this was most likely never named.
EXAMPLE_NODE = "gpu-node-01"


def check_node_name(node: str, report: CheckReport, hostname: str | None = None) -> None:
    """Warn when the node still has the example's name while this host is called something else."""
    import socket

    host = hostname or socket.gethostname()
    if node == EXAMPLE_NODE and host != EXAMPLE_NODE:
        report.add(WARN, f"node {node!r} is the example's name, not this host's ({host!r}): set node in "
                   "the config (or remove it to use the hostname), or every node reports as one")


def run_check(
    config: AgentConfig, config_path: str, out: Callable[[str], None] = print,
    source: GpuSource | None = None, timeout_s: float = 5.0,
) -> bool:
    """Run every check, print each line, return True when none failed."""
    report = CheckReport()
    report.add(OK, f"config {config_path}: valid (node {config.node!r})")
    check_node_name(config.node, report)
    check_source(config, report, source)
    check_spool(config.spool_path, report)
    asyncio.run(check_kubelet(config, report))
    asyncio.run(check_collector(config, report, timeout_s))
    for line in report.lines:
        out(line)
    out("all checks passed" if not report.failed else "some checks failed (✗)")
    return not report.failed
