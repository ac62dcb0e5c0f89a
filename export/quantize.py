"""Reduced precisions of an fp32 ONNX graph: fp16 (IO types kept) and int8 (static QDQ, gated).

int8 uses ONNX Runtime static quantization in QDQ format: uint8 activations (all convolutions become
integer on AVX-512 VNNI CPUs), int8 per-channel weights, calibrated on training images. The int8 entry
is only written when validation top-1 drops by at most ``max_drop`` points.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import save_model

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with Cast nodes at the boundary, so inputs/outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    save_model(half, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


class ImageCalibrationReader:
    """CalibrationDataReader over uint8 NHWC images, in batches (ONNX Runtime protocol)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16) -> None:
        self.input_name, self.images, self.batch = input_name, images, batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i : i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def to_int8(src: Path, dst: Path, calibration: np.ndarray, input_name: str = "images") -> Path:
    """Static QDQ quantization: activations QUInt8, weights QInt8 per channel, MinMax calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images; none were given")
    CalibrationDataReader.register(ImageCalibrationReader)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_name("prepared.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - pre-processing only improves quantization
        log.warning("quant_pre_process failed (%s); quantizing the graph as it is", exc)
        prepared = src
    quantize_static(
        str(prepared),
        str(dst),
        ImageCalibrationReader(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    if prepared != src:
        prepared.unlink(missing_ok=True)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


@dataclass(frozen=True)
class GateResult:
    """The int8 accuracy gate: top-1 in points before/after and whether the drop is acceptable."""

    accuracy_fp32: float
    accuracy_int8: float
    max_drop: float

    @property
    def drop(self) -> float:
        return 100.0 * (self.accuracy_fp32 - self.accuracy_int8)

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy_int8": self.accuracy_int8,
            "top1_drop_points": self.drop,
            "max_drop_points": self.max_drop,
            "passed": self.passed,
        }
