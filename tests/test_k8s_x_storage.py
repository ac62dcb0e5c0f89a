"""The model repository volume: writable through its claim, mounted read-only by every serving pod.

A ``ReadOnlyMany``-only claim cannot be written through: CSI drivers mount a ``MULTI_NODE_READER_ONLY``
volume read-only for every pod (writers included) and some provision it only from a snapshot, so
neither the first copy of ``make export``'s output nor a rollout's ``python -m export`` could write it.
These tests read the manifests alone (no ``kubectl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CLAIM = "kiln-model-repository"


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object written in deploy/ (patches included), with the file it is in."""
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                found.append((path, doc))
    return found


def test_the_repository_claim_can_be_written_by_the_pod_that_fills_it() -> None:
    (claim,) = [
        doc
        for _, doc in manifests()
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == CLAIM
    ]
    modes = set(claim["spec"]["accessModes"])
    assert "ReadWriteMany" in modes, f"{modes}: no pod could copy the repository in or export onto it"


def test_every_pod_that_mounts_the_repository_mounts_it_read_only() -> None:
    """Writable claim, read-only readers: no serving pod can change what the others serve."""
    checked = 0
    for path, doc in manifests():
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        names = {
            volume["name"]
            for volume in spec.get("volumes", [])
            if volume.get("persistentVolumeClaim", {}).get("claimName") == CLAIM
        }
        for volume in spec.get("volumes", []):
            if volume["name"] in names:
                assert volume["persistentVolumeClaim"].get("readOnly") is True, path
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in names:
                    assert mount.get("readOnly") is True, (path, container["name"])
                    checked += 1
    assert checked >= 2, "the gateway and Triton Deployments both mount the repository"
