"""Every Triton pod deploy/ runs pauses before its SIGTERM (read from the files alone, no kubectl).

On SIGTERM Triton takes no new HTTP connection and unloads its models, while the Service's endpoints
and the gateways' balancers still send it calls for a few seconds ("Request for unknown model",
triton-inference-server/server#6230). The kiln-triton Deployment pauses in a ``preStop`` first; the
InferenceService's predictor, which KEDA scales in and out, ran the same server without the pause."""

from __future__ import annotations

from typing import Any

import yaml

from tests.test_deploy import DEPLOY, container

TRITON_DEPLOYMENT = DEPLOY / "base" / "triton" / "deployment.yaml"
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"


def triton_pods() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each Triton pod's spec (where its grace period is) and its Triton container."""
    deployment = yaml.safe_load(TRITON_DEPLOYMENT.read_text())
    predictor = yaml.safe_load(INFERENCE_SERVICE.read_text())["spec"]["predictor"]
    return {
        "kiln-triton": (deployment["spec"]["template"]["spec"], container(deployment, "triton")),
        "the InferenceService's predictor": (predictor, predictor["model"]),
    }


def exit_timeout_s(triton: dict[str, Any]) -> float:
    (flag,) = [a for a in triton["args"] if a.startswith("--exit-timeout-secs=")]
    return float(flag.split("=", 1)[1])


def test_every_triton_pod_leaves_its_endpoints_before_triton_stops_taking_calls() -> None:
    pauses = {}
    for pod, (spec, triton) in triton_pods().items():
        pre_stop = triton.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pre_stop > 0, f"{pod}: no preStop pause before Triton's SIGTERM"
        assert spec["terminationGracePeriodSeconds"] > pre_stop + exit_timeout_s(triton), pod
        pauses[pod] = pre_stop
    assert len(set(pauses.values())) == 1, f"the Triton pods pause differently: {pauses}"
