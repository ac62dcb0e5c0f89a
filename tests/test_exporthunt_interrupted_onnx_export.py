"""A Ctrl-C (or SIGTERM) while torch.onnx imports a module (torch._dynamo's, at a process's first export)
leaves that module half-imported; torch then fails on it ("module 'torch._dynamo' has no attribute
'exc'") and raises an export error of its own, the KeyboardInterrupt only in its chain. Export reported
it as the model's fault ("cannot be exported to ONNX ... a model of Kiln's own: please report it"), exit
1; it is an interruption: "interrupted", exit 130. Simulated: the exporter raises torch's error as
torch does, chained to the interrupted import."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export import __main__ as cli
from export import pipeline
from tests.repo_fixtures import _tiny_checkpoint


def _interrupted_in_torch(ctx, work):
    try:
        try:
            raise KeyboardInterrupt  # the Ctrl-C, inside torch's import of torch._dynamo.exc
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'") from None
    except AttributeError as exc:
        raise torch.onnx.OnnxExporterError("Failed to export the model with torch.export.") from exc


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pipeline, "_exporter", lambda task: _interrupted_in_torch)
    return _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", 0)


def test_an_onnx_export_error_raised_by_a_ctrl_c_is_the_interruption(tmp_path, checkpoint) -> None:
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_checkpoint(checkpoint, tmp_path / "repo", tensorrt="off")


def test_the_command_says_interrupted_and_exits_130(tmp_path, checkpoint, capsys) -> None:
    code = cli.main([str(checkpoint), "--repository", str(tmp_path / "new" / "repo"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "cannot be exported" not in err
    assert not (tmp_path / "new").exists()  # the repository it made is removed again, as after any Ctrl-C
