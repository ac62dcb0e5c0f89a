"""The Python source tokenizer (serving/decoding/fast_tokens.py) against the library on every pipeline
it takes, not only the two of test_fast_tokens.py.

Each tokenizer is built as training builds one (training.data.tokenizer) and then varied as a gateway
may meet it: NFC or no normalizer, a checkpoint's NFKC-only normalizer from before whitespace was
collapsed (and it given :func:`with_cleaning`), a separate source vocabulary, tiny and large vocabularies,
added and special tokens, ``encode_special_tokens`` off, BPE's byte fallback / fused unknowns / no
unknown token. The texts: ASCII with every whitespace ``str.split`` knows (``\\x0b``, ``\\x0c``,
``\\x1c``-``\\x1f``: not Oniguruma's ``\\s``), at either end and in runs, punctuation and digit runs,
the special and added tokens' texts inside words, words longer than the piece cache keeps, texts
that normalize to nothing. Wherever the Python path answers, its ids must be the library's.
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, normalizers

from serving.decoding.fast_tokens import CACHE_PIECE_CHARS, FastEncoder
from training.data.numbers import generate_pairs
from training.data.tokenizer import (
    SPACE_RUNS,
    TokenizerConfig,
    build_tokenizers,
    literal_specials,
    train_tokenizer,
    with_cleaning,
)

FUZZ = settings(
    max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
WHITESPACE = [" ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", " \x1f "]
ADDED = ["Hello", "foo bar", "XyZ", "q!", " t", "[SEP]", "<mask>"]
ATOMS = WHITESPACE + ADDED + ["<s>", "</s>", "<unk>", "<pad>", "<", "s>", "</", "HELLO", "hello", "FOO  BAR"]
ATOMS += ["xyz", "seven", "Three", "12", "3,456.7", "...", "?!", "--", "'", '"', "#", "~", "\x00", "\x7f"]


def _corpus() -> list[str]:
    pairs = generate_pairs(200, seed=4)
    punctuation = ["Hello, world! (ok) 12,345.6 -- <b>x</b> a</s>b", "say <s> twice; #tag ~x [y] {z}"]
    return [text for pair in pairs for text in pair] + punctuation * 3


def _copy(tokenizer: Tokenizer, **model: object) -> Tokenizer:
    config = json.loads(tokenizer.to_str())
    config["model"].update(model)
    return literal_specials(Tokenizer.from_str(json.dumps(config)))


def _variants(lowercase: bool) -> dict[str, Tokenizer]:
    corpus = _corpus()
    base = train_tokenizer(corpus, 300, lowercase=lowercase)
    lower = [normalizers.Lowercase()] if lowercase else []
    nfc, none, legacy = _copy(base), _copy(base), _copy(base)
    nfc.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(SPACE_RUNS), " "), normalizers.Strip(), *lower]
    )
    none.normalizer = lower[0] if lower else None
    legacy.normalizer = normalizers.Sequence([normalizers.NFKC(), *lower])
    added = _copy(base)
    added.add_tokens(
        ["Hello", "foo bar", AddedToken("XyZ", normalized=False), AddedToken("q!", single_word=True)]
        + [AddedToken(" t", lstrip=True)]
    )
    added.add_special_tokens(["[SEP]", "<mask>"])
    config = TokenizerConfig(vocab_size=200, shared=False, lowercase=lowercase)
    return {
        "trained": base,
        "tiny": train_tokenizer(corpus, 10, lowercase=lowercase),
        "large": train_tokenizer(corpus, 3000, lowercase=lowercase, min_frequency=1),
        "separate": build_tokenizers(generate_pairs(200, seed=4), config).source,
        "nfc": nfc,
        "no-normalizer": none,
        "legacy": legacy,
        "legacy-cleaned": literal_specials(Tokenizer.from_str(with_cleaning(legacy.to_str()))),
        "added": added,
        "specials-split": Tokenizer.from_str(base.to_str()),  # encode_special_tokens off
        "byte-fallback": _copy(base, byte_fallback=True),
        "fused-unknowns": _copy(base, fuse_unk=True),
        "no-unknown": _copy(base, unk_token=None),
    }


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def variants(request) -> dict[str, tuple[Tokenizer, FastEncoder]]:
    built = {name: (tok, FastEncoder.of(tok)) for name, tok in _variants(request.param).items()}
    assert all(fast is not None for _, fast in built.values()), [
        n for n, (_, f) in built.items() if f is None
    ]
    return built


_LONG = st.builds(
    lambda c, n, tail: c * n + tail,
    st.sampled_from(string.ascii_letters + string.punctuation),
    st.integers(CACHE_PIECE_CHARS - 2, 600),
    st.sampled_from(["", "s", "ing", "</s>"]),
)
TEXTS = st.one_of(
    st.lists(st.one_of(st.sampled_from(ATOMS), _LONG), max_size=14).map("".join),
    st.text(st.characters(max_codepoint=127), max_size=60),
    st.text(st.sampled_from("".join(WHITESPACE)), max_size=8),
)


@FUZZ
@given(text=TEXTS)
def test_every_pipeline_answers_with_the_librarys_ids_or_not_at_all(variants, text):
    for name, (tokenizer, fast) in variants.items():
        ids = fast.encode(text)
        if ids is not None:
            assert ids == tokenizer.encode(text).ids, (name, text)


@pytest.mark.parametrize(
    "text",
    ["", " ", "\x1c\x1d\x1e\x1f", " \t\r\n\x0b\x0c ", "a\x1fb", "a\x0b\x0cb ", "  lead", "end  ", "x" * 5000],
)
def test_whitespace_ends_and_long_words_on_every_pipeline(variants, text):
    for name, (tokenizer, fast) in variants.items():
        ids = fast.encode(text)
        assert ids is not None, name  # plain ASCII without a token's text: the Python path answers
        assert ids == tokenizer.encode(text).ids, (name, text)
