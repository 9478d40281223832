"""Pod attribution from the kubelet's pod-resources API v1, against a real gRPC server on a Unix socket.

The server implements ``v1.PodResourcesLister`` from the generated code of
proto/gridwatt/k8s/podresources/v1 (the kubelet's published v1 wire interface), so the
client sends exactly the bytes a kubelet receives on ``/v1.PodResourcesLister/List``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gridwatt.agent.attribution import METHOD_KUBERNETES, Attributor, JobShareInfo
from gridwatt.agent.attribution.podresources import (
    KubeletGpuMap,
    PodContainer,
    containers_by_device,
    device_key,
    list_pod_resources,
)
from gridwatt.agent.check import CheckReport, check_kubelet
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.runner import kubelet_gpu_map
from gridwatt.agent.sources.base import GpuReading
from gridwatt.k8s.podresources.v1 import podresources_pb2 as prpb
from gridwatt.k8s.podresources.v1 import podresources_pb2_grpc as prgrpc

MIG = "MIG-11111111-2222-3333-4444-555555555555"
UUID = [f"GPU-{i}0000000-aaaa-bbbb-cccc-dddddddddddd" for i in range(4)]
FIXTURE_PROC = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
# tests/fixtures/proc/1003: a process of pod 0f2e9a3c-... (cgroupfs driver).
CGROUP_POD_UID = "0f2e9a3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"


def pod(ns: str, name: str, *containers: prpb.ContainerResources) -> prpb.PodResources:
    return prpb.PodResources(namespace=ns, name=name, containers=list(containers))


def ctr(name: str, resource: str, *ids: str) -> prpb.ContainerResources:
    return prpb.ContainerResources(
        name=name,
        devices=[prpb.ContainerDevices(resource_name=resource, device_ids=list(ids),
                                       topology=prpb.TopologyInfo(nodes=[prpb.NUMANode(ID=1)]))],
        cpu_ids=[4, 5],
        memory=[prpb.ContainerMemory(memory_type="memory", size=2**30)],
    )


def node_answer() -> prpb.ListPodResourcesResponse:
    """A node: GPU0 to one pod (two containers), GPU1 time-sliced by two pods, GPU3 by index, GPU2 free."""
    return prpb.ListPodResourcesResponse(pod_resources=[
        pod("ml", "train-0",
            ctr("trainer", "nvidia.com/gpu", UUID[0]), ctr("sidecar", "nvidia.com/gpu", UUID[0])),
        pod("ml", "notebook-a", ctr("jupyter", "nvidia.com/gpu.shared", f"{UUID[1]}::0")),
        pod("research", "notebook-b", ctr("jupyter", "nvidia.com/gpu.shared", f"{UUID[1]}::3")),
        pod("batch", "by-index", ctr("main", "nvidia.com/gpu", "3")),
        pod("net", "sriov", ctr("app", "intel.com/sriov_netdevice", "0000:3b:00.2")),
        pod("ml", "mig-user", ctr("main", "nvidia.com/mig-1g.10gb", MIG)),
        pod("kube-system", "coredns", prpb.ContainerResources(name="coredns")),
        # DRA assignments are carried but not used for GPUs yet.
        pod("dra", "claimer", prpb.ContainerResources(name="c", dynamic_resources=[prpb.DynamicResource(
            claim_name="gpu-claim", claim_namespace="dra", claim_resources=[prpb.ClaimResource(
                driver_name="gpu.nvidia.com", pool_name="node-a", device_name="gpu-2",
                cdi_devices=[prpb.CDIDevice(name="k8s.gpu.nvidia.com/device=gpu-2")])])])),
    ])


@dataclass
class Lister(prgrpc.PodResourcesListerServicer):
    """A kubelet's PodResourcesLister: answers List with ``answer``; counts the calls."""

    answer: prpb.ListPodResourcesResponse = field(default_factory=prpb.ListPodResourcesResponse)
    calls: int = 0
    fail_with: grpc.StatusCode | None = None

    async def List(
        self, request: prpb.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> prpb.ListPodResourcesResponse:
        self.calls += 1
        if self.fail_with is not None:
            await context.abort(self.fail_with, "kubelet says no")
        return self.answer


@dataclass
class Kubelet:
    socket: Path
    lister: Lister
    server: grpc.aio.Server


@pytest.fixture
async def kubelet() -> AsyncIterator[Kubelet]:
    # A short folder: a Unix socket path must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="gw-kubelet-", dir="/tmp"))
    sock = folder / "kubelet.sock"
    lister = Lister(node_answer())
    server = grpc.aio.server()
    prgrpc.add_PodResourcesListerServicer_to_server(lister, server)
    assert server.add_insecure_port(f"unix://{sock}") == 1
    await server.start()
    try:
        yield Kubelet(sock, lister, server)
    finally:
        await server.stop(None)
        shutil.rmtree(folder, ignore_errors=True)


def reading(index: int, pids: tuple[int, ...] = ()) -> GpuReading:
    return GpuReading(index=index, uuid=UUID[index], name="NVIDIA H100", t_ns=0, energy_mj=0, power_mw=0,
                      pids=pids)


def test_device_keys() -> None:
    assert device_key(UUID[0]) == UUID[0]
    assert device_key(f"{UUID[1]}::7") == UUID[1]
    assert device_key("3") == "3"
    assert device_key("") is None
    assert device_key("::2") is None
    assert device_key("x" * 257) is None
    assert device_key("GPU-a\nb") is None


async def test_list_over_unix_socket_maps_gpus_to_namespace_pod_container(kubelet: Kubelet) -> None:
    answer = await list_pod_resources(kubelet.socket)
    assert kubelet.lister.calls == 1
    assert answer == node_answer()  # every field, DRA and memory included, survives the wire
    assert containers_by_device(answer) == {
        UUID[0]: (PodContainer("ml", "train-0", "sidecar"), PodContainer("ml", "train-0", "trainer")),
        UUID[1]: (PodContainer("ml", "notebook-a", "jupyter"),
                  PodContainer("research", "notebook-b", "jupyter")),
        "3": (PodContainer("batch", "by-index", "main"),),
        MIG: (PodContainer("ml", "mig-user", "main"),),
    }
    # Other resource prefixes are configurable.
    assert containers_by_device(answer, ["intel.com/"]) == {
        "0000:3b:00.2": (PodContainer("net", "sriov", "app"),)
    }


async def test_attribution_prefers_kubelet_and_falls_back_to_cgroups(kubelet: Kubelet) -> None:
    gpu_map = KubeletGpuMap(kubelet.socket, refresh_s=10)
    assert await gpu_map.refresh() is True
    att = Attributor(None, FIXTURE_PROC, gpu_pods=gpu_map.current)

    # GPU0: one pod (two containers) holds it; its process's cgroup is not even read.
    assert att.attribute(reading(0, pids=(1003,))) == [
        JobShareInfo("k8s-pod/ml/train-0", 1.0, METHOD_KUBERNETES, "", split_estimated=False,
                     namespace="ml", job_name="train-0")
    ]
    # GPU1: time-sliced between two pods; no process utilisation ties a pid to a pod: even split.
    assert att.attribute(reading(1)) == [
        JobShareInfo("k8s-pod/ml/notebook-a", 0.5, METHOD_KUBERNETES, "", split_estimated=True,
                     namespace="ml", job_name="notebook-a"),
        JobShareInfo("k8s-pod/research/notebook-b", 0.5, METHOD_KUBERNETES, "", split_estimated=True,
                     namespace="research", job_name="notebook-b"),
    ]
    # GPU2: no pod holds it (e.g. a process started outside the device plugin): the cgroup of its process.
    assert att.attribute(reading(2, pids=(1003,))) == [
        JobShareInfo(f"k8s-pod/{CGROUP_POD_UID}", 1.0, METHOD_KUBERNETES, "", split_estimated=False)
    ]
    # GPU3: the device plugin names GPUs by index.
    assert att.attribute(reading(3)) == [
        JobShareInfo("k8s-pod/batch/by-index", 1.0, METHOD_KUBERNETES, "", split_estimated=False,
                     namespace="batch", job_name="by-index")
    ]
    # Kubernetes attribution off: the kubelet map is not used either.
    off = Attributor("static-job", FIXTURE_PROC, kubernetes=False, gpu_pods=gpu_map.current)
    assert [s.job_id for s in off.attribute(reading(0))] == ["static-job"]


async def test_kubelet_gone_keeps_last_map_until_stale_then_cgroups(kubelet: Kubelet) -> None:
    now = [1000.0]
    gpu_map = KubeletGpuMap(kubelet.socket, refresh_s=10, stale_s=30, monotonic=lambda: now[0])
    assert await gpu_map.refresh() is True
    att = Attributor(None, FIXTURE_PROC, gpu_pods=gpu_map.current)

    kubelet.lister.fail_with = grpc.StatusCode.UNAVAILABLE
    now[0] += 20
    assert await gpu_map.refresh() is False
    assert gpu_map.failures == 1
    assert [s.job_id for s in att.attribute(reading(0, pids=(1003,)))] == ["k8s-pod/ml/train-0"]

    now[0] += 11  # 31 s since the last answer: stale
    assert gpu_map.current() == {}
    assert [s.job_id for s in att.attribute(reading(0, pids=(1003,)))] == [f"k8s-pod/{CGROUP_POD_UID}"]

    kubelet.lister.fail_with = None  # back
    assert await gpu_map.refresh() is True
    assert [s.job_id for s in att.attribute(reading(0, pids=(1003,)))] == ["k8s-pod/ml/train-0"]
    assert (gpu_map.refreshes, gpu_map.failures, kubelet.lister.calls) == (2, 1, 3)


async def test_no_kubelet_socket_falls_back_without_calls(tmp_path: Path) -> None:
    gpu_map = KubeletGpuMap(tmp_path / "absent.sock")
    assert await gpu_map.refresh() is False
    assert gpu_map.current() == {}
    att = Attributor(None, FIXTURE_PROC, gpu_pods=gpu_map.current)
    assert [s.job_id for s in att.attribute(reading(0, pids=(1003,)))] == [f"k8s-pod/{CGROUP_POD_UID}"]


async def test_config_builds_the_watcher(kubelet: Kubelet) -> None:
    config = AgentConfig.model_validate({
        "node": "n1",
        "attribution": {"kubelet_socket": str(kubelet.socket), "kubelet_refresh_s": 2.5,
                        "kubelet_resource_prefixes": ["nvidia.com/gpu"]},
    })
    gpu_map = kubelet_gpu_map(config)
    assert gpu_map is not None
    assert (gpu_map.socket_path, gpu_map.refresh_s, gpu_map.resource_prefixes) == (
        kubelet.socket, 2.5, ("nvidia.com/gpu",))
    assert await gpu_map.refresh() is True
    assert MIG not in gpu_map.current()  # nvidia.com/mig-... not asked
    assert set(gpu_map.current()) == {UUID[0], UUID[1], "3"}
    off = AgentConfig.model_validate({"node": "n1", "attribution": {"kubernetes": False}})
    assert kubelet_gpu_map(off) is None
    default = AgentConfig.model_validate({"node": "n1"})
    assert default.attribution.kubelet_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")


async def test_check_reports_the_kubelet(kubelet: Kubelet, tmp_path: Path) -> None:
    def config(sock: Path) -> AgentConfig:
        return AgentConfig.model_validate({"node": "n1", "attribution": {"kubelet_socket": str(sock)}})

    report = CheckReport()
    await check_kubelet(config(kubelet.socket), report)
    assert report.lines == [
        f"✓ kubelet pod-resources {kubelet.socket}: 4 GPU devices held by 5 pods (k8s-pod/batch/by-index, "
        "k8s-pod/ml/mig-user, k8s-pod/ml/notebook-a, k8s-pod/ml/train-0, k8s-pod/research/notebook-b)"
    ]
    kubelet.lister.fail_with = grpc.StatusCode.PERMISSION_DENIED
    report = CheckReport()
    await check_kubelet(config(kubelet.socket), report)
    assert report.lines[0].startswith(
        f"! kubelet pod-resources {kubelet.socket}: PERMISSION_DENIED: kubelet says no")
    assert not report.failed
    report = CheckReport()
    await check_kubelet(config(tmp_path / "absent.sock"), report)  # not a Kubernetes node: no line
    assert report.lines == []
