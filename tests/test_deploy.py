"""deploy/ validated offline: every kustomization renders with ``kubectl kustomize``, every resource
passes strict Kubernetes schema validation, the KServe InferenceService passes KServe's CRD schema
(stored in deploy/schemas/), broken manifests are rejected, and the manifests agree with the gateway's
real settings, health routes and metric names."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bench.balancer import HAPROXY_HINT, find_haproxy
from serving.metrics import GatewayMetrics
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.32.0"
KSERVE_SCHEMA = DEPLOY / "schemas" / "kserve-inferenceservice-v1beta1.json"
ADAPTER_RULES = DEPLOY / "monitoring" / "prometheus-adapter-rules.yaml"
TRITON_DOCKERFILE = DEPLOY / "triton" / "Dockerfile"
# Every kustomization a user deploys: the overlays and the KServe one (bases are rendered through them).
TARGETS = sorted(
    str(p.parent.relative_to(DEPLOY))
    for p in (*DEPLOY.glob("overlays/*/kustomization.yaml"), DEPLOY / "kserve/kustomization.yaml")
)
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: kustomize cannot render"
)


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` (offline: it only reads files) and parse every document."""
    done = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: kustomize cannot render")
    return {target: render(DEPLOY / target) for target in TARGETS}


def of_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


QUANTITY_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number: "500m" -> 0.5, "4Gi" -> 4 * 2**30."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and (not match[2] or match[2] in QUANTITY_SUFFIXES), f"not a quantity: {value!r}"
    return float(match[1]) * QUANTITY_SUFFIXES.get(match[2], 1)


# What KServe's kserve-tritonserver ClusterServingRuntime sets (config/runtimes in kserve/kserve): the
# predictor's container is strategic-merged onto it, so a resource the predictor does not limit keeps
# the runtime's limit.
KSERVE_TRITON_RUNTIME_LIMITS = {"cpu": "1", "memory": "2Gi"}


def check_inference_service(doc: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run check-jsonschema (the CLI, as a user would) on one InferenceService against the stored schema."""
    path = tmp_path / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(KSERVE_SCHEMA), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_there_are_cpu_gpu_and_kserve_targets_to_deploy() -> None:
    assert {"overlays/cpu", "overlays/gpu", "kserve"} <= set(TARGETS)


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_kubernetes_resource_each_target_renders_passes_strict_validation(rendered, target) -> None:
    docs = [d for d in rendered[target] if d["apiVersion"] != "serving.kserve.io/v1beta1"]
    assert docs or target == "kserve"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_the_inference_service_passes_kserves_crd_schema(rendered, tmp_path) -> None:
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "kserve-tritonserver"
    done = check_inference_service(isvc, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_kubectl
def test_the_inference_service_limits_cover_its_requests_once_merged_onto_the_runtime(rendered) -> None:
    """A request above the runtime's limit (cpu 4 against the runtime's 1) makes the pod invalid."""
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    resources = isvc["spec"]["predictor"]["model"]["resources"]
    limits = {**KSERVE_TRITON_RUNTIME_LIMITS, **resources.get("limits", {})}
    for name, request in resources["requests"].items():
        assert name in limits, f"{name} is requested without a limit"
        assert quantity(limits[name]) >= quantity(request), (
            f"{name}: limit {limits[name]} < request {request}"
        )


@needs_kubectl
def test_prometheus_scrapes_the_series_the_inference_services_autoscaler_reads(rendered) -> None:
    """KEDA's query reads Triton's nv_inference_* series: its pods must be scraped on Triton's metrics
    port (KServe adds no prometheus.io annotations), as the kiln-triton Deployment's are."""
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    (metric,) = predictor["autoScaling"]["metrics"]
    assert re.search(r"\bnv_inference_\w+\{", metric["external"]["metric"]["query"])
    (triton,) = of_kind(rendered["overlays/gpu"], "Deployment", "kiln-triton")
    ports = {p["name"]: p["containerPort"] for p in container(triton, "triton")["ports"]}
    annotations = predictor.get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == str(ports["metrics"])
    assert annotations.get("prometheus.io/path") == "/metrics"
    assert triton["spec"]["template"]["metadata"]["annotations"] == annotations


def test_the_autoscalers_query_reads_the_namespace_the_inference_service_is_deployed_in(rendered) -> None:
    """The query filtered on namespace="kiln" while the kustomization set none: applied anywhere else,
    KEDA would scale on a query that matches nothing."""
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    (metric,) = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    filtered = set(re.findall(r'namespace="([^"]*)"', metric["external"]["metric"]["query"]))
    assert filtered == {isvc["metadata"].get("namespace")}


@needs_kubectl
def test_an_inference_service_with_a_misspelled_field_is_rejected(rendered, tmp_path) -> None:
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    broken = copy.deepcopy(isvc)
    model = broken["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    done = check_inference_service(broken, tmp_path)
    assert done.returncode != 0 and "storageURI" in done.stdout + done.stderr


@needs_kubectl
def test_a_broken_overlay_renders_but_strict_validation_rejects_it(tmp_path) -> None:
    """A patch with a misspelled field goes through kustomize untouched; the validator must catch it."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    broken = tmp_path / "deploy" / "overlays" / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources: [../cpu]\npatches:\n  - path: typo.yaml\n")
    (broken / "typo.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: kiln-gateway}\n"
        "spec: {template: {spec: {terminationGracePeriodSecond: 45}}}\n"
    )
    (deployment,) = of_kind(render(broken), "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def gateway_shutdown_s(settings: Settings) -> float:
    """The longest a gateway process takes from SIGTERM to exit: the HTTP and gRPC drains side by side
    (serving/app.py's GatewayServer), then the lifespan's steps one after another (serving/gateway.py's
    stop), each bounded alone."""
    http_drain = int(settings.shutdown_grace_s)  # uvicorn's timeout_graceful_shutdown (0: None, unbounded)
    assert http_drain > 0, "KILN_SHUTDOWN_GRACE_S below 1 s leaves uvicorn's HTTP drain unbounded"
    grpc = settings.shutdown_grace_s if settings.grpc_port else 0.0  # the gRPC server's stop(grace)
    # Gateway.stop: the translators' schedulers first (where the gateway decodes), then the backend
    # (ONNX Runtime: every model's batcher, in parallel; Triton: its connection, at once).
    translators = settings.shutdown_grace_s if settings.backend == "onnxruntime" else 0.0
    if settings.backend == "triton" and settings.triton_translate == "scheduler":
        translators = settings.shutdown_grace_s
    batchers = settings.shutdown_grace_s if settings.backend == "onnxruntime" else 0.0
    return max(http_drain, grpc) + translators + batchers


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_the_grace_period_covers_the_prestop_pause_and_the_drain(rendered, target) -> None:
    """SIGKILL must not come while a pod still finishes requests it accepted (gateway and Triton)."""
    for deployment in of_kind(rendered[target], "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        (main,) = spec["containers"]
        pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
        if main["name"] == "gateway":
            given = {k.removeprefix("KILN_").lower(): v for k, v in env_of(main).items()}
            assert "shutdown_grace_s" in given, "set KILN_SHUTDOWN_GRACE_S where the grace period is set"
            shutdown = gateway_shutdown_s(Settings(**given))
        else:
            (flag,) = [a for a in main["args"] if a.startswith("--exit-timeout-secs=")]
            shutdown = float(flag.split("=")[1])
        assert spec["terminationGracePeriodSeconds"] > pre_stop + shutdown, deployment["metadata"]["name"]


@needs_kubectl
def test_the_inference_services_grace_period_covers_tritons_exit_timeout(rendered) -> None:
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    (flag,) = [a for a in predictor["model"]["args"] if a.startswith("--exit-timeout-secs=")]
    assert predictor["terminationGracePeriodSeconds"] > float(flag.split("=")[1])


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_every_kiln_variable_in_the_manifests_is_a_valid_gateway_setting(rendered, target) -> None:
    (deployment,) = of_kind(rendered[target], "Deployment", "kiln-gateway")
    given = {k.removeprefix("KILN_").lower(): v for k, v in env_of(container(deployment, "gateway")).items()}
    assert set(given) <= set(Settings.model_fields), set(given) - set(Settings.model_fields)
    settings = Settings(**given)
    ports = {p["name"]: p["containerPort"] for p in container(deployment, "gateway")["ports"]}
    assert (settings.http_port, settings.grpc_port) == (ports["http"], ports["grpc"])


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_onnx_runtime_threads_fit_the_cpus_the_gateway_pod_asks_for(rendered, target) -> None:
    """Thread counts left to their defaults follow the CPUs the process may use: without a CPU limit,
    every core of the node (a 64-thread lone-request session per model on a 64-core node)."""
    (deployment,) = of_kind(rendered[target], "Deployment", "kiln-gateway")
    gateway = container(deployment, "gateway")
    env = env_of(gateway)
    settings = Settings(**{k.removeprefix("KILN_").lower(): v for k, v in env.items()})
    if settings.backend != "onnxruntime":
        return
    limits, requests = gateway["resources"].get("limits", {}), gateway["resources"]["requests"]
    cpus = quantity(limits.get("cpu", requests["cpu"]))
    if "cpu" not in limits:
        assert "KILN_LONE_REQUEST_THREADS" in env, "no CPU limit: the default is one thread per node core"
        assert settings.intra_op_threads > 0, "no CPU limit: 0 (ONNX Runtime's default) is one per node core"
    assert 0 < settings.intra_op_threads * settings.workers <= cpus
    assert (settings.lone_request_threads or 0) <= cpus


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_the_request_bodies_a_gateway_holds_fit_well_inside_its_memory_limit(rendered, target) -> None:
    """A JSON body parses into Python objects several times its size, beside the models: the bodies all
    of a pod's processes may hold at once stay within an eighth of its memory limit."""
    (deployment,) = of_kind(rendered[target], "Deployment", "kiln-gateway")
    gateway = container(deployment, "gateway")
    env = env_of(gateway)
    assert "KILN_MAX_INFLIGHT_BODY_BYTES" in env, "the default (1 GiB) ignores the pod's memory"
    settings = Settings(**{k.removeprefix("KILN_").lower(): v for k, v in env.items()})
    memory_limit = quantity(gateway["resources"]["limits"]["memory"])
    assert settings.max_inflight_body_bytes * settings.workers <= memory_limit / 8
    assert settings.max_inflight_body_bytes >= settings.max_body_bytes


@needs_kubectl
def test_probes_use_the_kserve_v2_health_routes_the_gateway_serves(rendered) -> None:
    from serving.app import create_app

    routes = set(create_app(Settings()).openapi()["paths"])
    for target in ("overlays/cpu", "overlays/gpu"):
        for deployment in of_kind(rendered[target], "Deployment"):
            main = deployment["spec"]["template"]["spec"]["containers"][0]
            assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            assert main["startupProbe"]["httpGet"]["path"] in {"/v2/health/ready", "/v2/health/live"}
    assert {"/v2/health/ready", "/v2/health/live"} <= routes


def probe_budget_s(probe: dict[str, Any]) -> float:
    """How long a probe may keep failing before the kubelet acts."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


@needs_kubectl
def test_a_forwarding_gateway_is_not_restarted_while_triton_loads_its_models(rendered) -> None:
    """With KILN_BACKEND=triton the gateway's /v2/health/ready is Triton's readiness: a startup probe on
    it must wait longer than Triton's own, or probe the gateway's liveness instead."""
    docs = rendered["overlays/gpu"]
    gateway = container(of_kind(docs, "Deployment", "kiln-gateway")[0], "gateway")
    triton = container(of_kind(docs, "Deployment", "kiln-triton")[0], "triton")
    assert env_of(gateway)["KILN_BACKEND"] == "triton"
    startup = gateway["startupProbe"]
    if startup["httpGet"]["path"] != "/v2/health/live":
        assert probe_budget_s(startup) > probe_budget_s(triton["startupProbe"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def exposed_series() -> set[str]:
    """Every series name the gateway's /metrics can carry (histograms as _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in GatewayMetrics().registry.collect() for s in suffixes[f.type]}


@needs_kubectl
def test_autoscalers_scale_on_adapter_metrics_built_from_series_the_gateway_exposes(rendered) -> None:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    provided = {rule["name"]["as"] for rule in rules}
    wanted = set()
    for target in ("overlays/cpu", "overlays/gpu"):
        for hpa in of_kind(rendered[target], "HorizontalPodAutoscaler"):
            assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods"}, (
                "scale on latency signals, not CPU"
            )
            wanted |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == provided
    queried = {
        name
        for rule in rules
        for name in re.findall(r"\b(kiln_[a-z_]+)\{", rule["seriesQuery"] + rule["metricsQuery"])
    }
    assert queried and queried <= exposed_series(), queried - exposed_series()


@needs_kubectl
def test_gateways_reach_triton_through_a_per_request_balancer_over_the_headless_service(rendered) -> None:
    docs = rendered["overlays/gpu"]
    (headless,) = of_kind(docs, "Service", "kiln-triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    (deployment,) = of_kind(docs, "Deployment", "kiln-gateway")
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar outlives the draining gateway"
    (config_map,) = of_kind(docs, "ConfigMap", "kiln-triton-balancer")
    config = config_map["data"]["haproxy.cfg"]
    bind = re.search(r"bind 127\.0\.0\.1:(\d+) proto h2", config)
    assert bind and env_of(container(deployment, "gateway"))["KILN_TRITON_URL"] == f"127.0.0.1:{bind[1]}"
    assert re.search(r"server-template \w+ \d+ \"kiln-triton-headless\.", config)
    assert "default-server proto h2" in config


@pytest.mark.skipif(find_haproxy() is None, reason=HAPROXY_HINT)
def test_the_triton_balancer_configuration_is_accepted_by_haproxy(tmp_path) -> None:
    """haproxy where `make balancer` puts it: Debian's /usr/sbin is not on every user's PATH."""
    config = DEPLOY / "overlays" / "gpu" / "haproxy.cfg"
    done = subprocess.run(
        [find_haproxy(), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"POD_NAMESPACE": "kiln", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_python_model_sources() -> list[Path]:
    """The Python files an export puts in Triton's python-backend models: the translator's model.py and
    the serving/ modules copied beside it (export/translator_entries.py, read without importing it),
    and the python flavour's ONNX model."""
    tree = ast.parse((ROOT / "export" / "translator_entries.py").read_text())
    copied = {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in {"RUNTIME_MODULES", "EXECUTION_MODULES"}
    }
    assert set(copied) == {"RUNTIME_MODULES", "EXECUTION_MODULES"}, "export/translator_entries.py changed"
    triton = ROOT / "serving" / "triton"
    return [
        triton / "translator_model.py",
        triton / "onnx_model.py",
        *(ROOT / "serving" / "decoding" / m for m in copied["RUNTIME_MODULES"] if m.endswith(".py")),
        *(ROOT / "serving" / "execution" / m for m in copied["EXECUTION_MODULES"] if m.endswith(".py")),
    ]


def third_party_imports(paths: list[Path]) -> set[str]:
    """Top-level modules these files import (lazy imports too), less the standard library, Kiln's own
    copies and the utilities the python backend itself provides."""
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"serving", "triton_python_backend_utils", "__future__"}


def triton_image_release() -> str:
    """The Triton release the image in deploy/triton/Dockerfile is built on (24.08)."""
    (release,) = re.findall(
        r"^FROM nvcr\.io/nvidia/tritonserver:(\d+\.\d+)-py3\s*$", TRITON_DOCKERFILE.read_text(), re.M
    )
    return release


def test_the_triton_image_installs_every_package_the_python_models_import_pinned() -> None:
    """The stock Triton image has no tokenizers: without these packages no translator loads."""
    pins = dict(re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", TRITON_DOCKERFILE.read_text()))
    needed = third_party_imports(exported_python_model_sources())
    assert {"numpy", "tokenizers"} <= needed, needed
    assert needed <= set(pins), f"not installed (pinned) in the Triton image: {needed - set(pins)}"
    assert int(pins["numpy"].split(".")[0]) < 2, "the python backend's stub is built against numpy 1"
    assert triton_image_release()


@needs_kubectl
def test_triton_runs_the_image_built_with_the_python_models_packages(rendered) -> None:
    wanted = f"kiln-triton:{triton_image_release()}-py3"
    (deployment,) = of_kind(rendered["overlays/gpu"], "Deployment", "kiln-triton")
    (isvc,) = of_kind(rendered["kserve"], "InferenceService")
    for image in (container(deployment, "triton")["image"], isvc["spec"]["predictor"]["model"]["image"]):
        assert image.rsplit("/", 1)[-1] == wanted, f"{image}: build deploy/triton/Dockerfile ({wanted})"


def test_the_stored_kserve_schema_is_closed_so_unknown_fields_fail() -> None:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    model = schema["properties"]["spec"]["properties"]["predictor"]["properties"]["model"]
    assert model["additionalProperties"] is False and "storageUri" in model["properties"]
