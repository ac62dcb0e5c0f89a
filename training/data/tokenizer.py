"""Subword tokenizers for the translators, trained with Hugging Face ``tokenizers`` (BPE).

The serialized JSON is self-contained: the normalizer (NFKC, whitespace collapsed as corpus cleaning
collapses it, optional lower-casing), the Metaspace pre-tokenizer and its matching decoder all live
inside it, so serving needs nothing but the JSON to get, from the raw text a client sends, exactly the
ids training saw for its cleaned form, and to turn ids back into text. Specials are reserved in the
order of docs/translator-interface.md: <pad>=0, <s>=1, </s>=2, <unk>=3. No post-processor: callers
append EOS. A special token's text typed in a sentence is text (:func:`literal_specials`), as serving
reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

log = logging.getLogger(__name__)

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
# The characters ``str.isspace`` accepts, which corpus cleaning's ``str.split()`` splits on, written
# out: ``\s`` means something else in Oniguruma, the dialect of tokenizers' ``Regex`` (no \x1c-\x1f).
SPACES = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPACE_RUNS = f"[{SPACES}]+"


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 1000
    shared: bool = True  # one joint vocabulary for source and target (allows tied embeddings)
    lowercase: bool = False
    min_frequency: int = 2


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, *, lowercase: bool = False, min_frequency: int = 2
) -> Tokenizer:
    """A BPE tokenizer over ``texts`` with the four specials first and a decoder that restores spaces."""
    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIALS)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for expected, token in enumerate(SPECIALS):
        if tok.token_to_id(token) != expected:  # pragma: no cover - guards a tokenizers behaviour change
            raise RuntimeError(f"special token {token} got id {tok.token_to_id(token)}, expected {expected}")
    tok = without_special_merges(tok)
    _check_size(tok, vocab_size)
    return literal_specials(tok)


def _check_size(tok: Tokenizer, asked: int) -> None:
    """Warn when the vocabulary outgrew the size asked: BPE keeps every character of the training text
    whole, and an unspaced script can hold more of them than ``asked``, leaving no room for a single
    merge (the model is sized by what was trained). A smaller vocabulary is BPE's bound at work (no
    pair left twice: the numbers corpus stops near 890 of the default 1000) and says nothing."""
    size = tok.get_vocab_size()
    if size > asked:
        characters = sum(1 for token in tok.get_vocab() if len(token) == 1 and token != "▁")  # Metaspace's
        log.warning(
            "BPE vocabulary of %d tokens, not the %d asked (--vocab-size): the training text has %d "
            "distinct characters, each a token of its own",
            size,
            asked,
            characters,
        )


def literal_specials(tok: Tokenizer) -> Tokenizer:
    """``tok``, reading a special token's text typed in a sentence as text: a source "a </s> b" is not
    cut short by an EOS at the encoder, nor a target given an EOS mid-sentence (the BPE trainer counts
    such text as text already, and :func:`without_special_merges` keeps its merges from rebuilding a
    special). ``tokenizers`` does not save this in the JSON (its issue #1839), so every reader of a
    Kiln tokenizer sets it: training here, the gateway in serving.decoding.translator.
    """
    tok.encode_special_tokens = True
    return tok


def without_special_merges(tok: Tokenizer) -> Tokenizer:
    """``tok`` without the BPE merges whose result is a special token's text. The trainer gives such a
    merge ("</s" + ">", learnt from "a</s>b" in a corpus of HTML-ish text) the special's own id, so
    the text "x</s>" would encode to an EOS however :func:`literal_specials` is set; without it the
    characters stay ordinary tokens (a token built on that merge is left unreachable, its id unused)."""
    config = json.loads(tok.to_str())
    merges = config["model"]["merges"]
    kept = [m for m in merges if "".join(m if isinstance(m, list) else m.split(" ", 1)) not in SPECIALS]
    if len(kept) == len(merges):
        return tok
    config["model"]["merges"] = kept
    return Tokenizer.from_str(json.dumps(config))


def normalizer(lowercase: bool) -> normalizers.Normalizer:
    """NFKC, then whitespace runs to one space and the ends stripped, then lower-casing: the order of
    ``corpus.clean_pairs``, so a raw text encodes to the ids of its cleaned form, which training saw
    (Metaspace reads a tab, a newline or a second space as a token of its own)."""
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(SPACE_RUNS), " "), normalizers.Strip()]
    return normalizers.Sequence(steps + ([normalizers.Lowercase()] if lowercase else []))


def with_cleaning(tokenizer_json: str) -> str:
    """A serialized tokenizer of a checkpoint trained before its normalizer collapsed whitespace (NFKC,
    optionally lower-casing, only), given :func:`normalizer`'s steps; any other tokenizer unchanged."""
    tok = Tokenizer.from_str(tokenizer_json)
    config = json.loads(tokenizer_json).get("normalizer") or {}
    kinds = [step.get("type") for step in config.get("normalizers", [])]
    if config.get("type") != "Sequence" or kinds not in (["NFKC"], ["NFKC", "Lowercase"]):
        return tokenizer_json
    tok.normalizer = normalizer(lowercase=kinds == ["NFKC", "Lowercase"])
    return tok.to_str()


@dataclass
class TokenizerPair:
    """Source and target tokenizers (the same object when the vocabulary is shared)."""

    source: Tokenizer
    target: Tokenizer
    shared: bool

    @property
    def src_vocab_size(self) -> int:
        return self.source.get_vocab_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.target.get_vocab_size()

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids as the encoder expects them: subword ids followed by EOS (no BOS)."""
        return [enc.ids + [EOS_ID] for enc in self.source.encode_batch(list(texts))]

    def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
        """Bare target ids (no BOS/EOS); the batcher adds them for teacher forcing."""
        return [enc.ids for enc in self.target.encode_batch(list(texts))]

    def decode_target(self, ids: Sequence[int]) -> str:
        """Text of a hypothesis, ignoring BOS/EOS/padding and anything after the first EOS."""
        ids = list(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return self.target.decode([i for i in ids if i not in (PAD_ID, BOS_ID)], skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``tokenizers`` entry: JSON strings plus the shared flag."""
        return {"source": self.source.to_str(), "target": self.target.to_str(), "shared": self.shared}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerPair:
        missing = [k for k in ("source", "target") if k not in data]
        if missing:
            raise ValueError(f"tokenizers entry is missing {missing}")
        source = literal_specials(Tokenizer.from_str(data["source"]))
        target = source if data.get("shared") else literal_specials(Tokenizer.from_str(data["target"]))
        return cls(source=source, target=target, shared=bool(data.get("shared")))


def build_tokenizers(pairs: Sequence[tuple[str, str]], config: TokenizerConfig) -> TokenizerPair:
    """Train joint or separate BPE vocabularies on the training pairs."""
    kwargs = {"lowercase": config.lowercase, "min_frequency": config.min_frequency}
    if config.shared:
        tok = train_tokenizer([t for pair in pairs for t in pair], config.vocab_size, **kwargs)
        return TokenizerPair(source=tok, target=tok, shared=True)
    source = train_tokenizer([s for s, _ in pairs], config.vocab_size, **kwargs)
    target = train_tokenizer([t for _, t in pairs], config.vocab_size, **kwargs)
    return TokenizerPair(source=source, target=target, shared=False)
