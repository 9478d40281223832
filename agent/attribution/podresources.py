"""Which pod holds each GPU, from the kubelet's pod-resources API (v1).

The kubelet serves ``v1.PodResourcesLister`` on a Unix socket
(``/var/lib/kubelet/pod-resources/kubelet.sock``). ``List`` names every pod on the
node with the devices the device plugins assigned to each of its containers. For
NVIDIA's device plugin the resource names start with ``nvidia.com/`` and the device
ids are:

* GPU UUIDs (``GPU-8f2c...``; the plugin's default ``DEVICE_ID_STRATEGY=uuid``);
* GPU indices (``"0"``, ``"1"``; ``DEVICE_ID_STRATEGY=index``);
* ``<id>::<n>`` replicas of a time-sliced or MPS-shared GPU (the suffix is dropped);
* MIG device UUIDs (``MIG-...``) for MIG resources: kept as they are; gridwatt meters
  whole GPUs, so they match no reading and such GPUs fall back to the cgroup reading.

A GPU held by pod ``ns/name`` is attributed to job ``k8s-pod/<ns>/<name>``. This module
holds the pure parsing (``containers_by_device``) and ``KubeletGpuMap``, which refreshes
the map in the background and serves the last good one; when the kubelet cannot be
reached for longer than ``stale_s`` the map empties and attribution falls back to the
pod UID of each GPU process's cgroup (``kubernetes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from gridwatt.k8s.podresources.v1 import podresources_pb2 as prpb
from gridwatt.k8s.podresources.v1 import podresources_pb2_grpc as prgrpc

log = logging.getLogger("gridwatt.agent.attribution.podresources")

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_RESOURCE_PREFIXES = ("nvidia.com/",)
#: Job id prefix of a pod found through the kubelet: ``k8s-pod/<namespace>/<name>``.
POD_JOB_PREFIX = "k8s-pod/"

#: Bounds on what is taken from one List answer (a node runs at most a few hundred pods).
MAX_RESPONSE_BYTES = 16 * 2**20
MAX_PODS = 5000
MAX_DEVICE_ID_LEN = 256
# Namespace: a DNS label; pod and container names: DNS subdomains / labels.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True, slots=True, order=True)
class PodContainer:
    """A container that holds a device."""

    namespace: str
    pod: str
    container: str

    @property
    def job_id(self) -> str:
        """The job gridwatt reports for this container's pod: ``k8s-pod/<namespace>/<pod>``."""
        return f"{POD_JOB_PREFIX}{self.namespace}/{self.pod}"


#: device key (GPU UUID, or GPU index as a string) -> the containers holding it, sorted.
GpuPods = Mapping[str, tuple[PodContainer, ...]]


def device_key(device_id: str) -> str | None:
    """The GPU a device plugin's id names: the id without a ``::<n>`` replica suffix; None if unusable."""
    key = device_id.split("::", 1)[0].strip()
    if not key or len(key) > MAX_DEVICE_ID_LEN or not key.isprintable():
        return None
    return key


def containers_by_device(
    response: prpb.ListPodResourcesResponse, resource_prefixes: Sequence[str] = DEFAULT_RESOURCE_PREFIXES
) -> dict[str, tuple[PodContainer, ...]]:
    """Device key -> containers holding it, from one List answer (only the resources named by the prefixes).

    Pods or containers whose names are not Kubernetes names, and device ids that are empty or
    over ``MAX_DEVICE_ID_LEN`` characters, are skipped (logged at debug); at most ``MAX_PODS`` pods
    are read.
    """
    found: dict[str, set[PodContainer]] = {}
    for pod in response.pod_resources[:MAX_PODS]:
        if not (_NAME.fullmatch(pod.namespace) and _NAME.fullmatch(pod.name)):
            log.debug("kubelet: skipping pod with a malformed name %r/%r", pod.namespace[:80], pod.name[:80])
            continue
        for ctr in pod.containers:
            if not _NAME.fullmatch(ctr.name):
                continue
            holder = PodContainer(pod.namespace, pod.name, ctr.name)
            for dev in ctr.devices:
                if not dev.resource_name.startswith(tuple(resource_prefixes)):
                    continue
                for device_id in dev.device_ids:
                    key = device_key(device_id)
                    if key is not None:
                        found.setdefault(key, set()).add(holder)
    return {key: tuple(sorted(holders)) for key, holders in found.items()}


async def list_pod_resources(socket_path: Path, timeout_s: float = 5.0) -> prpb.ListPodResourcesResponse:
    """One ``v1.PodResourcesLister/List`` call over the kubelet's Unix socket."""
    options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
    async with grpc.aio.insecure_channel(f"unix://{socket_path}", options=options) as channel:
        stub = prgrpc.PodResourcesListerStub(channel)
        return await stub.List(prpb.ListPodResourcesRequest(), timeout=timeout_s)


class KubeletGpuMap:
    """The latest device -> pod map from the kubelet, refreshed every ``refresh_s``.

    ``current()`` is what the attributor reads: the last good map while it is at most
    ``stale_s`` old, else empty (attribution then falls back to cgroups). A missing socket
    (a node without a kubelet) is checked with one ``stat`` per refresh and logged once.
    """

    def __init__(
        self,
        socket_path: Path = DEFAULT_SOCKET,
        refresh_s: float = 10.0,
        stale_s: float | None = None,
        resource_prefixes: Sequence[str] = DEFAULT_RESOURCE_PREFIXES,
        timeout_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.refresh_s = refresh_s
        self.stale_s = stale_s if stale_s is not None else max(3 * refresh_s, 30.0)
        self.resource_prefixes = tuple(resource_prefixes)
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._map: dict[str, tuple[PodContainer, ...]] = {}
        self._at: float | None = None
        self._last_problem = ""
        #: Successful and failed List calls so far (for logs and tests).
        self.refreshes = 0
        self.failures = 0

    def current(self) -> GpuPods:
        """The device -> containers map, or {} when the kubelet has not answered for ``stale_s``."""
        if self._at is None or self._monotonic() - self._at > self.stale_s:
            return {}
        return self._map

    async def refresh(self) -> bool:
        """Ask the kubelet once; True when it answered."""
        if not self.socket_path.exists():
            self._problem(f"kubelet pod-resources socket {self.socket_path} not found", logging.INFO)
            return False
        try:
            response = await list_pod_resources(self.socket_path, self.timeout_s)
        except grpc.aio.AioRpcError as e:
            self._problem(f"kubelet pod-resources List failed: {e.code().name}: {e.details()}")
            return False
        except Exception as e:  # the agent keeps measuring whatever the kubelet does
            self._problem(f"kubelet pod-resources List failed: {e!r}")
            return False
        self._map = containers_by_device(response, self.resource_prefixes)
        self._at = self._monotonic()
        self.refreshes += 1
        if self._last_problem:
            log.info("kubelet pod-resources answers again (%d GPUs held by pods)", len(self._map))
            self._last_problem = ""
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every ``refresh_s`` until ``stop`` is set (the first refresh after one period:
        the agent asks once itself before its first poll)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.refresh_s)
            if not stop.is_set():
                await self.refresh()

    def _problem(self, text: str, level: int = logging.WARNING) -> None:
        self.failures += 1
        if text != self._last_problem:
            self._last_problem = text
            log.log(level, "%s; GPU processes are attributed by their cgroup instead", text)
