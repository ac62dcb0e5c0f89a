"""The translators' source tokenizer for one short text on the event loop, in Python, with the same ids.

Kiln's tokenizers (:mod:`training.data.tokenizer`) are an NFKC normalizer (+ whitespace runs to one
space and the ends stripped, as corpus cleaning does, in those trained or exported since; + optional
lower-casing), a Metaspace pre-tokenizer ("▁", prepended always) and a BPE model without dropout.
``Tokenizer.encode`` costs ~23 us a short sentence on the 2-core machine (~60 us inside the loaded
gateway), most of it building the Encoding's offsets, tokens, masks and word ids the translator never
reads. The gateway encodes small requests on the event loop (:class:`serving.decoding.translator.
Translator`, ``INLINE_CHARS``), where that time delays every other request. (``decode`` is ~1.3 us:
kept.)

:class:`FastEncoder` does the same pipeline for the texts where each step is plain: ASCII text (NFKC
changes no ASCII character, collapsing is ``" ".join(text.split())``, lower-casing is ``str.lower``),
containing no added token's text (those the tokenizer splits out first; a ``normalized`` one in its
normalized form too; a special token's text, which Kiln's tokenizers read as text, is declined all the
same, so the answer is right whether or not the tokenizer has ``encode_special_tokens`` set). The Metaspace split is a regular expression (a ``▁`` begins every piece; of
several in a row, all but the last are pieces of their own, as tokenizers' ``MergedWithNext`` split
gives), and each piece's ids come from the BPE model itself (``model.tokenize``), once per distinct
piece of up to ``CACHE_PIECE_CHARS`` characters (a bounded cache: BPE is deterministic without
dropout): ~3.9 us a sentence. Any other text or pipeline gets ``None``: the caller uses the tokenizer.
``tests/test_fast_tokens.py`` compares the two on generated and adversarial text.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "▁"
CACHE_PIECES = 65536  # distinct pieces remembered per tokenizer (a piece is a word: ~1-3 ids)
# the longest piece remembered: a word is far shorter, and a long one (a hash, a URL, a run of letters)
# costs its ids a character or so each: 65536 distinct 1000-character pieces held ~700 MB for good
# (measured with the tests' tokenizer), sent in texts the model then refused as too many tokens
CACHE_PIECE_CHARS = 32
_PIECES = re.compile(f"{REPLACEMENT}[^{REPLACEMENT}]*")


def _pipeline(tokenizer: Any) -> tuple[bool, bool, list[str]] | None:
    """``(lowercase, collapse whitespace, added tokens' texts)`` where ``tokenizer`` is the pipeline this
    module reproduces, else None."""
    config = json.loads(tokenizer.to_str())
    normalizer = config.get("normalizer") or {"type": "Sequence", "normalizers": []}
    steps = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [step.get("type") for step in steps]
    collapse = kinds[1:3] == ["Replace", "Strip"] and kinds[0] in ("NFKC", "NFC")
    if collapse:
        kinds = kinds[:1] + kinds[3:]
    if kinds not in (["NFKC"], ["NFKC", "Lowercase"], ["NFC"], ["NFC", "Lowercase"], [], ["Lowercase"]):
        return None
    if collapse and not _collapses_ascii(tokenizer.normalizer, "Lowercase" in kinds):
        return None
    metaspace = {"type": "Metaspace", "replacement": REPLACEMENT, "prepend_scheme": "always", "split": True}
    pre, model = config.get("pre_tokenizer") or {}, config.get("model") or {}
    if any(pre.get(k) != v for k, v in metaspace.items()):
        return None
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return None
    if config.get("post_processor") or config.get("truncation") or config.get("padding"):
        return None
    return "Lowercase" in kinds, collapse, _added_texts(tokenizer, config.get("added_tokens") or [])


def _collapses_ascii(normalizer: Any, lowercase: bool) -> bool:
    """Whether a normalizer with a Replace and a Strip step does to ASCII what ``str.split`` and a join
    do (every ASCII whitespace run to one space, the ends stripped, nothing else touched), on a probe
    holding every ASCII character."""
    spaces = "".join(c for c in map(chr, range(128)) if c.isspace())
    others = "".join(c for c in map(chr, range(128)) if not c.isspace())
    probe = f"{spaces}{others}{spaces}{others} {others}{spaces}"
    expected = " ".join(probe.split())
    return normalizer.normalize_str(probe) == (expected.lower() if lowercase else expected)


def _added_texts(tokenizer: Any, tokens: list[dict[str, Any]]) -> list[str]:
    """The texts the tokenizer splits out before its model: each added token's content, and for one
    with ``normalized`` (the default of a non-special token) its normalized content too, which is what
    the tokenizer looks for in the normalized text ("Hello" finds "HELLO" once lower-cased)."""
    texts = []
    for token in tokens:
        texts.append(token["content"])
        if token.get("normalized") and tokenizer.normalizer is not None:
            texts.append(tokenizer.normalizer.normalize_str(token["content"]))
    return texts


class FastEncoder:
    """``encode(text)``: the ids ``tokenizer.encode(text).ids`` gives, or None (use the tokenizer)."""

    def __init__(self, tokenizer: Any, lowercase: bool, collapse: bool, added: list[str]) -> None:
        self.model, self.lowercase, self.collapse, self.added = tokenizer.model, lowercase, collapse, added
        self.pieces: dict[str, list[int]] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> FastEncoder | None:
        found = _pipeline(tokenizer)
        return None if found is None else cls(tokenizer, *found)

    def encode(self, text: str) -> list[int] | None:
        if not text.isascii() or any(token in text for token in self.added):
            return None
        if self.collapse:
            text = " ".join(text.split())
        if self.lowercase:
            text = text.lower()
        if (self.collapse or self.lowercase) and any(token in text for token in self.added):
            return None  # a normalized added token would match here
        if not text:
            return []  # nothing to prepend to
        text = text.replace(" ", REPLACEMENT)
        if not text.startswith(REPLACEMENT):
            text = REPLACEMENT + text
        ids: list[int] = []
        pieces = self.pieces
        for piece in _PIECES.findall(text):
            known = pieces.get(piece)
            if known is None:
                known = [token.id for token in self.model.tokenize(piece)]
                if len(pieces) < CACHE_PIECES and len(piece) <= CACHE_PIECE_CHARS:
                    pieces[piece] = known
            ids += known
        return ids
