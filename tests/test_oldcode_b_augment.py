"""Augmentation geometry on non-square images: a rotation keeps distances from the centre."""

from __future__ import annotations

import math

import pytest
import torch

from training.data.augment import random_affine


def centroid(image: torch.Tensor) -> tuple[float, float]:
    """(x, y) of an [H, W] image's mass, in pixels."""
    h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    mass = image.double().sum()
    return float((xs * image).sum() / mass), float((ys * image).sum() / mass)


@pytest.mark.parametrize("size", [(21, 41), (41, 21), (41, 41)])
def test_a_rotation_moves_a_blob_around_the_centre_at_the_same_distance_on_any_aspect(size):
    h, w = size
    cx, cy = (w - 1) / 2, (h - 1) / 2
    x = torch.zeros(8, 1, h, w)
    x[:, :, int(cy) - 1 : int(cy) + 2, int(cx) + 7 : int(cx) + 10] = 1.0  # 8 px right of the centre
    out = random_affine(x, 90.0, (1.0, 1.0), torch.Generator().manual_seed(0))
    distances = [math.hypot(px - cx, py - cy) for px, py in (centroid(o[0]) for o in out)]
    assert distances == pytest.approx([8.0] * 8, abs=0.1)  # a stretch would move it to 4.5-15.5 px
