"""A CUDA training run held to the same weights, bit for bit, from the same command (README, "Training is
reproducible"), checked on a CPU through a stand-in torch.cuda: seeds alone leave cuDNN free to pick a
convolution algorithm that sums with atomics, and cuDNN's LSTM and GRU need cuBLAS's fixed workspace
(PyTorch's reproducibility notes), so ``setup_dist`` sets both before any CUDA work."""

from __future__ import annotations

import pytest
import torch

from training import runtime


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """torch.cuda answering as on a machine with one GPU (none is touched); the cuDNN flags and the
    environment put back after the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return chosen


def test_a_cuda_run_asks_cudnn_and_cublas_for_their_deterministic_algorithms(one_fake_gpu):
    d = runtime.setup_dist("cuda")
    assert d.device == torch.device("cuda:0") and one_fake_gpu == [torch.device("cuda:0")]
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_workspace_setting_of_the_users_own_is_kept(one_fake_gpu, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    runtime.setup_dist("auto")
    assert runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert torch.backends.cudnn.deterministic


def test_a_cpu_run_leaves_the_cuda_settings_alone(one_fake_gpu):
    assert runtime.setup_dist("cpu").device == torch.device("cpu")
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert "CUBLAS_WORKSPACE_CONFIG" not in runtime.os.environ and one_fake_gpu == []
