"""Image conversions training and serving must do alike (the model sees the same pixels either way)."""

from __future__ import annotations

from typing import Any

import numpy as np

WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow reads 16-bit grey PNGs as I;16 (or I)


def to_8bit(img: Any, mode: str) -> Any:
    """``img`` (a PIL image) converted to ``mode`` (L or RGB); 16-bit grey is scaled (>> 8), where
    Pillow's own conversion clips every value above 255 to white."""
    from PIL import Image

    if img.mode in WIDE_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)  # (H, W)
        img = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    return img.convert(mode)
