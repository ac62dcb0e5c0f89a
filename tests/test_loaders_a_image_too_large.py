"""An image of a folder that Pillow refuses as too large (over its 179 M pixels: a big panorama or a
scan at full resolution) stops training in one line naming the file: Pillow's DecompressionBombError is
not an OSError, so it escaped the folder reader as a traceback naming neither the file nor a remedy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.data.image_formats import DatasetError, read_folder

PIXELS = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def folder_with_one_large_image(root):
    """Two classes of 4x4 images and ``b/large.png``, 8x8; the test lowering Pillow's limit makes the
    8x8 one count as a decompression bomb (a real one would be hundreds of megabytes)."""
    for name in ("a", "b"):
        (root / name).mkdir()
        Image.fromarray(PIXELS[:4, :4], "RGB").save(root / name / "small.png")
    Image.fromarray(PIXELS, "RGB").save(root / "b" / "large.png")
    return root / "b" / "large.png"


@pytest.mark.parametrize("channels", [None, 1], ids=["channels-from-the-headers", "channels-given"])
def test_an_image_over_pillows_pixel_limit_is_one_error_naming_its_file(tmp_path, monkeypatch, channels):
    large = folder_with_one_large_image(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 64 pixels > 2 x 16 >= 16: only large.png
    with pytest.raises(DatasetError) as caught:
        read_folder(str(tmp_path), channels=channels, size=4)
    message = str(caught.value)
    assert message.startswith(f"{large}: too large to decode")
    assert "downscale it" in message and "\n" not in message


def test_images_under_the_limit_still_read(tmp_path):
    folder_with_one_large_image(tmp_path)
    raw = read_folder(str(tmp_path), size=4)
    assert tuple(raw.images.shape) == (3, 3, 4, 4) and raw.labels.tolist() == [0, 1, 1]
