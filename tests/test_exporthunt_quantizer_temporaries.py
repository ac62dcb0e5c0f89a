"""ONNX Runtime's quantizers make temporary directories of their own (``ort.quant.*``, ``pre.quant.*``:
copies of the graph, the calibration graph with every activation an output). Made in TMPDIR, an export
killed while quantizing left them there for good, since the next export sweeps only its own working
directories (``export.work_dir``); they are made in the export's working directory instead."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from export import quantize
from tests.test_bigmodel_r_external_data import two_matmuls
from tests.test_precision_hunt import _bright_images, _classifier_graph


@pytest.fixture
def made_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The temporary directories made while the test runs, TMPDIR a folder of the test's own."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    made: list[Path] = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs) -> str:
        path = real(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return made


def test_static_int8_makes_the_quantizers_temporaries_in_the_exports_working_directory(
    tmp_path: Path, made_dirs: list[Path]
) -> None:
    dst = tmp_path / "work" / "int8" / "model.onnx"
    quantize.to_int8(_classifier_graph(tmp_path / "fp32.onnx"), dst, _bright_images())
    assert made_dirs, "ONNX Runtime made no temporary directory: nothing checked"
    assert [p for p in made_dirs if p.parent != dst.parent] == []
    assert tempfile.gettempdir() == str(tmp_path / "tmpdir")  # put back
    assert not list(dst.parent.glob("*.quant.*"))  # and removed as ever once done


def test_dynamic_int8_makes_the_quantizers_temporaries_in_the_exports_working_directory(
    tmp_path: Path, made_dirs: list[Path]
) -> None:
    dst = tmp_path / "work" / "int8" / "dec.onnx"
    quantize.to_int8_dynamic(two_matmuls(tmp_path / "fp32" / "dec.onnx"), dst)
    assert made_dirs, "ONNX Runtime made no temporary directory: nothing checked"
    assert [p for p in made_dirs if p.parent != dst.parent] == []
    assert tempfile.gettempdir() == str(tmp_path / "tmpdir")
