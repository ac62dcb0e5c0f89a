"""The demo's KServe v2 client tensor (``kiln.demo._to_hwc``, the recipe for sending an image as the
``images`` tensor) is the classify route's for the same file: it converted with a plain ``convert``,
so a phone's EXIF-rotated photo went sideways and a 16-bit grey scan clipped to white, where the route
and training turn it upright and scale it (``kiln/images.py``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kiln.demo import _to_hwc
from serving.protocol.images import decode_image


def _files() -> dict[str, bytes]:
    rng = np.random.default_rng(6)
    rgb = Image.fromarray(rng.integers(0, 256, (18, 30, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees
    wide = rng.integers(0, 65536, (18, 30)).astype(np.uint16)
    files = {}
    for name, img, fmt, options in (
        ("exif6.jpg", rgb, "JPEG", {"exif": exif.tobytes()}),
        ("grey16.png", Image.fromarray(wide), "PNG", {}),
        ("rgba.png", rgb.convert("RGBA"), "PNG", {}),
    ):
        buffer = io.BytesIO()
        img.save(buffer, fmt, **options)
        files[name] = buffer.getvalue()
    return files


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(_files()))
def test_the_demos_client_tensor_is_the_classify_routes_for_the_same_file(name, channels):
    data, (h, w) = _files()[name], (12, 16)
    served = decode_image(data, {"input_size": [h, w], "channels": channels}, index=0, max_pixels=10**6)
    np.testing.assert_array_equal(_to_hwc(Image.open(io.BytesIO(data)), h, w, channels), served)
