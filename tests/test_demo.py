"""`make demo GPU=1`: where each stage runs, and the early, named failure on a machine without CUDA."""

from __future__ import annotations

import pytest
import torch

from kiln import demo


def test_the_gpu_demo_without_cuda_stops_before_any_stage_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU, and PyTorch sees none") as stopped:
        demo.main(["--gpu", "--checkpoints", str(tmp_path / "ck"), "--repository", str(tmp_path / "repo")])
    assert "without GPU=1" in str(stopped.value)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "repo").exists()


def test_the_gpu_demo_needs_onnxruntimes_cuda_provider_too(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(SystemExit, match="lacks .*CPUExecutionProvider.*install the `gpu` extra"):
        demo.gpu_target()


def test_on_a_cuda_machine_every_stage_is_sent_to_the_gpu(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    target = demo.gpu_target()
    assert target.name == "NVIDIA H200"
    assert target.classify == ("--device", "cuda", "--amp") and target.translate == ("--device", "cuda")
    assert target.export == ("--device", "gpu")
    assert demo.CPU.classify == demo.CPU.translate == demo.CPU.export == ()  # the CPU demo is unchanged


def test_a_request_the_gateway_refuses_stops_the_demo_with_its_answer(capsys):
    """The demo shows requests answered: an error answer is a failed demo, not a yellow line."""
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1:1/v1/models/transformer/translate")
    refused = httpx.Response(422, json={"error": "beam_size: too large"}, request=request)
    with pytest.raises(SystemExit) as stopped:
        demo._answer(refused)
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "POST /v1/models/transformer/translate answered 422" in out and "beam_size: too large" in out
    assert demo._answer(httpx.Response(200, json={"ok": 1}, request=request)) == {"ok": 1}


def test_the_demo_gateway_binds_ports_the_demo_holds_until_it_stops(monkeypatch, tmp_path):
    """A port drawn, closed and handed to the gateway seconds later could be taken in between: the
    demo keeps both bound (SO_REUSEPORT) while the gateway runs, which binds beside them."""
    import contextlib
    import errno
    import socket

    seen: dict[str, object] = {}

    def taken(port: int) -> bool:
        """Whether a server binding as servers do (no SO_REUSEPORT) is refused ``port``."""
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                other.bind(("127.0.0.1", port))
            except OSError as exc:
                return exc.errno == errno.EADDRINUSE
            return False

    @contextlib.contextmanager
    def fake_running(cmd, ready_url, **kwargs):
        seen["cmd"] = cmd
        ports = [int(cmd[cmd.index(flag) + 1]) for flag in ("--http-port", "--grpc-port")]
        seen["ports"], seen["taken while starting"] = ports, [taken(port) for port in ports]
        yield None

    monkeypatch.setattr(demo, "running", fake_running)
    with demo.gateway(tmp_path) as (url, grpc_url):
        http_port, grpc_port = seen["ports"]
        assert (url, grpc_url) == (f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
        assert [taken(port) for port in seen["ports"]] == [True, True]
    assert seen["taken while starting"] == [True, True]
    assert "--reuse-port" in seen["cmd"] and http_port != grpc_port


def test_a_stage_shows_its_command_as_a_shell_takes_it_so_a_path_with_a_space_can_be_copied():
    import shlex

    cmd = ["true", "my checkpoints/it's"]  # short: the console would wrap a long line
    with demo.console.capture() as captured:
        demo.run_stage("Copyable", cmd)
    shown = next(line for line in captured.get().splitlines() if line.startswith("$ "))
    assert shlex.split(shown[2:]) == cmd
