"""The digits dataset read without importing scikit-learn (training.data.image_formats.read_digits):
the same images, labels and class names as scikit-learn's ``load_digits``, and no scikit-learn import
at a training process's start."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from training.data.image_formats import read_digits


def test_the_digits_are_scikit_learns_load_digits_rescaled():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = read_digits()
    expected = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    assert torch.equal(raw.images, torch.from_numpy(expected).unsqueeze(1))
    assert torch.equal(raw.labels, torch.from_numpy(bunch.target.astype(np.int64)))
    assert raw.classes == [str(name) for name in bunch.target_names]


def test_reading_the_digits_imports_no_scikit_learn():
    program = "import sys; from training.data.image_formats import read_digits; read_digits(); "
    program += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
