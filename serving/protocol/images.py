"""Decode PNG/JPEG uploads into the uint8 tensors a classifier's graph expects (kiln.json preprocessing).

Images are turned upright by their EXIF Orientation first, as training's folder reader turns them.

The pixel count is checked from the image header before any pixel is decoded, so a decompression
bomb costs nothing, and so are a JPEG's scans (a progressive JPEG of thousands, each a pass over the
image, is a 400), and so are a PNG's chunks and a JPEG's marker segments (Pillow reads each in Python:
millions of empty ones held a decode thread for a minute); corrupt or truncated files are a 400 naming
the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
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
# The next marker from a position: fill 0xFF bytes, then a code that is not a stuffed 0x00 (a 0xFF byte
# inside scan data) nor a restart marker RSTn (also inside scan data), as libjpeg's next_marker reads
MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
SOS, EOI, TEM = 0xDA, 0xD9, 0x01  # start of scan, end of image, a marker without a length
# Marker segments a JPEG may have: a photo has a few dozen (a 7 MB ICC profile ~110), and walking
# millions of 4-byte ones held a thread for seconds (Pillow walks those before the first scan in Python,
# ~4 us each: 16 M of them in a 64 MiB body held a decode thread over a minute)
MAX_JPEG_SEGMENTS = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG's chunks: Pillow reads each in Python (~8 us to open, as much to decode), and a chunk is 12 bytes
# at the least, so 64 MiB of empty ones held a decode thread ~80 s. Encoders cut the pixels into IDAT
# chunks of 8 KiB (libpng) to 64 KiB (Pillow), so one chunk per 4 KiB beyond these refuses none of theirs.
MAX_PNG_CHUNKS = 10_000
PNG_CHUNK_BYTES = 4096
# The longest side an image may declare: Pillow's resize holds a weight per input pixel of a side for
# each output pixel, and its decode a row pointer per row, so a thin PNG costs by its side, not its
# pixels: 1x16777216 (a 32 KB file, inside --max-image-pixels) held 447 MB and 1.5 s of a decode slot
# where 4096x4096 holds 67 MB. A side of 2**20 holds at most ~30 MB more; JPEG's sides stop at 65535.
MAX_SIDE = 1 << 20
# Base64 of a PNG's or a JPEG's first bytes: base64 text sent where the image's bytes go
BASE64_IMAGE_STARTS = (b"iVBORw0KGgo", b"/9j/")


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
    from PIL import UnidentifiedImageError  # imported lazily: nothing heavy at import time

    try:
        image = _opened(data, index=index, max_pixels=max_pixels)
        if image.format in ("JPEG", "MPO"):
            _check_scans(data, index=index)
        image.load()
        image = upright(image)  # a phone's portrait photo, stored sideways with an EXIF Orientation
    except UnidentifiedImageError:
        raise unidentified(data, index=index) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"image {index}: corrupt or truncated image ({exc})") from None
    return to_model_array(image, preprocessing)


def declared_pixels(blobs: list[bytes], *, max_pixels: int, budget: int) -> list[int]:
    """Each image's pixel count, read from its header alone: a 413 for an image over ``max_pixels`` or
    for images over ``budget`` in all (one request's decoding work and the arrays it holds until its
    inference, before any pixel is decoded), a 400 for one no header of which is readable."""
    from PIL import UnidentifiedImageError

    pixels = []
    for index, data in enumerate(blobs):
        try:
            width, height = _opened(data, index=index, max_pixels=max_pixels).size
        except UnidentifiedImageError:
            raise unidentified(data, index=index) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadRequest(f"image {index}: corrupt or truncated image ({exc})") from None
        pixels.append(width * height)
    if sum(pixels) > budget:
        raise PayloadTooLarge(
            f"{len(blobs)} images declaring {sum(pixels)} pixels in all exceed the {budget} pixels one "
            "request may decode (--max-request-pixels, or KILN_MAX_REQUEST_PIXELS)"
        )
    return pixels


def _opened(data: bytes, *, index: int, max_pixels: int) -> Any:
    """The image with its header read and no pixel decoded; a 413 where it declares over ``max_pixels``."""
    from PIL import Image

    # This guard (the header's size, before a pixel is decoded) replaces Pillow's own, which refused
    # images over its 89 M pixels with a 400 before ours, whatever KILN_MAX_IMAGE_PIXELS said.
    Image.MAX_IMAGE_PIXELS = None
    _check_segments(data, index=index)
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image {index}: {width}x{height} exceeds the {max_pixels} pixel limit")
    if max(width, height) > MAX_SIDE:
        raise PayloadTooLarge(
            f"image {index}: {width}x{height} has a side over {MAX_SIDE} pixels (decoding and resizing cost "
            "memory by an image's longest side as well as its pixels); crop or downscale it"
        )
    return image


def unidentified(data: bytes, *, index: int) -> BadRequest:
    """The 400 for bytes Pillow identifies as no PNG or JPEG, naming what they are: "not a decodable
    PNG/JPEG image" was all it said of an empty part, a GIF or an iPhone's HEIC (which training's folder
    reader takes, or a user believes it does), a PNG cut short in its header, or base64 text sent as a
    file part, and a user could tell none of these from a corrupt file."""
    if not data:
        return BadRequest(f"image {index}: empty (0 bytes)")
    if data[:8] == PNG_SIGNATURE or data[:2] == b"\xff\xd8":
        kind = "PNG" if data[:8] == PNG_SIGNATURE else "JPEG"
        return BadRequest(f"image {index}: a {kind} whose header is corrupt or cut short ({len(data)} bytes)")
    start = data[:64].lstrip()
    if start.startswith(BASE64_IMAGE_STARTS) or start[:5].lower() == b"data:":
        return BadRequest(
            f"image {index}: base64 text, not an image's bytes: encoded twice in a JSON body (its images are "
            "base64 once), or sent as a multipart part, which carries the file itself (curl -F files=@image.png)"
        )
    name = other_format(data[:16])
    if name:
        return BadRequest(
            f"image {index}: a {name} image; classify reads PNG and JPEG only: convert it to PNG "
            "(docs/kiln-json.md)"
        )
    return BadRequest(f"image {index}: not a PNG or JPEG image (it starts {data[:16]!r})")


def other_format(prefix: bytes) -> str | None:
    """The image format ``prefix`` (a file's first 16 bytes) starts, by Pillow's own checks of each
    format's signature (none is parsed), or an ISO media file's brand (HEIC, AVIF); None for none."""
    from PIL import Image

    if prefix[4:8] == b"ftyp":  # ISO base media: HEIC/HEIF (phones' photos), AVIF, or a video
        brand = prefix[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "HEIC/HEIF" if brand[:2] == b"he" or brand in (b"mif1", b"msf1") else None
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if name not in ("PNG", "JPEG", "MPO") and accept is not None and accept(prefix):
                return name
        except Exception:  # noqa: BLE001 - a plugin's check of a short prefix
            continue
    return None


def _check_segments(data: bytes, *, index: int) -> None:
    """A 400 before Pillow reads a PNG of more chunks than :func:`png_chunk_limit`, or a JPEG of more
    than MAX_JPEG_SEGMENTS marker segments before its first scan: Pillow walks either in Python."""
    if data[:8] == PNG_SIGNATURE:
        limit = png_chunk_limit(len(data))
        if png_chunks(data, limit=limit) > limit:
            raise BadRequest(
                f"image {index}: a PNG of more than {limit} chunks; one of {len(data)} bytes is read with "
                f"at most {MAX_PNG_CHUNKS} and one more per {PNG_CHUNK_BYTES} bytes (encoders cut theirs "
                "at 8 KiB or more)"
            )
    elif data[:2] == b"\xff\xd8":
        jpeg_scans(data, index=index, until_scan=True)


def png_chunk_limit(size: int) -> int:
    """The chunks a PNG of ``size`` bytes may have: MAX_PNG_CHUNKS, and one more per PNG_CHUNK_BYTES."""
    return MAX_PNG_CHUNKS + size // PNG_CHUNK_BYTES


def png_chunks(data: bytes, *, limit: int) -> int:
    """The chunks of a PNG Pillow reads, each skipped by its length: up to IEND, or in an APNG up to the
    second frame's fcTL, where Pillow stops reading the first frame (an APNG's later frames are two chunks
    each, a 6 000-frame sticker 12 000 of them, none read). Counting stops past ``limit``, so the walk
    costs at most ``limit`` steps, and none (0) for a file too small to hold more than ``limit``."""
    if len(data) - len(PNG_SIGNATURE) <= 12 * limit:  # a chunk is 12 bytes at the least
        return 0
    count, at, frames, pixels = 0, len(PNG_SIGNATURE), [], False
    while at + 8 <= len(data) and count <= limit:
        count += 1
        kind = data[at + 4 : at + 8]
        if kind == b"IEND" or (kind == b"fcTL" and pixels and _animated(frames)):
            break
        if kind == b"acTL" and not pixels:
            frames.append(int.from_bytes(data[at + 8 : at + 12], "big"))
        pixels = pixels or kind in (b"IDAT", b"fdAT")
        at += 12 + int.from_bytes(data[at : at + 4], "big")  # length, type, data, CRC
    return count


def _animated(frames: list[int]) -> bool:
    """Whether Pillow plays a PNG of these acTL frame counts (one, of 2 to 2**31) as an APNG."""
    return len(frames) == 1 and 2 <= frames[0] <= 0x80000000


def _check_scans(data: bytes, *, index: int) -> None:
    """A 400 before decoding a JPEG of more than MAX_JPEG_SCANS scans (:func:`jpeg_scans`)."""
    if data.count(b"\xff\xda") <= MAX_JPEG_SCANS:  # no more scans than start-of-scan bytes: no walk
        return
    scans = jpeg_scans(data, index=index)
    if scans > MAX_JPEG_SCANS:
        raise BadRequest(
            f"image {index}: a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
            "(each one passes over the whole image)"
        )


def jpeg_scans(data: bytes, *, index: int, until_scan: bool = False) -> int:
    """The scans of the image a decoder reads: its marker segments walked from SOI to EOI as libjpeg
    walks them, each skipped by its length (``until_scan``: up to the first scan, the header Pillow
    walks in Python when it opens the file). Counting the start-of-scan bytes of the whole file counted
    the binary data of segments no scan is in (an ICC profile, EXIF maker notes) and after EOI (a
    Motion Photo's video, ~1 per 64 KB), and refused such photos as JPEGs of 100+ scans. A 400 past
    MAX_JPEG_SEGMENTS segments: millions of 4-byte ones, a step each, held a thread for seconds."""
    scans, segments, at = 0, 0, 2  # after SOI
    while True:
        found = MARKER.search(data, at)  # past a scan's entropy-coded data, its stuffed bytes and RSTn
        if found is None or found[1][0] == EOI:
            break
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise BadRequest(f"image {index}: a JPEG of more than {MAX_JPEG_SEGMENTS} marker segments")
        at = found.end()
        if found[1][0] == TEM:  # no length
            continue
        if found[1][0] == SOS and until_scan:
            break
        scans += found[1][0] == SOS
        at += max(int.from_bytes(data[at : at + 2], "big"), 2)  # its length (a scan's data follows)
    return scans


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
