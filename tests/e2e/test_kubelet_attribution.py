"""End to end: a kubelet's pod-resources API (real gRPC server on a Unix socket) names the pods that
hold the GPUs; the agent (run_agent, simulated GPUs) attributes their energy to those pods; the
collector stores job points in a real InfluxDB that say so.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import grpc

from gridwatt.agent.config import AgentConfig, AttributionConfig, CollectorConnection, SourceConfig
from gridwatt.agent.runner import run_agent
from gridwatt.agent.sources.sim.source import SimConfig
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.k8s.podresources.v1 import podresources_pb2 as prpb
from gridwatt.k8s.podresources.v1 import podresources_pb2_grpc as prgrpc
from tests.agent.test_podresources import Lister, ctr, pod
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml, influx_query

# 3 GPUs x 300 W x 600 s in 60 s samples: 10 intervals per GPU, 180 kJ per GPU.
GPU_J = 300.0 * 600.0


def sim_uuid(node: str, index: int) -> str:
    """The simulated source's GPU UUID (a UUID5 of node and index), computed here independently."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.gpu{index}.sim.gridwatt"))


async def test_agent_attributes_gpus_to_the_pods_the_kubelet_names(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-kubelet-", dir="/tmp"))
    sock = folder / "kubelet.sock"
    lister = Lister(prpb.ListPodResourcesResponse(pod_resources=[
        pod("ml", "train-0", ctr("trainer", "nvidia.com/gpu", "0")),  # the device plugin's index strategy
        pod("ml", "notebook-a", ctr("jupyter", "nvidia.com/gpu.shared", f"{sim_uuid('n1', 1)}::0")),
        pod("research", "notebook-b", ctr("jupyter", "nvidia.com/gpu.shared", f"{sim_uuid('n1', 1)}::1")),
    ]))
    server = grpc.aio.server()
    prgrpc.add_PodResourcesListerServicer_to_server(lister, server)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    try:
        async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
            config = AgentConfig(
                node="n1", interval_s=60.0, spool_path=tmp_path / "spool.db",
                source=SourceConfig(kind="sim", sim=SimConfig(gpus=3, power_w=300.0, duration_s=600.0,
                                                              start="2022-04-15T05:20:00Z")),
                attribution=AttributionConfig(kubelet_socket=sock, kubelet_refresh_s=3600),
                collector=CollectorConnection(address=f"127.0.0.1:{c.grpc_port}"),
            )
            result = await run_agent(config, replay=True, progress=None)
    finally:
        await server.stop(None)
        shutil.rmtree(folder, ignore_errors=True)
    assert result.ledger.acknowledged == 30 and result.ledger.rejected == 0
    assert lister.calls == 1  # asked once before the first poll; the next refresh is an hour away
    (res,) = influx_query(influxdb.url, database,
                          "SELECT sum(energy_j) AS e, count(energy_j) AS n FROM job GROUP BY job_id, gpu")
    got = {(s["tags"]["job_id"], s["tags"]["gpu"]): (round(s["values"][0][1], 6), s["values"][0][2])
           for s in res["series"]}
    assert got == {
        ("k8s-pod/ml/train-0", "0"): (GPU_J, 10),
        ("k8s-pod/ml/notebook-a", "1"): (GPU_J / 2, 10),
        ("k8s-pod/research/notebook-b", "1"): (GPU_J / 2, 10),
        ("unattributed", "2"): (GPU_J, 10),
    }
    (res,) = influx_query(influxdb.url, database,
                          "SELECT attribution, split_estimated FROM job WHERE gpu = '1' LIMIT 1")
    assert res["series"][0]["values"][0][1:] == ["kubernetes", True]
    # who ran what: the pod's namespace and name travel with its shares into the job windows
    (res,) = influx_query(influxdb.url, database,
                          'SELECT last("namespace"), last("job_name") FROM job_window GROUP BY job_id')
    who = {s["tags"]["job_id"]: s["values"][0][1:] for s in res["series"]}
    assert who == {"k8s-pod/ml/train-0": ["ml", "train-0"], "k8s-pod/ml/notebook-a": ["ml", "notebook-a"],
                   "k8s-pod/research/notebook-b": ["research", "notebook-b"]}
