"""What a request's stated sizes and JSON values read as, over every route: a header's size however
many digits it has, a JSON body decoded with each failure a 400 naming it, and the integers of a
strict request model as JSON writes them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BeforeValidator

from serving.errors import BadRequest

SIZE_DIGITS = 19  # significant digits a stated size is read to: 10**19 bytes is more than any body


def stated_size(value: bytes | str) -> int | None:
    """The size a header states (Content-Length, Inference-Header-Content-Length): the number its ASCII
    digits spell with any count of leading zeros (RFC 9110's ``1*DIGIT``), past ``SIZE_DIGITS``
    significant digits ``10**SIZE_DIGITS`` (larger than any body, so never needed exactly); None where
    it is not digits. ``int`` alone refuses a string of over 4 300 digits (a ValueError: a 500)."""
    if not (value.isascii() and value.isdigit()):  # str.isdigit alone takes '²', which int refuses
        return None
    if len(value) <= SIZE_DIGITS:
        return int(value)
    significant = value.lstrip(b"0" if isinstance(value, bytes) else "0")
    return int(significant or 0) if len(significant) <= SIZE_DIGITS else 10**SIZE_DIGITS


def unicode_text(text: str, what: str) -> str:
    """``text`` if UTF-8 can carry it; a lone surrogate (JSON's ``"\\ud800"``) is the client's 400, as
    for a BYTES element: through ``--backend triton`` tritonclient failed to encode it (a 500), and
    Triton's own parser refuses such a body."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadRequest(f"{what} is not valid Unicode (lone surrogate)") from None
    return text


class WrittenNonFinite(float):
    """A ``NaN``, ``Infinity`` or ``-Infinity`` the client wrote (Python's JSON reads them; Triton's
    parser does too), told apart from the infinity Python makes of a number past any double (``1e400``),
    which a tensor refuses as out of range (:func:`serving.protocol.tensors.from_json_data`)."""

    __slots__ = ()


_DECODER = json.JSONDecoder(parse_constant=WrittenNonFinite)  # the C scanner still reads the rest


def parse_json(raw: bytes, what: str) -> Any:
    """Decode a JSON request body; bad UTF-8, bad JSON, an integer too long to convert and nesting too
    deep to parse are a 400. The non-finite constants a client writes are :class:`WrittenNonFinite`.

    Nesting is bounded by the interpreter's recursion limit (about 1000 levels); the body size is
    bounded by :class:`BodyLimitMiddleware` before this runs.
    """
    try:
        if isinstance(raw, str):  # as json.loads reads text
            if raw.startswith("\ufeff"):
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
            return _DECODER.decode(raw)
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer literal over Python's 4 300 digits (sys.int_info)
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None


def _integral(value: Any) -> Any:
    """A float with no fractional part as the integer it equals; anything else unchanged."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# An integer field of a strict request model. JSON has one number type, and the OpenAPI document's
# ``"type": "integer"`` (JSON Schema) admits 2.0 as the integer 2, as clients that write every number
# as a float send it; 2.5, true and "2" stay refused (422), as strict validation refuses them.
JsonInt = Annotated[int, BeforeValidator(_integral)]
