"""``make demo GPU=1`` takes ``nvidia-smi -L``'s word for a GPU only where it lists one (README,
"make targets and variables": NVIDIA_DEVICES's default is the device files found, "else the first GPU
``nvidia-smi -L`` lists"). nvidia-smi writes its failures to stdout ("No devices were found" in a
container given the tools but no GPU, exit 6; "NVIDIA-SMI has failed because it couldn't communicate
with the NVIDIA driver"), and the Makefile took that first line for a GPU: the demo was not refused,
and installed the gpu extra (GBs of CUDA wheels) on a machine with no GPU before stopping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRINT = 'review75f-nvidia-devices: ; @printf "%s\\n" "$(NVIDIA_DEVICES)"'

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def nvidia_devices(tmp_path: Path, stdout: str, status: int) -> str:
    """NVIDIA_DEVICES as the Makefile computes it where ``nvidia-smi`` prints ``stdout`` and exits
    with ``status`` (a stand-in first on PATH; the device files are whatever this machine has)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "said").write_text(stdout)
    fake = tools / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat '{tools / 'said'}'\nexit {status}\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NVIDIA_DEVICES", "MAKEFLAGS", "MAKELEVEL")}
    env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", "-f", "Makefile", "--eval", PRINT, "review75f-nvidia-devices"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    "said, status",
    [
        ("No devices were found\n", 6),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9),
        ("Failed to initialize NVML: Driver/library version mismatch\n", 18),
    ],
)
def test_what_nvidia_smi_says_when_it_finds_no_gpu_does_not_vouch_for_one(
    tmp_path: Path, said: str, status: int
) -> None:
    assert said.strip() not in nvidia_devices(tmp_path, said, status)


def test_the_first_gpu_nvidia_smi_lists_still_vouches_for_one(tmp_path: Path) -> None:
    listed = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\n  MIG 1g.10gb Device 0: (UUID: MIG-0)\n"
    assert nvidia_devices(tmp_path, listed, 0)  # the device files where this machine has them, else it
