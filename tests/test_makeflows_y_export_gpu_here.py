"""``make export DEVICE=gpu`` on a machine whose ONNX Runtime has no CUDA provider: the export says, before
it works, that a gateway here cannot load what it writes (``make serve`` came up next with every model
failing to load, the export having said nothing); on a CUDA machine, and for ``--device cpu``, no line."""

from __future__ import annotations

import onnxruntime
import pytest

from export import __main__ as export_main

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


def test_the_note_is_given_only_for_gpu_configs_without_a_cuda_provider():
    assert "cannot load them" in export_main.gpu_placement_note("gpu", CPU_ONLY)
    assert export_main.gpu_placement_note("gpu", ["CUDAExecutionProvider", *CPU_ONLY]) is None
    assert export_main.gpu_placement_note("cpu", CPU_ONLY) is None


@pytest.mark.parametrize(("device", "noted"), [("gpu", True), ("cpu", False)])
def test_export_device_gpu_here_says_so_before_it_looks_for_checkpoints(
    tmp_path, monkeypatch, capsys, device, noted
):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: CPU_ONLY)
    (tmp_path / "checkpoints").mkdir()
    argv = [str(tmp_path / "checkpoints"), "--repository", str(tmp_path / "repo"), "--device", device]
    assert export_main.main(argv) == 2  # no checkpoints: the note comes first all the same
    err = capsys.readouterr().err.replace("\n", " ")
    assert ("--device gpu: the configs place every model on a GPU" in err) is noted
    assert "no checkpoints (*.pt) found" in err
