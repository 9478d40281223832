"""deploy/kubernetes: every overlay renders with `kubectl kustomize`, validates against a current
Kubernetes API schema (kubernetes-validate, offline, strict), and says what the manifests promise:
the agent's few host mounts, no capabilities, read-only root filesystems, resource limits, a
non-root collector, and configs that the real config loaders accept.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridwatt.agent.config import AgentConfig
from gridwatt.collector.config import CollectorConfig
from gridwatt.configfile import load_config

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ["base", *sorted(f"overlays/{p.name}" for p in (ROOT / "overlays").iterdir() if p.is_dir())]
#: The Kubernetes version validated against: the newest whose schemas kubernetes-validate bundles.
K8S_VERSION = kubernetes_validate.latest_version()
NODE = "gpu-node-01"


def kubectl() -> str:
    """kubectl with a kustomize of v4 or newer (components); skip without one."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    out = subprocess.run([found, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Kustomize Version: v(\d+)", out)
    if m is None or int(m.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is too old for components (need v4+): {out.strip()!r}")
    return found


@functools.cache
def _render_text(overlay: str) -> str:
    out = subprocess.run([kubectl(), "kustomize", str(ROOT / overlay)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_render_text(overlay)) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_overlays_are_there() -> None:
    assert OVERLAYS == ["base", "overlays/gpu-nodes", "overlays/production", "overlays/tls"]
    assert tuple(int(p) for p in K8S_VERSION.split(".")[:2]) >= (1, 33)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_and_validates_strictly(overlay: str) -> None:
    docs = render(overlay)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert [k for k, _ in kinds] == [
        "ConfigMap", "ConfigMap", "DaemonSet", "Deployment", "Namespace", "Service"]
    for doc in docs:
        # Raises ValidationError naming the resource and the field on any unknown or wrong field.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gridwatt"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_and_resources(overlay: str) -> None:
    docs = render(overlay)
    agent = find(docs, "DaemonSet", "gridwatt-agent")["spec"]["template"]["spec"]
    collector = find(docs, "Deployment", "gridwatt-collector")["spec"]["template"]["spec"]
    for pod in (agent, collector):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (ctr,) = pod["containers"]
        sc = ctr["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
        assert set(ctr["resources"]["limits"]) == {"cpu", "memory"}
        assert set(ctr["resources"]["requests"]) == {"cpu", "memory"}
    # The collector runs as a non-root user; the agent as uid 0 only for the kubelet's socket.
    assert collector["securityContext"]["runAsNonRoot"] is True
    assert collector["securityContext"]["runAsUser"] == 65532
    assert "hostPath" not in str(collector["volumes"]) and not collector.get("hostPID")
    # The agent's host access: hostPID and exactly two host paths, the kubelet's read-only.
    assert agent["hostPID"] is True and not agent.get("hostNetwork")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    assert host_paths == {"spool": "/var/lib/gridwatt", "pod-resources": "/var/lib/kubelet/pod-resources"}
    mounts = {m["name"]: m for m in agent["containers"][0]["volumeMounts"]}
    assert mounts["pod-resources"]["readOnly"] is True and mounts["config"]["readOnly"] is True
    assert "nvidia.com/gpu" not in str(agent["containers"][0]["resources"])  # takes no GPU from workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_wiring(overlay: str) -> None:
    docs = render(overlay)
    deployment = find(docs, "Deployment", "gridwatt-collector")
    service = find(docs, "Service", "gridwatt-collector")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (ctr,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in ctr["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert ctr["readinessProbe"]["httpGet"]["port"] in port_names
    for pod in (deployment, find(docs, "DaemonSet", "gridwatt-agent")):
        spec = pod["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec["volumes"]}
        for c in spec["containers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= volumes
            # $(VAR) is expanded only from variables defined earlier in the list.
            defined: set[str] = set()
            for env in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    assert ref in defined, f"{overlay}: {env['name']} uses $({ref}) before it is defined"
                defined.add(env["name"])
        config_maps = {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
        assert config_maps <= {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}


def container_env(ctr: dict[str, Any]) -> dict[str, str]:
    """The container's literal variables as the agent sees them ($(NODE_NAME) expanded for one node)."""
    env = {"NODE_NAME": NODE}
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configs_load_with_the_real_loaders(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    agent_cm = next(d for d in docs if d["kind"] == "ConfigMap" and "agent.toml" in d["data"])
    collector_cm = next(d for d in docs if d["kind"] == "ConfigMap" and "collector.toml" in d["data"])
    agent_ctr = find(docs, "DaemonSet", "gridwatt-agent")["spec"]["template"]["spec"]["containers"][0]
    coll_ctr = find(docs, "Deployment", "gridwatt-collector")["spec"]["template"]["spec"]["containers"][0]
    (tmp_path / "agent.toml").write_text(agent_cm["data"]["agent.toml"])
    (tmp_path / "collector.toml").write_text(collector_cm["data"]["collector.toml"])
    agent = load_config(tmp_path / "agent.toml", AgentConfig, container_env(agent_ctr))
    collector = load_config(tmp_path / "collector.toml", CollectorConfig, container_env(coll_ctr))
    assert agent.node == NODE
    assert agent.collector.address == "gridwatt-collector.gridwatt.svc:50051"
    assert agent.attribution.kubelet_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert str(agent.spool_path).startswith("/var/lib/gridwatt/")
    assert collector.server.grpc_listen.endswith(":50051") and collector.server.http_listen.endswith(":8080")
    # The config's paths lie in the mounted folders.
    assert str(agent_ctr["command"][3]).startswith("/etc/gridwatt/config/")
    tls = overlay in ("overlays/tls", "overlays/production")
    assert agent.collector.tls is tls
    if tls:
        assert agent.collector.token_file == Path(f"/etc/gridwatt/tokens/{NODE}")
        assert agent.collector.ca_file == Path("/etc/gridwatt/tls/ca.crt")
        assert collector.server.tls_cert_file == Path("/etc/gridwatt/tls/tls.crt")
        assert collector.auth.tokens_file == Path("/etc/gridwatt/auth/tokens")
    else:
        assert agent.collector.token_file is None and collector.server.tls_cert_file is None


def test_gpu_nodes_overlay_places_the_agent_on_gpu_nodes() -> None:
    for overlay in ("overlays/gpu-nodes", "overlays/production"):
        spec = find(render(overlay), "DaemonSet", "gridwatt-agent")["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    base = find(render("base"), "DaemonSet", "gridwatt-agent")["spec"]["template"]["spec"]
    assert "nodeSelector" not in base and "runtimeClassName" not in base


def test_validation_catches_a_broken_manifest() -> None:
    """The validator is not a rubber stamp: a misspelt field fails."""
    doc = find(render("base"), "Service", "gridwatt-collector")
    doc["spec"]["prots"] = doc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
