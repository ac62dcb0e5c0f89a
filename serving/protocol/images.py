"""Decode PNG/JPEG uploads into the uint8 tensors a classifier's graph expects (kiln.json preprocessing).

Images are turned upright by their EXIF Orientation first, as training's folder reader turns them.

The pixel count is checked from the image header before any pixel is decoded, so a decompression
bomb costs nothing, and so are a JPEG's scans (a progressive JPEG of thousands, each a pass over the
image, is a 400); corrupt or truncated files are a 400 naming the image.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from kiln.images import to_8bit, upright
from serving.errors import BadRequest, PayloadTooLarge

FORMATS = ("PNG", "JPEG")
SPACES = str.maketrans("", "", " \t\n\r\f")  # ASCII whitespace as WHATWG names it, deleted by translate
# A progressive JPEG's scans each pass over every block of the image, and a scan over a flat band is a
# few dozen bytes: 1 000 of them (99 KB) held a decode thread 3.8 s at 4096x4096, a 64 MiB body hours.
# Encoders write about 10 (libjpeg's default script: 6 grey, 10 colour); libjpeg-turbo's scan limit
# (djpeg -maxscans, TJPARAM_SCANLIMIT) guards against the same exploit.
MAX_JPEG_SCANS = 100
SOS = b"\xff\xda"  # a JPEG's start-of-scan marker (0xFF inside scan data is written 0xFF 0x00)


def decode_base64(text: str, *, index: int) -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is accepted, its scheme in any case), ASCII
    whitespace ignored as browsers' ``atob`` ignores it: MIME encoders break lines (GNU ``base64``
    without ``-w0``, Python's ``encodebytes``, Java's MIME encoder), and their images were a 400."""
    if not isinstance(text, str):
        raise BadRequest(f"image {index}: expected a base64 string")
    if text[:5].lower() == "data:" and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # only now, so an image without whitespace is not copied again
        return base64.b64decode(text.translate(SPACES), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index}: not valid base64") from None


def decode_image(data: bytes, preprocessing: dict[str, Any], *, index: int, max_pixels: int) -> np.ndarray:
    """One encoded image -> array shaped for the model input (HWC or CHW, its channels, its size)."""
    from PIL import Image, UnidentifiedImageError  # imported lazily: nothing heavy at import time

    # The max_pixels guard below (the header's size, before a pixel is decoded) replaces Pillow's own,
    # which refused images over its 89 M pixels with a 400 before ours, whatever KILN_MAX_IMAGE_PIXELS said.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(f"image {index}: {width}x{height} exceeds the {max_pixels} pixel limit")
        if image.format in ("JPEG", "MPO"):
            _check_scans(data, index=index)
        image.load()
        image = upright(image)  # a phone's portrait photo, stored sideways with an EXIF Orientation
    except UnidentifiedImageError:
        raise BadRequest(f"image {index}: not a decodable PNG/JPEG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"image {index}: corrupt or truncated image ({exc})") from None
    return to_model_array(image, preprocessing)


def _check_scans(data: bytes, *, index: int) -> None:
    """A 400 before decoding a JPEG of more than MAX_JPEG_SCANS scans. Its start-of-scan markers are
    counted in all its bytes (an EXIF thumbnail's, an MPO's second image's too): a count at most too
    high, by markers no decoder reads, where a legitimate file is far below the limit."""
    scans = data.count(SOS)
    if scans > MAX_JPEG_SCANS:
        raise BadRequest(
            f"image {index}: a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
            "(each one passes over the whole image)"
        )


def to_model_array(image: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Convert colour mode, resize (bilinear) and lay out as the model's preprocessing says."""
    from PIL import Image

    height, width = preprocessing.get("input_size", image.size[::-1])
    channels = int(preprocessing.get("channels", 3))
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise BadRequest(f"model expects {channels} channels; only 1 (grey) and 3 (RGB) images are supported")
    image = to_8bit(image, mode)  # as training reads images: 16-bit grey scaled, not clipped white
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)  # (H, W, C)
    if preprocessing.get("layout", "NHWC") == "NCHW":
        array = array.transpose(2, 0, 1)  # (C, H, W)
    return array.astype(preprocessing.get("dtype", "uint8"), copy=False)
