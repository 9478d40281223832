"""Kubernetes pod of a process, from its cgroup path.

The kubelet puts every container of a pod below a per-pod cgroup whose name
carries the pod UID. Both cgroup drivers are read:

* ``cgroupfs`` driver (UID with dashes)::

      /kubepods/burstable/pod0f2e9a3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b/<container-id>
      /kubepods/pod<uid>/<container-id>                    (Guaranteed QoS)

* ``systemd`` driver (UID with underscores, since ``-`` separates slice levels)::

      /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f2e9a3c_1b2d_..._4a5b.slice/cri-containerd-<id>.scope
      /kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope   (Guaranteed QoS)

The UID is returned with dashes, as the API server spells it. Static pods have
a 32-hex-digit hash as their UID; it is returned as it stands.

gridwatt reports such a process's job as ``k8s-pod/<uid>`` (see ``pod_job_id``):
the collector or a dashboard maps a pod UID to its namespace/name/owner.
"""

from __future__ import annotations

import re

from gridwatt.agent.attribution.procfs import cgroup_paths

#: Prefix of the job id of a pod: ``k8s-pod/<uid>``.
POD_JOB_PREFIX = "k8s-pod/"

# A pod segment: "pod<uid>" (cgroupfs) or "kubepods[-<qos>]-pod<uid>.slice" (systemd).
_POD_SEGMENT = re.compile(r"(?:kubepods(?:-[a-z]+)?-)?pod([0-9a-fA-F][0-9a-fA-F_-]{15,})(?:\.slice)?")


def pod_uid_of_cgroup(cgroup_text: str) -> str | None:
    """Pod UID (with dashes, lower case) from a ``/proc/PID/cgroup`` text, or None outside a pod."""
    for path in cgroup_paths(cgroup_text):
        below_kubepods = False  # "kubepods", "kubepods.slice", "kubelet-kubepods.slice" (kind) seen
        for seg in (s for s in path.split("/") if s):
            m = _POD_SEGMENT.fullmatch(seg)
            if m and below_kubepods:
                return m.group(1).replace("_", "-").lower()
            below_kubepods = below_kubepods or "kubepods" in seg
    return None


def pod_job_id(pod_uid: str) -> str:
    """The job id gridwatt reports for a pod: ``k8s-pod/<uid>``."""
    return POD_JOB_PREFIX + pod_uid
