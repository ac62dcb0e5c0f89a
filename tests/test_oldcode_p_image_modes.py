"""Images of a mode Pillow converts to RGB only (LAB: a CIELab TIFF) are read for a grey (one-channel)
model too, through RGB: training stopped with "error: conversion from LAB to RGB not supported", naming
no file of the folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kiln.images import to_8bit
from training.data.image_formats import read_folder

RGB = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_lab_image_converts_to_either_mode_as_through_rgb(mode):
    lab = Image.fromarray(RGB, "RGB").convert("LAB")
    out = to_8bit(lab, mode)
    assert out.mode == mode and out.size == (8, 8)
    assert np.array_equal(np.asarray(out), np.asarray(lab.convert("RGB").convert(mode)))


def test_a_grey_folder_with_a_cielab_tiff_is_read(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(RGB, "RGB").convert("LAB").save(tmp_path / name / "lab.tif")
        Image.fromarray(RGB[..., 0], "L").save(tmp_path / name / "grey.png")
    raw = read_folder(str(tmp_path), channels=1)
    assert tuple(raw.images.shape) == (4, 1, 8, 8) and raw.classes == ["a", "b"]
