"""A version policy that would serve none of a new twin's versions is refused before any work, with
what to do. For a new TensorRT twin (``<name>_trt``, built where TensorRT is) the advice was to leave
its precision out (``--precisions``), which cannot drop an engine of fp32: ``--tensorrt off`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.pipeline import version_to_write
from export.repository import RepositoryError, write_entry
from export.results import ExportOptions
from tests.test_hb2_export_versions import _fill

STAGED = ExportOptions(version="2", version_policy="specific:1")


def test_a_new_tensorrt_twin_is_refused_naming_the_tensorrt_flag(tmp_path: Path) -> None:
    write_entry(tmp_path / "repo", "m", _fill("v1", sha="one"))
    with pytest.raises(RepositoryError) as refused:
        version_to_write(tmp_path / "repo", ("m", "m_trt"), STAGED, Path("m.pt"), "two")
    assert "m_trt: version_policy specific [1] serves none" in str(refused.value)
    assert str(refused.value).endswith("or build no TensorRT engine (--tensorrt off)")
    assert "--precisions" not in str(refused.value)


def test_a_new_precision_twin_is_still_told_to_leave_its_precision_out(tmp_path: Path) -> None:
    write_entry(tmp_path / "repo", "m", _fill("v1", sha="one"))
    with pytest.raises(RepositoryError, match=r"m_int8: .*or leave its precision out \(--precisions\)$"):
        version_to_write(tmp_path / "repo", ("m", "m_int8"), STAGED, Path("m.pt"), "two")
