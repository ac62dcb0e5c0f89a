"""A new user's first hour: the README's commands and output against the code, and the first mistakes
(a wrong path, a host that is not this machine's) answered with one line before any work is done."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from kiln import demo
from serving.__main__ import claim_ports, main
from serving.execution.placement import Placement
from serving.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("no-such-host.invalid", id="does-not-resolve"),
        pytest.param("192.0.2.1", id="not-this-machine"),  # TEST-NET-1: never a local address
    ],
)
def test_a_host_the_gateway_cannot_bind_stops_it_naming_the_flag_even_with_both_ports_zero(host):
    """With ``--http-port 0 --grpc-port 0`` no port check tried the host: the gateway loaded every
    model, then uvicorn exited 3 with "[Errno -2] Name or service not known", no flag named."""
    settings = Settings(host=host, http_port=0, grpc_port=0)
    with pytest.raises(SystemExit) as stopped:
        claim_ports(settings, hold=False)
    assert str(stopped.value.code).startswith(f"--host (or KILN_HOST) {host}: ")


def test_a_host_that_is_not_this_machines_stops_the_gateway_before_it_serves(tmp_path):
    argv = ["--model-repository", str(tmp_path), "--http-port", "0", "--grpc-port", "0"]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--host", "192.0.2.1"])
    assert "--host (or KILN_HOST) 192.0.2.1: cannot be bound" in str(stopped.value.code)


def test_free_ports_on_a_local_host_still_pass_the_checks():
    assert claim_ports(Settings(host="127.0.0.1", http_port=0, grpc_port=0), hold=False) == []


@pytest.mark.parametrize("flag", ["--checkpoints", "--repository"])
def test_the_demo_refuses_a_file_for_its_directories_before_it_trains_anything(flag, tmp_path, monkeypatch):
    """``--repository`` naming a file was refused by export only after minutes of training."""
    stages: list[str] = []
    monkeypatch.setattr(demo, "run_stage", lambda title, cmd: stages.append(title) or 0.0)
    monkeypatch.setattr(demo, "stop_on_sigterm", lambda: None)  # pytest keeps its own SIGTERM handling
    monkeypatch.setattr(demo, "gateway", lambda repository, **_: pytest.fail("the demo went on to serve"))
    paths = {"--checkpoints": tmp_path / "ck", "--repository": tmp_path / "repo"}
    paths[flag].write_text("a file, not a directory")
    argv = [arg for item in paths.items() for arg in (item[0], str(item[1]))]
    with pytest.raises(SystemExit) as stopped:
        demo.main(argv)
    assert str(stopped.value.code).startswith(f"{flag} {paths[flag]} is not a directory")
    assert stages == []


def test_the_readme_demo_output_shows_the_placement_line_the_demo_prints_on_the_cpu(monkeypatch):
    """The README's sample lacked ``kiln_cuda_graph_replay=off``, which every CPU model reports."""
    import httpx

    config = {
        "instance_group": [{"kind": "KIND_CPU"}],
        "parameters": Placement("CPUExecutionProvider", "cpu").config_parameters(),
    }
    request = httpx.Request("GET", "http://127.0.0.1:1/v2/models/resnet18/config")
    monkeypatch.setattr(
        httpx, "get", lambda url, timeout, **_: httpx.Response(200, json=config, request=request)
    )
    out = io.StringIO()
    monkeypatch.setattr(demo, "console", Console(file=out, width=1000))
    demo.show_placement("http://127.0.0.1:1", "resnet18")
    line = out.getvalue().strip()
    assert line.startswith("resnet18: instance kind KIND_CPU; kiln_provider=CPUExecutionProvider")
    assert f"\n{line}\n" in README.read_text()


def test_the_readme_says_how_to_make_the_image_its_curl_examples_send(tmp_path):
    """The friendly REST examples send ``digit.png``, which nothing in the checkout provides."""
    text = README.read_text()
    assert "-F files=@digit.png" in text
    command = re.search(r'^python -c "(.*digit\.png.*)"$', text, re.M)
    assert command, "the README gives no command that writes digit.png"
    subprocess.run([sys.executable, "-c", command.group(1)], cwd=tmp_path, check=True, timeout=60)
    from PIL import Image

    with Image.open(tmp_path / "digit.png") as image:
        assert image.format == "PNG" and image.size == (32, 32)


def test_the_readme_says_that_make_demo_gpu_installs_the_gpu_extra_before_it_can_refuse(tmp_path):
    """The README said ``make demo GPU=1`` "stops at once" without CUDA; make installs onnxruntime-gpu
    (and TensorRT) in place of the CPU package first, as every ``GPU=1`` target does."""
    root = README.parent
    dry = subprocess.run(
        ["make", "-n", "demo", "GPU=1", f"VENV={tmp_path / 'venv'}", "NVIDIA_DEVICES=/dev/nvidia0"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    install = next(i for i, line in enumerate(dry) if "install" in line and '-e ".[gpu,' in line)
    demo_line = next(i for i, line in enumerate(dry) if "-m kiln.demo" in line and "--gpu" in line)
    assert install < demo_line
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `make demo GPU=1` |"))
    assert "stops at once" not in row and "installed the `gpu` extra" in row
