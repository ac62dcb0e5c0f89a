"""Names one rendered object gives another resolve: a probe's or Service's port name, a claim, a
ConfigMap, a selector, an autoscaler's or disruption budget's target. Kustomize renders a dangling
name without complaint and the API server accepts it; only the cluster then fails (a probe that never
connects, a Service with no endpoints, a pod stuck in ContainerCreating)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBECTL = shutil.which("kubectl")
TARGETS = ["overlays/cpu", "overlays/gpu", "kserve"]

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: nothing renders")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each target as `kubectl kustomize` renders it (files only, no cluster)."""
    out = {}
    for target in TARGETS:
        text = subprocess.run(
            [KUBECTL, "kustomize", str(DEPLOY / target)], capture_output=True, text=True, check=True
        ).stdout
        out[target] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def probe_ports(container: dict[str, Any]) -> list[Any]:
    return [
        probe[handler]["port"]
        for key in ("startupProbe", "readinessProbe", "livenessProbe")
        if (probe := container.get(key))
        for handler in ("httpGet", "tcpSocket", "grpc")
        if handler in probe
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_every_probe_port_name_is_a_port_of_its_container(rendered, target) -> None:
    for deployment in named(rendered[target], "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            ports = {p.get("name") for p in container.get("ports", [])}
            for port in probe_ports(container):
                assert isinstance(port, int) or port in ports, (container["name"], port, ports)


@pytest.mark.parametrize("target", TARGETS)
def test_every_deployment_selects_its_own_pods_and_mounts_volumes_that_exist(rendered, target) -> None:
    docs = rendered[target]
    claims, config_maps = named(docs, "PersistentVolumeClaim"), named(docs, "ConfigMap")
    for deployment in named(docs, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in spec["containers"] + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (container["name"], mount["name"])


@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_every_service_port_and_budget_reaches_pods_that_declare_it(rendered, target) -> None:
    docs = rendered[target]
    deployments = named(docs, "Deployment").values()

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        pods = [d["spec"]["template"] for d in deployments]
        return [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]

    for service in named(docs, "Service").values():
        pods = selected(service["spec"]["selector"])
        assert pods, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            target_port = port.get("targetPort", port["port"])
            declared = {
                p.get("name") if isinstance(target_port, str) else p["containerPort"]
                for pod in pods
                for c in pod["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert target_port in declared, (service["metadata"]["name"], target_port)
    for budget in named(docs, "PodDisruptionBudget").values():
        assert selected(budget["spec"]["selector"]["matchLabels"]), budget["metadata"]["name"]
    for hpa in named(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in named(docs, "Deployment")
