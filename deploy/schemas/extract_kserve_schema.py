"""Write the stored KServe ``InferenceService`` schema from KServe's CRD (run by hand, never at test time).

KServe's full CRD is ~2 MB, mostly copies of the Kubernetes pod spec. This keeps the openAPIV3Schema of
``serving.kserve.io/v1beta1`` for the fields Kiln's manifest can use (every predictor field name, the
``model``, scaling and rollout fields in full), reduces the others to their type, and closes every
object that lists its properties, as the API server does with strict field validation (a typo'd
field is rejected, not pruned). Usage::

    python deploy/schemas/extract_kserve_schema.py serving.kserve.io_inferenceservices.yaml \
        --source "kserve/kserve@<commit>" > deploy/schemas/kserve-inferenceservice-v1beta1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

FULL_PREDICTOR_FIELDS = {
    "model",
    "minReplicas",
    "maxReplicas",
    "autoScaling",
    "scaleMetric",
    "scaleMetricType",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "deploymentStrategy",
    "terminationGracePeriodSeconds",
    "serviceAccountName",
    "nodeSelector",
    "tolerations",
    "annotations",
    "labels",
    "volumes",
}


def type_only(schema: dict[str, Any]) -> dict[str, Any]:
    """The field's type alone: its name stays known, its contents are not checked here."""
    kept = {k: schema[k] for k in ("type", "anyOf", "x-kubernetes-int-or-string") if k in schema}
    if schema.get("type") in ("object", "array") or "properties" in schema:
        kept["x-kubernetes-preserve-unknown-fields"] = True
    return kept


def close_objects(schema: Any) -> Any:
    """``additionalProperties: false`` on every object that lists its properties (strict validation)."""
    if isinstance(schema, dict):
        schema = {k: close_objects(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [close_objects(v) for v in schema]
    return schema


def extract(crd: dict[str, Any], source: str) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    predictor_props = {
        name: (sub if name in FULL_PREDICTOR_FIELDS else type_only(sub))
        for name, sub in predictor["properties"].items()
    }
    others = {name: type_only(sub) for name, sub in spec["properties"].items() if name != "predictor"}
    closed = close_objects(
        {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "serving.kserve.io/v1beta1"},
                "kind": {"const": "InferenceService"},
                "metadata": {"type": "object"},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "spec": {
                    **{k: v for k, v in spec.items() if k != "properties"},
                    "properties": {**others, "predictor": {**predictor, "properties": predictor_props}},
                },
            },
        }
    )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "KServe InferenceService serving.kserve.io/v1beta1 (subset of the CRD's openAPIV3Schema)",
        "description": f"Extracted from {source} config/crd/full/serving.kserve.io_inferenceservices.yaml "
        "by deploy/schemas/extract_kserve_schema.py",
        **closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path)
    parser.add_argument("--source", required=True, help="where the CRD came from (repo@commit)")
    args = parser.parse_args()
    schema = extract(yaml.safe_load(args.crd.read_text(encoding="utf-8")), args.source)
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
