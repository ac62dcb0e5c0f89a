"""int8 quantization on a full TMPDIR: ONNX's shape inference writes its graph in C++ without checking
the write, and the quantizer failed parsing the cut-short file back, a traceback ending in
``DecodeError: Error parsing message``. It is the full disk's OSError (ENOSPC) naming the directory, as
every other write of an export on a full disk is. The full disk is simulated: the inference writes half
its graph, and the filesystem reports no room left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnx
import pytest
from google.protobuf.message import DecodeError

from export import quantize
from tests.test_bigmodel_r_external_data import two_matmuls
from tests.test_precision_hunt import _bright_images, _classifier_graph


def _room(monkeypatch: pytest.MonkeyPatch, free_blocks: int) -> None:
    """Shape inference's graphs cut short, as on a full disk, and ``free_blocks`` 4 KiB blocks left."""

    def cut_short(src: str, dst: str, *args, **kwargs) -> None:
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])

    real = os.statvfs

    class Stat:
        def __init__(self, path: str) -> None:
            self.f_frsize, self.f_bavail, self.f_blocks = 4096, free_blocks, real(path).f_blocks

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", cut_short)
    monkeypatch.setattr(quantize.os, "statvfs", Stat)


def test_static_int8_on_a_full_disk_is_the_disks_error_naming_its_directory(tmp_path, monkeypatch) -> None:
    src = _classifier_graph(tmp_path / "fp32.onnx")
    dst = tmp_path / "work" / "int8" / "model.onnx"
    _room(monkeypatch, free_blocks=0)
    with pytest.raises(OSError) as caught:
        quantize.to_int8(src, dst, _bright_images())
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(dst.parent)


def test_dynamic_int8_on_a_full_disk_is_the_disks_error_naming_its_directory(tmp_path, monkeypatch) -> None:
    src = two_matmuls(tmp_path / "fp32" / "dec.onnx")
    dst = tmp_path / "work" / "int8" / "dec.onnx"
    _room(monkeypatch, free_blocks=0)
    with pytest.raises(OSError) as caught:
        quantize.to_int8_dynamic(src, dst)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(dst.parent)
    assert not (dst.parent / "prepared.onnx").exists()


def test_a_quantizer_failure_with_room_left_is_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    src = two_matmuls(tmp_path / "fp32" / "dec.onnx")
    _room(monkeypatch, free_blocks=1 << 30)
    with pytest.raises(DecodeError):
        quantize.to_int8_dynamic(src, tmp_path / "work" / "int8" / "dec.onnx")
