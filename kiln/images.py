"""Image conversions training and serving must do alike (the model sees the same pixels either way)."""

from __future__ import annotations

from typing import Any

import numpy as np

WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow reads 16-bit grey PNGs as I;16 (or I)
ORIENTATION = 0x0112  # the EXIF Orientation tag
# EXIF orientation -> the transpose that shows the stored pixels upright (Pillow's ImageOps.exif_transpose)
UPRIGHT = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def orientation(img: Any) -> int:
    """The EXIF Orientation of ``img`` (a PIL image), 1 (as stored) when absent, unreadable or invalid:
    metadata a phone writes wrongly must not refuse an image whose pixels decode."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on damaged metadata
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def upright(img: Any) -> Any:
    """``img`` as its EXIF Orientation says it is seen (a phone stores a portrait photo sideways, tagged
    6 or 8); ``img`` itself, not a copy, when it needs no turn. Training and serving both apply it, as
    torchvision's ``decode_image(apply_exif_orientation=True)`` and viewers do."""
    from PIL import Image

    turn = orientation(img)
    return img if turn == 1 else img.transpose(Image.Transpose[UPRIGHT[turn]])


def to_8bit(img: Any, mode: str) -> Any:
    """``img`` (a PIL image) converted to ``mode`` (L or RGB); 16-bit grey is scaled (>> 8), where
    Pillow's own conversion clips every value above 255 to white. A mode Pillow converts to RGB alone
    (LAB: a CIELab TIFF) goes through RGB, where it refused a grey model's folder outright."""
    from PIL import Image

    if img.mode in WIDE_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)  # (H, W)
        img = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    try:
        return img.convert(mode)
    except ValueError:  # "conversion from LAB to L not supported"
        return img.convert("RGB").convert(mode)
