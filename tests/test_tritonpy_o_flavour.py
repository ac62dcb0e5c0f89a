"""The python flavour after an interrupted derive: a Ctrl-C while ``python -m serving.triton --workdir W``
copied the repository left ``W/model_repository`` holding an entry without its config.pbtxt, and every
later start on that work directory refused it as "not a python flavour written by Kiln"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.triton import flavour
from serving.triton.flavour import derive_python_flavour

CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [2] }
output { name: "y" data_type: TYPE_FP32 dims: [2] }
"""


def _repository(root: Path) -> Path:
    """One ONNX entry; derive only copies the graph, so its bytes need not be a real model."""
    (root / "tiny" / "1").mkdir(parents=True)
    (root / "tiny" / "1" / "model.onnx").write_bytes(b"not read by derive")
    (root / "tiny" / "config.pbtxt").write_text(CONFIG, encoding="utf-8")
    return root


def test_a_derive_interrupted_mid_copy_leaves_a_work_directory_the_next_start_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, output = _repository(tmp_path / "repo"), tmp_path / "work" / "model_repository"

    def interrupted(*_: object, **__: object) -> None:  # Ctrl-C after the entry's files, before its config
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(flavour.shutil, "copyfile", interrupted)
        with pytest.raises(KeyboardInterrupt):
            derive_python_flavour(repository, output)
    assert not output.exists(), "a half-written flavour stays behind"

    report = derive_python_flavour(repository, output)  # the next start, on the same work directory
    assert report.wrapped == ["tiny"]
    assert (output / "tiny" / "1" / "model.py").is_file()
    assert (output / "tiny" / "config.pbtxt").is_file()


def test_a_failed_derive_leaves_no_flavour_for_an_unrelated_mistake_either(tmp_path: Path) -> None:
    """An entry whose version directories hold no graph: the error names it, and the copies made before
    it are not left filling the work directory."""
    repository, output = _repository(tmp_path / "repo"), tmp_path / "work" / "model_repository"
    shutil.copytree(repository / "tiny", repository / "broken")
    (repository / "broken" / "1" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="no version directory holds model.onnx"):
        derive_python_flavour(repository, output)
    assert not output.exists()
    shutil.rmtree(repository / "broken")
    assert derive_python_flavour(repository, output).wrapped == ["tiny"]
