"""A model or version directory that is a link to nothing (its target gone, not mounted, a loop) is
not served, and start-up says so, naming the link and where it points: it was passed over in silence,
a 404 "unknown model" for a model ``ls`` shows, or "version directories holding files []"."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from serving.execution.repository import Repository, version_problem
from tests.repo_fixtures import write_onnx_entry


def identity_entry(root: Path, name: str) -> Path:
    """An entry ``name`` in ``root`` (y = x, FP32 [-1, 3]); returns its directory."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y])
    config = (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input { name: "x" data_type: TYPE_FP32 dims: 3 }\noutput { name: "y" data_type: TYPE_FP32 dims: 3 }\n'
    )
    write_onnx_entry(root, graph, config)
    return root / name


def _linked_entry(tmp_path: Path) -> tuple[Path, Path]:
    """A repository in ``tmp_path`` holding the identity entry ``linked``: (the repository, the entry)."""
    root = tmp_path / "repo"
    root.mkdir()
    return root, identity_entry(root, "linked")


def test_a_model_directory_linked_to_nothing_is_named_in_a_start_up_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    identity_entry(root, "served")
    (root / "unmounted").symlink_to(tmp_path / "volume-not-mounted" / "unmounted")
    (root / "loop").symlink_to("loop")
    (root / ".hidden").symlink_to(tmp_path / "gone")  # hidden names are no entries: no word
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(root)
    assert repository.names() == ["served"]
    warned = [r.getMessage() for r in caplog.records]
    unmounted = f"unmounted -> {tmp_path / 'volume-not-mounted' / 'unmounted'}"
    assert f"{root / 'unmounted'}: a link to nothing ({unmounted}): not served" in warned
    assert f"{root / 'loop'}: a link to nothing (loop -> loop): not served" in warned
    assert not any(".hidden" in line for line in warned)


def test_a_version_directory_linked_to_nothing_is_named_in_the_warning_and_the_load_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, entry = _linked_entry(tmp_path)
    (entry / "1" / "model.onnx").rename(tmp_path / "model.onnx")
    (entry / "1").rmdir()
    (entry / "1").symlink_to(tmp_path / "store" / "linked" / "1")  # the store was moved away
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(root)
    target = tmp_path / "store" / "linked" / "1"
    assert (
        f"model linked: version directories ['1'] in {entry} are links to nothing (1 -> {target}): not served"
        in [r.getMessage() for r in caplog.records]
    )
    assert version_problem(repository.get("linked")) == (
        f"no version to serve in {entry}: version directories holding files []; "
        f"version links to nothing: 1 -> {target}"
    )


def test_a_version_linked_to_a_directory_elsewhere_is_served_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, entry = _linked_entry(tmp_path)
    (entry / "1").rename(tmp_path / "kept")
    (entry / "1").symlink_to(tmp_path / "kept")
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(root)
    assert repository.get("linked").versions == ["1"]
    assert not caplog.records
