"""The gateway Deployment bounds friendly classify's image decodes by the pod, not by the node.

``--image-decodes`` defaults to the CPUs the process may use: its affinity mask, capped only by a CPU
quota, and the Deployment sets no CPU limit. On a 64-core node a pod that asks for 2 CPUs decoded up to
40 images at once (Starlette's thread pool), each ~90 MB at 4096 x 4096 (a 60 KB PNG): 3.6 GB, past
the container's 4Gi memory limit once the models are loaded, and the kernel OOM-killed the gateway
with every request it held.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import serving.app
from serving.app import create_app
from serving.settings import Settings
from tests.test_deploy import quantity

ROOT = Path(__file__).resolve().parents[1]
BYTES_PER_DECODED_PIXEL = 5  # README, --image-decodes: ~90 MB for a 4096 x 4096 RGB PNG
NODE_CORES = 64


def _gateway() -> dict:
    deployment = yaml.safe_load((ROOT / "deploy/base/gateway/deployment.yaml").read_text())
    (gateway,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    return gateway


def test_a_gateway_pod_on_a_many_core_node_decodes_no_more_images_at_once_than_its_memory_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gateway = _gateway()
    env = {e["name"]: e["value"] for e in gateway["env"] if "value" in e}
    fields = {k.removeprefix("KILN_").lower(): v for k, v in env.items()}
    settings = Settings(**{**fields, "model_repository": tmp_path, "grpc_port": 0})
    # no CPU limit in the pod: the process may use every core of the node
    assert "cpu" not in gateway["resources"].get("limits", {})
    monkeypatch.setattr(serving.app, "usable_cpus", lambda: NODE_CORES)
    decodes = create_app(settings).state.image_decodes.free
    requests, limits = gateway["resources"]["requests"], gateway["resources"]["limits"]
    assert decodes <= quantity(requests["cpu"]), (
        "decodes are CPU work: more at once than the pod's CPUs gains nothing"
    )
    decoding = decodes * settings.max_image_pixels * BYTES_PER_DECODED_PIXEL
    held = (decoding + settings.max_inflight_body_bytes) * settings.workers
    assert held <= quantity(limits["memory"]) / 4, f"{held / 2**30:.1f} GiB of images and bodies at once"


def test_the_gpu_overlays_gateway_decodes_no_more_images_at_once_than_its_cpu_request() -> None:
    """The GPU overlay's gateway asks for 1 CPU (Triton computes): it sets its own decode count."""
    patch = yaml.safe_load((ROOT / "deploy/overlays/gpu/gateway-forwards-to-triton.yaml").read_text())
    (gateway,) = [c for c in patch["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert int(env["KILN_IMAGE_DECODES"]) <= quantity(gateway["resources"]["requests"]["cpu"])
