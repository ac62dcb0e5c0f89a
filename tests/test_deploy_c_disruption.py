"""A node drain never takes every pod of a serving Deployment at once, nor hangs on one (rendered with
``kubectl kustomize``, which only reads files).

In the GPU overlay a gateway is ready only while a Triton is (its readiness is Triton's), and each Triton
pod takes one GPU, so a multi-GPU node can hold them all: without a PodDisruptionBudget, draining it
evicted every Triton pod together and took every gateway out of service with them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy import DEPLOY, KUBECTL, of_kind, render

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: kustomize cannot render"
)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector of ``matchLabels`` alone picks a pod with ``labels``."""
    assert set(selector) == {"matchLabels"}, f"a selector this test cannot read: {selector}"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_every_deployment_has_a_disruption_budget_that_keeps_one_pod_and_lets_drains_proceed(target) -> None:
    docs = render(DEPLOY / target)
    budgets = of_kind(docs, "PodDisruptionBudget")
    autoscalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")}
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets if selects(b["spec"]["selector"], labels)] or [None]
        assert budget is not None, f"{name}: no PodDisruptionBudget: a drain may evict every pod at once"
        spec = budget["spec"]
        fewest = autoscalers[name]["spec"].get("minReplicas", 1) if name in autoscalers else 1
        if "minAvailable" in spec:  # at the autoscaler's floor, a drain must still be able to evict one
            assert 0 < int(spec["minAvailable"]) < fewest, (name, spec, fewest)
        else:
            assert int(spec["maxUnavailable"]) >= 1 and fewest >= 1, (name, spec)
            replicas = deployment["spec"]["replicas"]
            assert int(spec["maxUnavailable"]) < replicas, f"{name}: all {replicas} pods may go at once"
