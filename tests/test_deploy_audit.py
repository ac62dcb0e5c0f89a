"""deploy/ against what runs it, read from the files alone (no kubectl): the Prometheus the adapter
queries is the one KEDA reads, every Triton pod has room in /dev/shm for the python backend, and the
balancer and the headless Services use the ports each Triton really listens on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.test_deploy import ADAPTER_RULES, DEPLOY, container, quantity

TRITON_DEPLOYMENT = DEPLOY / "base" / "triton" / "deployment.yaml"
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
PREDICTOR_HEADLESS = DEPLOY / "kserve" / "predictor-headless.yaml"
TRITON_BALANCER = DEPLOY / "overlays" / "gpu" / "haproxy.cfg"
# The args of KServe's kserve-tritonserver ClusterServingRuntime (config/runtimes in kserve/kserve); KServe
# puts the predictor's own args after them.
KSERVE_TRITON_RUNTIME_ARGS = (
    "tritonserver",
    "--model-store=/mnt/models",
    "--grpc-port=9000",
    "--http-port=8080",
    "--allow-grpc=true",
    "--allow-http=true",
)
CONTAINER_SHM_BYTES = 64 << 20  # what a container's /dev/shm holds without a volume (runtimes' default)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def flag_values(args: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--name=value`` arguments as {name: value}; a later one wins, as with tritonserver's own parser."""
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)


def address(url: str, port: int | None = None) -> tuple[str, int]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}", parts.port or port


def shm_volume(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The volume mounted on /dev/shm, if any."""
    names = [m["name"] for m in mounts if m["mountPath"].rstrip("/") == "/dev/shm"]
    return next((v for v in volumes if v["name"] in names), None)


def test_the_adapter_queries_the_prometheus_the_inference_services_autoscaler_reads() -> None:
    """Without ``prometheus.url`` the chart queries http://prometheus.default.svc, which no usual install
    creates: every HPA's metric would be missing while KEDA reads another Prometheus."""
    adapter = load(ADAPTER_RULES).get("prometheus")
    assert adapter and adapter.get("url"), "the adapter's values leave the chart's Prometheus URL default"
    (metric,) = load(INFERENCE_SERVICE)["spec"]["predictor"]["autoScaling"]["metrics"]
    keda = metric["external"]["metric"]["serverAddress"]
    assert address(adapter["url"], adapter.get("port")) == address(keda), (adapter, keda)


def test_every_triton_pod_has_a_memory_backed_dev_shm_larger_than_a_containers_own() -> None:
    """Triton's python backend (every translator's ``<name>`` model) moves its tensors, BLS beam caches
    included, through /dev/shm; a container's own holds 64 MiB."""
    deployment = load(TRITON_DEPLOYMENT)["spec"]["template"]["spec"]
    triton = container(load(TRITON_DEPLOYMENT), "triton")
    predictor = load(INFERENCE_SERVICE)["spec"]["predictor"]
    pods = {
        "kiln-triton": (deployment.get("volumes", []), triton),
        "the InferenceService": (predictor.get("volumes", []), predictor["model"]),
    }
    for pod, (volumes, main) in pods.items():
        volume = shm_volume(volumes, main.get("volumeMounts", []))
        assert volume is not None, f"{pod}: nothing mounted on /dev/shm"
        empty_dir = volume.get("emptyDir", {})
        assert empty_dir.get("medium") == "Memory", f"{pod}: /dev/shm is not memory-backed"
        size = quantity(empty_dir["sizeLimit"])
        assert CONTAINER_SHM_BYTES < size <= quantity(main["resources"]["limits"]["memory"]) / 4, pod


def test_the_triton_balancer_checks_and_forwards_to_the_ports_triton_listens_on() -> None:
    """haproxy health-checks Triton's HTTP port and sends gRPC to its gRPC port (the GPU overlay)."""
    ports = {p["name"]: p["containerPort"] for p in container(load(TRITON_DEPLOYMENT), "triton")["ports"]}
    config = TRITON_BALANCER.read_text()
    check = re.search(r"^\s*default-server\b.*\bcheck port (\d+)", config, re.M)
    target = re.search(r'^\s*server-template \w+ \d+ "[^"]+:(\d+)"', config, re.M)
    assert check and target
    assert (int(check[1]), int(target[1])) == (ports["http"], ports["grpc"])


def test_the_predictors_headless_service_lists_the_ports_kserves_triton_listens_on() -> None:
    """KServe's runtime runs Triton on 9000 (gRPC) and 8080 (HTTP), not the Deployment's 8001 and 8000: a
    balancer pointed at the predictor needs both, the second for its health check."""
    predictor = load(INFERENCE_SERVICE)["spec"]["predictor"]["model"]
    flags = flag_values((*KSERVE_TRITON_RUNTIME_ARGS, *predictor.get("args", [])))
    listening = {"grpc": int(flags["grpc-port"]), "http": int(flags["http-port"])}
    service = {p["name"]: p["targetPort"] for p in load(PREDICTOR_HEADLESS)["spec"]["ports"]}
    assert service == listening
    assert [p["containerPort"] for p in predictor["ports"]] == [listening["grpc"]]
