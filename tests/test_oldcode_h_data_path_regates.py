"""Entries checked on random inputs for want of the run's data are measured again once ``--data-path``
says where that data is: the warning of the first run advises the flag, and a rerun that found the
entries "up to date" kept an int8 entry gated on random pixels (or a refusal measured on them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from export import __main__ as export_main
from export.parity import ParityReport
from export.results import Entry, ExportContext, ExportOptions
from tests.classifier_exports import write_checkpoint
from tests.test_export_data_path import _folder
from training.data.images import DataSpec, data_info, make_splits


def _parity(repository: Path, entry: str) -> dict:
    return json.loads((repository / entry / "kiln.json").read_text())["parity"]


def test_a_rerun_with_data_path_regates_int8_entries_written_from_random_images(tmp_path: Path) -> None:
    trained_on = _folder(tmp_path / "data")
    spec = DataSpec("folder", str(trained_on), image_size=32, channels=1)
    checkpoint = write_checkpoint(tmp_path / "ckpt", "lenet", data_info(spec, *make_splits(spec)))
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(trained_on, moved)
    repo = tmp_path / "repo"
    argv = [str(checkpoint), "--precisions", "fp32,int8", "--tensorrt", "off", "--no-progress"]
    argv += ["--repository", str(repo)]

    assert export_main.main(argv) == 0
    assert _parity(repo, "lenet_int8")["int8_gate"]["data"] == "random"

    assert export_main.main([*argv, "--data-path", str(moved)]) == 0
    for entry in ("lenet", "lenet_int8"):
        assert _parity(repo, entry)["data"] == "validation split"
    assert "top1_drop_points" in _parity(repo, "lenet_int8")["int8_gate"]
    written = (repo / "lenet_int8" / "kiln.json").stat().st_mtime_ns

    assert export_main.main([*argv, "--data-path", str(moved)]) == 0  # measured on the data now: current
    assert (repo / "lenet_int8" / "kiln.json").stat().st_mtime_ns == written


def _context(repo: Path, data_path: object = None) -> ExportContext:
    return ExportContext(
        path=repo.parent / "t.pt",
        ckpt={"task": "translate", "model": {"name": "gru_attention", "args": {}}},
        model=nn.Identity(),
        sha256="0" * 64,
        repository=repo,
        options=ExportOptions(precisions=("fp32", "int8")),
        name="t",
        data_path=data_path,
    )


def test_a_refusal_measured_on_random_ids_is_gated_again_once_data_path_is_given(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    report = ParityReport(float("inf"), metrics={"beam_source": "random ids"})
    _context(repo).refuse(Entry("t_int8", "int8"), report, "int8 agreement 90.00%")
    assert not _context(repo).needs_rebuild(Entry("t_int8", "int8"))  # remembered, as before
    assert _context(repo, tmp_path).needs_rebuild(Entry("t_int8", "int8"))


def test_a_refusal_measured_on_the_test_split_stays_remembered_with_data_path(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    report = ParityReport(float("inf"), metrics={"beam_source": "test split"})
    _context(repo).refuse(Entry("t_int8", "int8"), report, "int8 agreement 90.00%")
    assert not _context(repo, tmp_path).needs_rebuild(Entry("t_int8", "int8"))


def test_a_data_path_that_is_not_there_leaves_entries_checked_on_random_inputs_current(
    tmp_path: Path,
) -> None:
    """Nothing there to measure on: re-gated, they were checked on random inputs again and rewritten on
    every run (a polling Triton reloading them each time), where they were "up to date" before."""
    repo = tmp_path / "repo"
    repo.mkdir()
    report = ParityReport(float("inf"), metrics={"beam_source": "random ids"})
    _context(repo).refuse(Entry("t_int8", "int8"), report, "int8 agreement 90.00%")
    assert not _context(repo, tmp_path / "not there").needs_rebuild(Entry("t_int8", "int8"))
