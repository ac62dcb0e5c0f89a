"""The classify route's tensor for an image file is the one training's evaluation feeds the model.

The demo (and the README's ``digit.png``) sent its digits truncated to 0..255 (``astype`` of
``v * 255 / 16``) where training rounds them: at the demo model's 32x32, a fifth of the pixels one
level off the trained ones. The other tests follow each kind of file a user sends (alpha, palette transparency,
16-bit grey, CMYK, EXIF orientation, sizes from 1x1 to larger than the input) from the file to the
normalised float tensor and the top-1 of a model, on both sides.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.onnx_export import classifier_graph
from kiln.demo import _to_hwc, sample_digits
from serving.protocol.images import decode_image
from training.data.image_formats import read_digits
from training.data.images import DataSpec, load_dataset, normalize, resize
from training.models import build_model

MAX_PIXELS = 10**7


def _served(data: bytes, size: int, channels: int) -> np.ndarray:
    """The classify route's uint8 (H, W, C) array for ``data``."""
    return decode_image(
        data, {"input_size": [size, size], "channels": channels}, index=0, max_pixels=MAX_PIXELS
    )


def test_the_demos_digits_reach_the_model_as_the_training_scans_do() -> None:
    size = 32  # the demo's classifier: training's default image size
    digits = read_digits()
    trained = resize(digits.images, size)  # (N, 1, size, size): training's tensor of every scan
    pngs, truth = sample_digits()
    for png, label in zip(pngs, truth, strict=True):
        for seen in (_served(png, size, 1), _to_hwc(Image.open(io.BytesIO(png)), size, size, 1)):
            same = [
                i
                for i in torch.nonzero(digits.labels == label).flatten().tolist()
                if np.array_equal(trained[i].permute(1, 2, 0).numpy(), seen)
            ]
            assert same, f"the demo's digit {label} is no training scan of a {label} at {size}x{size}"


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _files() -> dict[str, bytes]:
    """One file of each kind the task names, from one random colour picture."""
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8), "RGB")
    rgba = np.dstack([np.asarray(rgb), np.full((24, 36), 255, np.uint8)])
    rgba[:8, :, 3] = 0  # a transparent band whose colour is still stored
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = np.asarray(rgb.convert("L")).astype(np.uint16) * 256 + rng.integers(
        0, 256, (24, 36), dtype=np.uint16
    )
    return {
        "rgb.png": _save(rgb, "PNG"),
        "rgba.png": _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": _save(rgb.quantize(16), "PNG", transparency=0),
        "grey16.png": _save(Image.fromarray(wide), "PNG"),
        "grey.jpg": _save(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "exif6.jpg": _save(rgb, "JPEG", exif=exif.tobytes()),
        "large.png": _save(rgb.resize((300, 200)), "PNG"),
        "small.png": _save(rgb.resize((5, 4)), "PNG"),
        "tall.jpg": _save(rgb.resize((7, 50)), "JPEG"),
        "one.png": _save(rgb.resize((1, 1)), "PNG"),
    }


@pytest.mark.parametrize("channels", [1, 3])
def test_each_kind_of_file_gives_the_model_trainings_float_tensor_and_top1(tmp_path: Path, channels) -> None:
    files, size = _files(), 16
    (tmp_path / "only").mkdir()
    for name, data in files.items():
        (tmp_path / "only" / name).write_bytes(data)
    trained = load_dataset(DataSpec("folder", str(tmp_path), size, channels)).images  # files in name order
    served = np.stack([_served(files[name], size, channels) for name in sorted(files)])  # (N, H, W, C)
    np.testing.assert_array_equal(served, trained.permute(0, 2, 3, 1).numpy())

    mean, std = [0.45] * channels, [0.22] * channels
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=7, in_channels=channels).eval()
    graph = classifier_graph(model, {"mean": mean, "std": std})  # what export wraps around the model
    with torch.no_grad():
        want = model(normalize(trained, mean, std))  # training's evaluation
        got, _ = graph(torch.from_numpy(served))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), want.argmax(1))
