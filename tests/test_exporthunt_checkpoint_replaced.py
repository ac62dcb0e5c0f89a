"""A checkpoint replaced while export reads it (a training run's ``save_checkpoint`` renaming its new
file over it between export's load and its hash): the entry recorded the new file's sha256 beside the
old file's weights, and every later export of the new file found it up to date, serving the old
weights. The export is refused, saying why, and writes nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from export import pipeline
from tests.repo_fixtures import _tiny_checkpoint
from training.checkpoint import CheckpointError, file_sha256


def test_a_checkpoint_replaced_while_export_reads_it_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", 0)
    newer = _tiny_checkpoint(tmp_path / "next" / "lenet.pt", "lenet", 1)
    real = pipeline.load_checkpoint

    def saved_meanwhile(p):  # the run's save: a new file renamed over the one just read
        ckpt = real(p)
        staged = tmp_path / "ckpts" / ".lenet.pt.tmp"
        shutil.copy(newer, staged)
        os.replace(staged, path)
        return ckpt

    monkeypatch.setattr(pipeline, "load_checkpoint", saved_meanwhile)
    with pytest.raises(CheckpointError, match="was replaced while export read it"):
        pipeline.export_checkpoint(path, tmp_path / "repo", tensorrt="off")
    assert not (tmp_path / "repo" / "lenet").exists()
    assert file_sha256(path) == file_sha256(newer)  # the next export reads the new file whole
