"""``python -m export`` on bad input: one "export failed: ..." line and a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.repo_fixtures import _tiny_checkpoint
from training.checkpoint import save_checkpoint


def _broken_checkpoint(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A tiny LeNet checkpoint with ``change`` applied to its content."""
    path = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    return save_checkpoint(ckpt, path)


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from export.__main__ import main

    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if "export failed" in line]
    assert len(lines) == 1 and lines[0].startswith("export failed: "), captured.err
    return lines[0]


def _refused_in(directory: Path, touch: Callable[..., None]) -> Callable[..., None]:
    """``Path.touch`` that fails as the kernel fails an unprivileged user's in a read-only ``directory``."""

    def refused(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        touch(path, *args, **kwargs)

    return refused


def _unknown_model(ckpt: dict[str, Any]) -> None:
    ckpt["model"]["name"] = "nosuchnet"


def _missing_weight(ckpt: dict[str, Any]) -> None:
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))


def _unknown_argument(ckpt: dict[str, Any]) -> None:
    ckpt["model"]["args"]["bogus"] = 1


def _no_preprocessing(ckpt: dict[str, Any]) -> None:
    del ckpt["preprocessing"]


def _model_not_a_dict(ckpt: dict[str, Any]) -> None:
    ckpt["model"] = "lenet"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_unknown_model, "unknown model 'nosuchnet'; registered models: "),
        (_missing_weight, "the weights do not fit the architecture (Error(s) in loading state_dict"),
        (_unknown_argument, "the model's arguments do not fit it (lenet: unknown argument(s) ['bogus']"),
        (_no_preprocessing, "a classify checkpoint needs ['preprocessing']; it has none"),
        (_model_not_a_dict, "'model' must be {'name': str, 'args': dict}"),
    ],
)
def test_a_checkpoint_that_does_not_fit_its_model_is_one_line_naming_the_file(
    tmp_path, capsys, change, message
):
    ckpt = _broken_checkpoint(tmp_path, change)
    line = _fail([str(ckpt), "--repository", str(tmp_path / "repo"), "--tensorrt", "off"], capsys)
    assert line.startswith(f"export failed: {ckpt}: ") and message in line
    assert not (tmp_path / "repo").exists()  # made by the export, nothing written: removed again


def test_a_repository_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import export.pipeline

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the export started")

    monkeypatch.setattr(export.pipeline, "export_checkpoint", no_work)
    ckpt = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    (tmp_path / "repo").write_text("not a directory")
    line = _fail([str(ckpt), "--repository", str(tmp_path / "repo")], capsys)
    assert line == f"export failed: repository {tmp_path / 'repo'} exists and is not a directory"


def test_a_read_only_repository_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import export.pipeline

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the export started")

    monkeypatch.setattr(export.pipeline, "export_checkpoint", no_work)
    ckpt = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    (tmp_path / "repo").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes into read-only directories: its file creation refused as anyone's
        monkeypatch.setattr(Path, "touch", _refused_in(tmp_path / "repo", Path.touch))
    line = _fail([str(ckpt), "--repository", str(tmp_path / "repo")], capsys)
    assert line == f"export failed: repository {tmp_path / 'repo'} is not writable: Permission denied"


def test_a_repository_that_is_a_file_is_refused_by_the_library_too(tmp_path):
    from export.pipeline import export_checkpoint
    from export.repository import RepositoryError

    ckpt = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    (tmp_path / "repo").write_text("not a directory")
    with pytest.raises(RepositoryError, match="exists and is not a directory"):
        export_checkpoint(ckpt, tmp_path / "repo", tensorrt="off")


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import export.pipeline

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the export started")

    monkeypatch.setattr(export.pipeline, "export_checkpoint", no_work)


def test_two_checkpoints_of_one_file_name_are_refused_naming_both_before_any_work(
    tmp_path, capsys, monkeypatch
):
    _no_work(monkeypatch)
    first = _tiny_checkpoint(tmp_path / "a" / "lenet.pt", "lenet", seed=0)
    second = _tiny_checkpoint(tmp_path / "b" / "lenet.pt", "lenet", seed=1)
    line = _fail([str(tmp_path / "a"), str(second), "--repository", str(tmp_path / "repo")], capsys)
    assert line == (
        f"export failed: {first} and {second} would both be exported as entry 'lenet' (entry names come "
        "from file names): rename one, or export them into separate repositories"
    )
    assert not (tmp_path / "repo").exists()


def test_file_names_that_sanitize_to_one_entry_name_are_refused_by_the_library_too(tmp_path, monkeypatch):
    from export.pipeline import export_all
    from export.repository import RepositoryError

    _no_work(monkeypatch)
    _tiny_checkpoint(tmp_path / "ckpts" / "lenet.v1.pt", "lenet", seed=0)
    _tiny_checkpoint(tmp_path / "ckpts" / "lenet+v1.pt", "lenet", seed=1)
    with pytest.raises(
        RepositoryError, match=r"lenet\+v1\.pt and .*lenet\.v1\.pt would both be .* entry 'lenet_v1'"
    ):
        export_all([tmp_path / "ckpts"], tmp_path / "repo", tensorrt="off")


def test_a_checkpoint_named_twice_is_exported_once_not_refused_as_its_own_twin(tmp_path):
    from export.pipeline import check_entry_names, find_checkpoints

    ckpt = _tiny_checkpoint(tmp_path / "ckpts" / "lenet.pt", "lenet", seed=0)
    other = _tiny_checkpoint(tmp_path / "ckpts" / "other.pt", "lenet", seed=1)
    found = find_checkpoints([tmp_path / "ckpts", ckpt, tmp_path / "ckpts" / ".." / "ckpts" / "lenet.pt"])
    assert found == [ckpt, other]
    check_entry_names(found)
